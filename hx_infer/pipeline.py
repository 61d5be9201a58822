"""The streaming pipeline behind `hx-infer run`: photos in, mattes / cutouts / composites out.

    inputs (listed lazily) -> plan: name collisions, resume skips
      -> decode pool (--workers threads): read_photo + letterbox            [3, S, S] float32
      -> FIFO of decode futures, at most batch + workers in flight
      -> batch [N, 3, S, S] -> backend.infer on this thread                 [N, C, S, S] float32
      -> write pool: un-letterbox, refine, compose, encode, atomic write
      -> tally -> report

Memory is flat however many photos there are: every stage is bounded, nothing per successful
file is kept, and folders are listed as they are walked. The decode FIFO is consumed in input
order, so a batch holds the same photos whichever decode thread finishes first; the backends
give each photo the same output whatever else is in its batch, so a resumed run writes the same
bytes as an uninterrupted one.

Output layout, one folder per kind, mirroring the input tree:
    OUTPUT/alpha/<rel>/<stem>.png      8-bit gray matte, oriented photo size
    OUTPUT/rgba/<rel>/<stem>.png       the photo's pixels with the matte as alpha
    OUTPUT/composite/<rel>/<stem>.jpg  the person on --background
<rel> is the photo's folder relative to INPUT (empty for a single file). For paths given as a
list (stdin), <rel> is the path relative to the current directory when the photo is inside it,
else nothing (the file name alone).
"""
from __future__ import annotations

import fnmatch
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from .backends.base import Backend
from .compose import Background, composite, parse_background, rgba_cutout
from .io.images import (PHOTO_EXTENSIONS, DecodeError, atomic_write, clean_temporaries, decode_photo, encode_jpeg,
                        encode_png, iter_photos, read_photo)
from .io.video import VIDEO_EXTENSIONS, is_video_name
from .model import ModelDir
from .report import REPORT_NAME, Tally, build_report, write_report
from .transforms import Letterbox, guided_filter, guided_radius, letterbox, to_uint8, unletterbox

if TYPE_CHECKING:
    from .video_pipeline import VideoOptions

OUTPUT_KINDS = {"alpha": ".png", "rgba": ".png", "composite": ".jpg"}  # kind -> file suffix
REFINES = ("none", "guided")
DEFAULT_MAX_PIXELS = 100_000_000
WHITE = ("white", "#ffffff")  # the only background an rgb-target model can honour


class ConfigError(ValueError):
    """A bad run option or path; the message is one line naming the option or path."""


@dataclass(frozen=True)
class Job:
    src: Path  # the photo as named by the user (not resolved)
    rel: Path  # its place below OUTPUT/<kind>/; the suffix is replaced per kind


def output_path(output_dir: Path, kind: str, rel: Path) -> Path:
    return output_dir / kind / rel.parent / (rel.stem + OUTPUT_KINDS[kind])


@dataclass(frozen=True)
class RunConfig:
    """Every option of one run, validated. `source` is a file, a folder, or an iterable of paths."""

    source: Path | Iterable[str | Path]
    source_kind: str  # "file", "folder" or "list"
    output_dir: Path
    outputs: tuple[str, ...]
    background_spec: str
    background: Background  # parsed once
    refine: str
    overwrite: bool
    workers: int
    max_pixels: int
    glob: str | None
    report_path: Path
    progress: bool
    video: VideoOptions | None = None  # how videos are written; None: VideoOptions() (hx_infer.video_pipeline)

    @property
    def source_label(self) -> str:
        return "-" if self.source_kind == "list" else str(self.source)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def parse_names(spec: str | Iterable[str], choices: Iterable[str], option: str, what: str,
                error: type[Exception] = ValueError) -> tuple[str, ...]:
    """'a,b' or ('a', 'b') -> ('a', 'b'), in the order given, no repeats, each one of `choices`.

    Raises `error` with a one-line message naming `option` (e.g. --outputs) and the `what`."""
    choices = tuple(choices)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise error(f"{option}: give one or more of {','.join(choices)}")
    for n in names:
        if n not in choices:
            raise error(f"{option}: unknown {what} {n!r}; choose from {','.join(choices)}")
    return tuple(dict.fromkeys(names))


def parse_outputs(outputs: str | Iterable[str]) -> tuple[str, ...]:
    """'alpha,rgba' or ('alpha', 'rgba') -> ('alpha', 'rgba')."""
    return parse_names(outputs, OUTPUT_KINDS, "--outputs", "kind", ConfigError)


def make_config(inputs: str | Path | Iterable[str | Path], output_dir: str | Path, model: ModelDir, *,
                outputs: str | Iterable[str] = ("rgba",), background: str = "white",
                refine: str = "none", overwrite: bool = False, workers: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, glob: str | None = None,
                report: str | Path | None = None, progress: bool = True,
                video: VideoOptions | None = None) -> RunConfig:
    """Check every option before any photo is touched; raise ConfigError naming the bad one.

    inputs: a photo, a folder (searched recursively), or an iterable of photo paths (the CLI's
    `-` passes stdin's lines). output_dir must not be the input folder or inside it.
    """
    output_dir = Path(output_dir)
    if isinstance(inputs, (str, Path)):
        source = Path(inputs)
        if not source.exists():
            raise ConfigError(f"INPUT {source}: no such file or folder")
        source_kind = "folder" if source.is_dir() else "file"
    else:
        source, source_kind = inputs, "list"
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"OUTPUT {output_dir}: exists and is not a folder")
    kinds = parse_outputs(outputs)
    if source_kind != "list":
        _check_apart(source, output_dir, kinds)

    report_path = Path(report) if report is not None else output_dir / REPORT_NAME
    if report_path.is_dir() or report_path.suffix.lower() in PHOTO_EXTENSIONS | VIDEO_EXTENSIONS:
        raise ConfigError(f"--report {report_path}: give the path of a .json file")
    if refine not in REFINES:
        raise ConfigError(f"--refine {refine!r}: choose from {', '.join(REFINES)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if max_pixels < 1:
        raise ConfigError(f"--max-pixels must be at least 1, got {max_pixels}")
    try:
        if is_video_name(background.strip()):
            from .video_pipeline import parse_background_or_video  # a video background needs PyAV

            parsed_background = parse_background_or_video(background)
        else:
            parsed_background = parse_background(background)
    except ValueError as e:  # the message names --background already
        raise ConfigError(str(e)) from None
    if model.target == "rgb":
        # The generator paints the person on white: there is no matte to cut out with.
        if kinds != ("composite",):
            raise ConfigError(f"--outputs {','.join(kinds)}: model {model.root} paints the person on white "
                              f"(target rgb) and makes only --outputs composite")
        if background.strip().lower() not in WHITE:
            raise ConfigError(f"--background {background}: model {model.root} paints the person on white "
                              f"(target rgb); it cannot use another background")
        if refine != "none":
            raise ConfigError(f"--refine {refine}: model {model.root} makes no matte to refine (target rgb)")
    return RunConfig(
        source=source, source_kind=source_kind, output_dir=output_dir, outputs=kinds,
        background_spec=background, background=parsed_background, refine=refine,
        overwrite=overwrite, workers=workers or default_workers(), max_pixels=max_pixels, glob=glob,
        report_path=report_path, progress=progress, video=video)


def _check_apart(source: Path, output_dir: Path, kinds: tuple[str, ...]) -> None:
    """Outputs must never land among the photos: a rerun would read them as photos, and a
    photo OUTPUT/rgba/a.png is exactly where a.jpg's cutout goes."""
    root, out = source.resolve(), output_dir.resolve()
    if source.is_dir() and (out == root or root in out.parents):
        raise ConfigError(f"OUTPUT {output_dir} is inside INPUT {source}; choose a folder outside it")
    for kind in kinds:
        folder = out / kind
        if root == folder or folder in root.parents:
            raise ConfigError(f"INPUT {source} is inside OUTPUT/{kind}, where outputs could overwrite "
                              f"photos; choose another OUTPUT")


def _inside_outputs(src: Path, config: RunConfig) -> str | None:
    """For listed paths (not checked up front): the OUTPUT/<kind> folder holding `src`, if any."""
    path = Path(os.path.abspath(src))
    for kind in config.outputs:
        folder = Path(os.path.abspath(config.output_dir / kind))
        if folder in path.parents:
            return kind
    return None


# ---------------------------------------------------------------------------------------------
# Listing: lazy, with name collisions found in O(folder depth) memory


OnListError = Callable[[Path, OSError], None]


def _folder_jobs(root: Path, glob: str | None, on_error: OnListError | None) -> Iterator[Job]:
    for path in iter_photos(root, glob, on_error=on_error or (lambda folder, e: None),
                            extensions=PHOTO_EXTENSIONS | VIDEO_EXTENSIONS):
        yield Job(path, path.relative_to(root))


def _list_jobs(paths: Iterable[str | Path], glob: str | None) -> Iterator[Job]:
    cwd = Path.cwd()
    for item in paths:
        text = str(item).rstrip("\r\n")
        if not text.strip():
            continue
        path = Path(text)
        absolute = Path(os.path.abspath(path))  # lexical: a symlinked photo keeps its own name
        try:
            rel = absolute.relative_to(cwd)
        except ValueError:
            rel = Path(absolute.name)
        if glob is None or glob_matches(rel, glob):
            yield Job(path, rel)


def glob_matches(rel: Path, glob: str) -> bool:
    """iter_photos' rule for photos named one by one: the name, or the relative path when the
    pattern has a "/"; any case."""
    target = rel.as_posix() if "/" in glob else rel.name
    return fnmatch.fnmatchcase(target.lower(), glob.lower())


def iter_jobs(config: RunConfig, on_error: OnListError | None = None) -> Iterator[Job]:
    """The photos of the run, lazily, in sorted order. on_error(folder, OSError) hears of folders
    that cannot be listed (their photos are then missing from the run)."""
    if config.source_kind == "folder":
        return _folder_jobs(config.source, config.glob, on_error)
    if config.source_kind == "file":
        src = config.source
        job = Job(src, Path(src.name))
        return iter([job] if config.glob is None or glob_matches(job.rel, config.glob) else [])
    return _list_jobs(config.source, config.glob)


class FolderCollisions:
    """Finds photos whose outputs would land on an earlier photo's (a.jpg and a.png -> a.png).

    The first in sorted order keeps the name. iter_photos gives each folder's names in sorted
    order, so every name starting with "a." comes in one run: a stack of the stems still open
    (each one a prefix of the next, plus ".") is all a folder needs, however many photos it
    holds, and only the folders along the current path are kept.
    """

    def __init__(self) -> None:
        self._open: dict[Path, list[tuple[str, Path]]] = {}  # folder -> stack of (stem, first photo)

    def check(self, src: Path) -> Path | None:
        """The earlier photo that `src`'s outputs would overwrite, or None."""
        folder, name = src.parent, src.name
        for left in [f for f in self._open if f != folder and f not in folder.parents]:
            del self._open[left]
        stack = self._open.setdefault(folder, [])
        while stack and not name.startswith(stack[-1][0] + "."):
            stack.pop()
        if stack and stack[-1][0] == src.stem:
            return stack[-1][1]
        stack.append((src.stem, src))
        return None


class ListCollisions:
    """The same for a list of paths, which can come in any order from any folder: this keeps one
    key per photo (about 100 bytes each), the price of accepting arbitrary lists."""

    def __init__(self) -> None:
        self._first: dict[str, Path] = {}

    def check(self, job: Job) -> Path | None:
        key = str(job.rel.with_suffix(""))
        first = self._first.setdefault(key, job.src)
        return None if first is job.src else first


@dataclass(frozen=True)
class Skipped:
    src: Path


@dataclass(frozen=True)
class Failed:
    src: Path
    reason: str


def plan_jobs(config: RunConfig) -> Iterator[Job | Skipped | Failed]:
    """Each photo of the run as a Job to do, Skipped (all its outputs exist) or Failed (it cannot
    run: its outputs would collide with an earlier photo's, or its folder cannot be listed).
    Every photo is checked for collisions, skipped or not, so a resumed run reports the same."""
    unlistable: list[Failed] = []
    jobs = iter_jobs(config, on_error=lambda folder, e: unlistable.append(
        Failed(folder, f"cannot list folder ({e.strerror or e})")))
    # Videos have guards of their own: a.jpg and a.mp4 write different files (a.png, a.mp4).
    guards = {video: (FolderCollisions() if config.source_kind == "folder" else None,
                      ListCollisions() if config.source_kind == "list" else None) for video in (False, True)}
    for job in jobs:
        yield from unlistable
        unlistable.clear()
        video = is_video_name(job.src.name)
        folder_guard, list_guard = guards[video]
        first = folder_guard.check(job.src) if folder_guard else list_guard.check(job) if list_guard else None
        kind = _inside_outputs(job.src, config) if list_guard else None
        if kind is not None:
            yield Failed(job.src, f"inside OUTPUT/{kind}; hx never writes over a photo")
        elif first is not None:
            same = os.path.abspath(first) == os.path.abspath(job.src)
            yield Failed(job.src, "listed more than once" if same else f"output name collides with {first}")
        elif not config.overwrite and all(path.exists() for path in _output_paths(config, job, video)):
            yield Skipped(job.src)
        else:
            yield job
    yield from unlistable


def _output_paths(config: RunConfig, job: Job, video: bool) -> list[Path]:
    if video:
        from .video_pipeline import VideoOptions, video_output_path

        options = config.video or VideoOptions()
        return [video_output_path(config.output_dir, kind, job.rel, options) for kind in config.outputs]
    return [output_path(config.output_dir, kind, job.rel) for kind in config.outputs]


# ---------------------------------------------------------------------------------------------
# Per-photo stages (run in the pools; each returns a result or a Failed, never raises)


@dataclass
class Decoded:
    job: Job
    x: np.ndarray  # [3, S, S] float32 in [-1, 1], letterboxed
    box: Letterbox  # maps the model output back to the photo's upright size
    rgb: np.ndarray | None  # [H, W, 3] uint8, kept only when an output or --refine needs pixels


def matte_input(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, Letterbox]:
    """A photo as a matte-only run feeds it to the model: ([3, S, S] float32 in [-1, 1], geometry).

    A matte-only run never looks at full-resolution pixels: the JPEG decoder scales down
    (1/2, 1/4, 1/8) to about the model size, and the matte's size comes from the header.
    `hx-infer eval` scores its `full` crop through this too, so its figures are those of the
    mattes `hx-infer run --outputs alpha` writes. Raises DecodeError / OSError.
    """
    rgb, (width, height) = decode_photo(path, max_pixels, reduce_to=size)  # one opening, header first
    return letterbox(rgb, size, src_size=(width, height))


def _reason(e: Exception) -> str:
    """One line for the report. A photo archive holds every kind of broken file; whatever one
    raises must not end a run of a million, so unexpected errors are named by type."""
    if isinstance(e, DecodeError):
        return str(e)
    if isinstance(e, OSError):  # worded as read_photo words it
        return f"cannot read ({e.strerror or e})" if e.strerror else str(e)
    return f"{type(e).__name__}: {e}".splitlines()[0]


@dataclass(frozen=True)
class PhotoStages:
    """What the per-photo stages need to know, fixed for the run. Every engine runs these same
    two functions, so a photo's outputs do not depend on which engine wrote them."""

    config: RunConfig
    size: int  # the model's square input
    target: str  # "alpha" or "rgb"
    keep_pixels: bool
    reduced_decode: bool

    @classmethod
    def for_run(cls, config: RunConfig, model: ModelDir) -> "PhotoStages":
        keep = model.target == "alpha" and (config.refine != "none" or config.outputs != ("alpha",))
        return cls(config, model.size, model.target, keep_pixels=keep,
                   reduced_decode=model.target == "alpha" and not keep)

    def decode(self, job: Job) -> Decoded | Failed:
        try:
            if self.reduced_decode:
                # Every run takes this same path, so resumed files match.
                x, box = matte_input(job.src, self.size, self.config.max_pixels)
                return Decoded(job, x, box, None)
            rgb = read_photo(job.src, self.config.max_pixels)
            x, box = letterbox(rgb, self.size)
            return Decoded(job, x, box, rgb if self.keep_pixels else None)
        except Exception as e:  # noqa: BLE001 - see _reason
            return Failed(job.src, _reason(e))

    def finish(self, item: Decoded, out: np.ndarray) -> Failed | None:
        """out: [C, S, S] float32 in [0, 1] for this photo -> its outputs, written atomically."""
        config = self.config
        try:
            restored = unletterbox(out, item.box)  # [H, W] matte or [H, W, 3] painted photo
            if self.target == "rgb":
                atomic_write(output_path(config.output_dir, "composite", item.job.rel),
                             encode_jpeg(to_uint8(restored)))
                return None
            if config.refine == "guided":
                height, width = item.rgb.shape[:2]
                restored = guided_filter(item.rgb, restored, radius=guided_radius(height, width, self.size),
                                         model_size=self.size)
            alpha = to_uint8(restored)
            for kind in config.outputs:
                data = _ENCODERS[kind](item.rgb, alpha, config.background)
                atomic_write(output_path(config.output_dir, kind, item.job.rel), data)
            return None
        except Exception as e:  # noqa: BLE001 - see _reason
            return Failed(item.job.src, _reason(e))


# kind -> (rgb [H, W, 3] uint8 or None, alpha [H, W] uint8, Background) -> file bytes
_ENCODERS: dict[str, Callable[[np.ndarray | None, np.ndarray, Background], bytes]] = {
    "alpha": lambda rgb, alpha, background: encode_png(alpha),
    "rgba": lambda rgb, alpha, background: encode_png(rgba_cutout(rgb, alpha)),
    "composite": lambda rgb, alpha, background: encode_jpeg(composite(rgb, alpha, background)),
}


# ---------------------------------------------------------------------------------------------
# The run


class _Progress:
    """tqdm bar (files/s, and an ETA once a background walk has counted the inputs). With
    enabled=True, tqdm still hides itself when stderr is not a terminal."""

    def __init__(self, config: RunConfig):
        from tqdm import tqdm

        self.bar = tqdm(total=None, unit="file", disable=None if config.progress else True,
                        dynamic_ncols=True, smoothing=0.1)
        self.total: int | None = None
        self._stop = threading.Event()
        if not self.bar.disable and config.source_kind != "list":
            threading.Thread(target=self._count, args=(config,), daemon=True, name="hx-count").start()

    def _count(self, config: RunConfig) -> None:
        n = 0
        for _ in iter_jobs(config):
            if self._stop.is_set():
                return
            n += 1
        self.total = n  # picked up by the main thread, which owns the bar

    def update(self, n: int = 1) -> None:
        if self.total is not None and self.bar.total is None:
            self.bar.total = self.total
        self.bar.update(n)

    def close(self) -> None:
        self._stop.set()
        self.bar.close()


class Outcomes:
    """Where each photo's outcome goes, whichever engine ran it: the tally for the report, the
    progress bar, and `log` (one line per failure). Used from one thread only."""

    def __init__(self, config: RunConfig, log: Callable[[str], None] | None = None):
        self.tally = Tally()
        self._log = log
        self._progress = _Progress(config)

    def processed(self, n: int = 1) -> None:
        self.tally.processed += n
        self._progress.update(n)

    def skipped(self) -> None:
        self.tally.skipped += 1
        self._progress.update()

    def failed(self, failure: Failed) -> None:
        self.tally.fail(str(failure.src), failure.reason)
        if self._log is not None:
            self._log(f"{failure.src}: {failure.reason}")
        self._progress.update()

    def close(self) -> None:
        self._progress.close()


def prepare_output(config: RunConfig) -> None:
    """Create OUTPUT and remove what a killed run left half-written in it, before any photo."""
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"OUTPUT {config.output_dir}: cannot create ({e.strerror})") from None
    clean_temporaries(config.output_dir)  # left by a run that was killed mid-write


def finish_report(config: RunConfig, model: ModelDir, tally: Tally, wall_s: float, *, engine: str,
                  backend: str, device: str, batch_size: int, **engine_facts) -> dict:
    """The run's report, written to config.report_path and returned. engine_facts: what only
    one engine knows (the Ray engine's cluster and actors), stored as given."""
    from . import __version__

    report = build_report(
        tally, wall_s,
        hx_version=__version__,
        input=config.source_label,
        output=str(config.output_dir),
        outputs=list(config.outputs),
        background=config.background_spec,
        refine=config.refine,
        overwrite=config.overwrite,
        model={"path": str(model.root), "sha256": model.sha256, "preset": model.preset,
               "size": model.size, "target": model.target},
        engine=engine,
        backend=backend,
        device=device,
        batch_size=batch_size,
        workers=config.workers,
        max_pixels=config.max_pixels,
        glob=config.glob,
        **engine_facts,
    )
    write_report(config.report_path, report)
    return report


def _on_device(config: RunConfig, backend: Backend, model: ModelDir):
    """On CUDA, hx_infer.gpu letterboxes, upsamples and composes on the GPU (two streams, pinned
    buffers, nvJPEG when torchvision is there); --refine guided stays on the numpy stages."""
    if not backend.device.startswith("cuda") or config.refine != "none":
        return None
    from .gpu import PipelineOnDevice

    return PipelineOnDevice(config, backend, model)


def run(config: RunConfig, backend: Backend, model: ModelDir, batch_size: int,
        log: Callable[[str], None] | None = None) -> dict:
    """Run the whole job and return the report (also written to config.report_path).

    log: called with one line per photo that failed ("PATH: reason"), as it happens.
    """
    start = time.perf_counter()
    prepare_output(config)
    stages = PhotoStages.for_run(config, model)
    on_device = _on_device(config, backend, model)  # None: the numpy stages do the pixel work
    outcomes = Outcomes(config, log)
    from .video_pipeline import VideoRuns

    videos = VideoRuns(config, backend, model, batch_size, log)  # run after the photos, one at a time

    max_in_flight = batch_size + config.workers
    decoding: deque[Future] = deque()
    writing: deque[Future] = deque()
    batch: list[Decoded] = []

    def collect_write(future: Future) -> None:
        result = future.result()
        if result is None:
            outcomes.processed()
        else:
            outcomes.failed(result)

    def infer_batch() -> None:
        if on_device is not None:
            # returns the previous batch's outputs: one batch stays on the GPU while the next uploads
            queue_writes(on_device.finish, on_device.submit(batch))
        else:
            x = np.stack([item.x for item in batch])  # [N, 3, S, S] float32
            out = np.asarray(backend.infer(x))  # [N, C, S, S] float32 in [0, 1]
            queue_writes(stages.finish, zip(batch, out))
        batch.clear()

    def queue_writes(finish: Callable, results: Iterable) -> None:
        for item, item_out in results:
            writing.append(write_pool.submit(finish, item, item_out))
        while len(writing) > max_in_flight:
            collect_write(writing.popleft())

    def collect_decode(future: Future) -> None:
        result = future.result()
        if isinstance(result, Failed):
            outcomes.failed(result)
            return
        batch.append(result)
        if len(batch) == batch_size:
            infer_batch()

    decode_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="hx-decode")
    write_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="hx-write")
    try:
        for planned in plan_jobs(config):
            if isinstance(planned, Skipped):
                outcomes.skipped()
                continue
            if isinstance(planned, Failed):
                outcomes.failed(planned)
                continue
            if is_video_name(planned.src.name):
                videos.add(planned)
                continue
            decoding.append(decode_pool.submit(on_device.decode if on_device else stages.decode, planned))
            # Consume in submission order: the batches do not depend on thread timing.
            while len(decoding) > max_in_flight:
                collect_decode(decoding.popleft())
        while decoding:
            collect_decode(decoding.popleft())
        if batch:
            infer_batch()
        if on_device is not None:
            queue_writes(on_device.finish, on_device.flush())
        while writing:
            collect_write(writing.popleft())
        videos.run(outcomes)
    finally:
        # On an error or Ctrl-C: drop queued work, let running writes finish (each is atomic).
        decode_pool.shutdown(wait=True, cancel_futures=True)
        write_pool.shutdown(wait=True, cancel_futures=True)
        outcomes.close()

    return finish_report(config, model, outcomes.tally, time.perf_counter() - start, engine="local",
                         backend=backend.name, device=backend.device, batch_size=batch_size,
                         **videos.facts())
