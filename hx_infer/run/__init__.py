"""The machinery behind `hx-infer run`, one module per job; each imports only those above it.

    options.py      RunOptions, VideoOptions: the user's options and their defaults
    kinds.py        the output kinds: one row each (photo suffix, video encoding, pixels it needs,
                    how it is made, its encoder)
    backgrounds.py  --background, a video included
    config.py       options checked once against the inputs and the model -> RunConfig
    plan.py         listing, name collisions, resume: Job | Skipped | Failed
    claim.py        OUTPUT taken for the run: writable, locked (.hx-lock), made with the same
                    settings (hx-manifest.json), killed runs' temporaries removed
    outcomes.py     tally, progress bar, log lines, the report
    photos.py       the per-photo stages on numpy, and the Stages interface (decode, submit,
                    flush, finish) that engines drive; CpuStages
    device.py       the same stages in torch on a device (DeviceStages): CUDA streams, nvJPEG
    videos.py       a video, frame for frame: reader thread, batches, writer thread

Output layout, one folder per kind, mirroring the input tree:
    OUTPUT/alpha/<rel>/<stem>.png      8-bit gray matte, oriented photo size
    OUTPUT/rgba/<rel>/<stem>.png       the photo's pixels with the matte as alpha (RGB 0 where alpha is 0)
    OUTPUT/composite/<rel>/<stem>.jpg  the person on --background
<rel> is the photo's folder relative to INPUT (empty for a single file). For paths given as a
list (stdin), <rel> is the path relative to the current directory when the photo is inside it,
else nothing (the file name alone). Videos: see videos.py. Beside them: hx-report.json (the last
run's report), hx-manifest.json (what made each kind) and, while a run holds OUTPUT, .hx-lock.

The engines that drive these stages live in hx_infer.engines (local, ray).
"""
