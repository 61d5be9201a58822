"""Video frames/s of `hx-infer run`, end to end, and the matte's flicker with and without --temporal.

    .venv/bin/python benchmarks/video_bench.py --model runs/quickstart/model
    .venv/bin/python benchmarks/video_bench.py --model DIR --video clip.mp4 --strengths 0,0.5,0.8 -- --batch-size 16

1. Throughput: `python -m hx_infer.cli run VIDEO OUT --outputs OUTPUTS --quiet` in its own process
   (extra arguments after `--` are passed on); prints frames/s from the process's wall time
   and the report's own figure (pipeline only, no start-up).
2. Flicker, for each --temporal-strength in --strengths (0 = off): the same run with
   `--outputs alpha --lossless` (FFV1: no codec noise in the figure), then
   hx_infer.temporal.FlickerMeter over the matte: the mean absolute frame-to-frame change of
   alpha on pixels below 0.5 in both frames. With moving people the lagging edge of a smoothed
   matte counts too, so the figure rewards smoothing less than pure flicker would.

Default video: ../shared/data/video/vtest.avi ($HX_DATA/video/vtest.avi) (768x576, 10 fps, 795 frames). Saves JSON in
benchmarks/results/. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import record  # noqa: E402  (benchmarks/record.py)
from shared_data import SHARED_DATA  # noqa: E402  (benchmarks/shared_data.py)

VTEST = SHARED_DATA / "video" / "vtest.avi"


def hx_run(video: Path, out: Path, model: str, *args: str) -> tuple[float, dict]:
    """Run hx-infer in a fresh process -> (process wall seconds, report)."""
    command = [sys.executable, "-m", "hx_infer.cli", "run", str(video), str(out), "--model", model, "--quiet", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"video_bench: {' '.join(command)} exited {proc.returncode}:\n{proc.stderr}")
    return wall, json.loads((out / "hx-report.json").read_text())


def flicker_of(matte: Path) -> tuple[float, int]:
    """(flicker, frames) of a matte video, decoded frame by frame."""
    import av

    from hx_infer.temporal import FlickerMeter

    meter = FlickerMeter()
    with av.open(str(matte)) as container:
        for frame in container.decode(container.streams.video[0]):
            meter.add(frame.to_ndarray(format="gray"))
    return meter.value, meter.pairs + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model folder (default: the bundled model)")
    parser.add_argument("--video", type=Path, default=VTEST)
    parser.add_argument("--outputs", default="alpha", help="kinds for the throughput run")
    parser.add_argument("--strengths", default="0,0.5,0.8", help="--temporal-strength values for flicker (0 = off)")
    parser.add_argument("extra", nargs="*", help="more hx-infer run arguments (after --)")
    args = parser.parse_args()
    if not args.video.is_file():
        sys.exit(f"video_bench: {args.video}: no such file")
    strengths = [float(s) for s in args.strengths.split(",") if s.strip()]

    with tempfile.TemporaryDirectory(prefix="hx-video-bench-") as tmp:
        tmp = Path(tmp)
        wall, report = hx_run(args.video, tmp / "speed", args.model, "--outputs", args.outputs, *args.extra)
        frames = report["frames"]
        print(f"{args.video.name}: {frames} frames, --outputs {args.outputs}: {frames / wall:.1f} frames/s "
              f"end to end ({wall:.1f} s), {report['frames_per_s']:.1f} frames/s in the pipeline "
              f"[{report['backend']} on {report['device']}, batch {report['batch_size']}]")
        flicker = {}
        for strength in strengths:
            out = tmp / f"flicker-{strength}"
            temporal = ["--temporal-strength", str(strength)] if strength > 0 else []
            hx_run(args.video, out, args.model, "--outputs", "alpha", "--lossless", *temporal, *args.extra)
            value, n = flicker_of(out / "alpha" / (args.video.stem + ".mkv"))
            flicker[str(strength)] = round(value, 6)
            print(f"flicker, temporal strength {strength}: {value:.5f} (over {n} frames)")

    result = {
        "benchmark": "video_bench",
        "when": record.now(),
        "video": str(args.video),
        "frames": frames,
        "outputs": args.outputs,
        "command_extra": args.extra,
        "process_wall_s": round(wall, 2),
        "frames_per_s": round(frames / wall, 2),
        "pipeline_frames_per_s": report["frames_per_s"],
        "flicker_by_temporal_strength": flicker,
        "model": report["model"],
        "backend": report["backend"],
        "device": report["device"],
        "batch_size": report["batch_size"],
        "cpu": platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
    }
    record.save("video_bench", result)


if __name__ == "__main__":
    main()
