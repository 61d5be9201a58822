"""`hx-infer`: click commands that parse, validate and call hx_infer (run, cut, eval, build, bench;
info comes later). Kept light: `hx-infer --help` imports no runtime.

Exit codes: 0 all photos done; 1 some photos failed (listed in the report); 2 bad usage (option,
path or model). Every error is one line on stderr, never a traceback (HX_DEBUG=1 shows it for
internal errors).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import Iterator

import click

from . import __version__
from .backends.base import BACKENDS
from .engines import ENGINES, EngineError
from .io.png_choices import DEFAULT_PNG_COMPRESSION, PNG_COMPRESSIONS
from .progress import DEFAULT_LOG_EVERY_S

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _OneLineErrors(click.Group):
    """click, but a usage error is one line (`hx-infer: error: ...`) rather than the usage block."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # bare `hx-infer`: the help, as click shows it
            e.show()
            code = e.exit_code
        except click.ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            click.echo(f"hx-infer: error: {e.format_message()}{hint}", err=True)
            code = e.exit_code
        except click.Abort:
            how, code = ("terminated", 143) if _terminated.is_set() else ("interrupted", 130)
            click.echo(f"hx-infer: {how}; run the same command again to resume", err=True)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


_terminated = threading.Event()


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (kill, systemd, a batch scheduler) unwinds like Ctrl-C: the same clean-up of
    temporaries in `finally` blocks, one line, exit 143 (128 + 15)."""
    _terminated.set()
    raise KeyboardInterrupt


def entry_point() -> None:
    """The `hx-infer` console script: main() with SIGTERM handled like SIGINT."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    main(prog_name="hx-infer")


class _FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf: nan passes every bound (no comparison
    holds for it), and neither is a number of pixels or seconds."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@contextlib.contextmanager
def _exit_on_errors(ctx: click.Context, *usage_errors: type[Exception]) -> Iterator[None]:
    """Turn what a command's library call raises into one line on stderr and an exit code:
    usage_errors (bad option, path or model) -> 2; OSError (an output could not be written:
    disk full, permissions) and EngineError (a Ray cluster went away) -> 1; anything else is a
    bug -> 1, traceback only with HX_DEBUG=1."""
    try:
        yield
    except usage_errors as e:
        click.echo(f"hx-infer: error: {e}", err=True)
        ctx.exit(EXIT_USAGE)
    except EngineError as e:  # stopped part-way; what was written is complete, a rerun resumes
        click.echo(f"hx-infer: error: {e}", err=True)
        ctx.exit(EXIT_FAILED)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"hx-infer: error: {where}{e.strerror or e}", err=True)
        ctx.exit(EXIT_FAILED)
    except Exception as e:  # noqa: BLE001 - a bug; one line unless asked for the traceback
        if os.environ.get("HX_DEBUG"):
            raise
        click.echo(f"hx-infer: internal error: {type(e).__name__}: {e} (HX_DEBUG=1 shows the traceback)",
                   err=True)
        ctx.exit(EXIT_FAILED)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hx-infer", message="%(prog)s %(version)s")
def main() -> None:
    """Cut people out of photos with a pix2pix model made by `hx-train export`."""


@main.command()
@click.argument("paths", metavar="INPUT... OUTPUT", nargs=-1, required=True)
@click.option("--model", default="default", show_default=True,
              help="'default' (the bundled model) or a model folder made by `hx-train export`.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: trt > ort with CUDA > torch on CUDA > ort on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Photos per inference call.  [default: 8 on CPU, 32 on CUDA]")
@click.option("--png-compression", type=click.Choice(PNG_COMPRESSIONS), default=DEFAULT_PNG_COMPRESSION,
              show_default=True, help="PNG outputs: fast (fpng; 1.1-1.3x the bytes of balanced), balanced "
                                      "(zlib level 1), small (zlib level 6, ~7x slower than balanced).")
@click.option("--log-every", type=_FiniteFloatRange(min=0, min_open=True), default=DEFAULT_LOG_EVERY_S,
              show_default=True, help="Without a terminal (logs, cron, CI): a progress line every this "
                                      "many seconds instead of the bar.")
@click.option("--outputs", default="rgba", show_default=True,
              help="Comma-separated kinds to write: alpha (matte), rgba (cutout), composite.")
@click.option("--background", default="white", show_default=True,
              help="Composite background: a CSS colour name (white, black, teal...), '#RRGGBB', an image "
                   "file, or a video file "
                   "(looped behind videos; photos get its first frame).")
@click.option("--refine", type=click.Choice(["none", "guided"]), default="none", show_default=True,
              help="guided: sharpen the upsampled matte along the photo's edges.")
@click.option("--resume/--overwrite", default=True, show_default=True,
              help="Keep photos whose outputs all exist, or redo everything.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode and write threads.  [default: number of cores]")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Reject photos larger than this (checked from the header, before decoding).")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON report.  [default: OUTPUT/hx-report.json]")
@click.option("--quiet", is_flag=True, help="No progress bar: only errors and the summary line.")
@click.option("--glob", default=None, help="Only photos whose path below INPUT matches, e.g. '*.jpg'.")
@click.option("--temporal", is_flag=True,
              help="Videos: smooth the matte over time (moving average, restarted at scene cuts).")
@click.option("--temporal-strength", type=_FiniteFloatRange(0, 1, max_open=True), default=None,
              help="Videos: weight of the past in --temporal; higher is steadier but lags fast motion "
                   "(implies --temporal).  [default: 0.5]")
@click.option("--lossless", is_flag=True, help="Videos: alpha and composite as FFV1 .mkv instead of H.264 .mp4.")
@click.option("--video-codec", type=click.Choice(["prores", "vp9"]), default="prores", show_default=True,
              help="Videos, rgba: ProRes 4444 .mov or VP9 .webm, both with alpha.")
@click.option("--frames", type=click.Choice(["video", "png"]), default="video", show_default=True,
              help="Videos, rgba: one video file, or a folder of PNG frames (OUTPUT/rgba/<dir>/<stem>/000000.png).")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="local: threads in this process. ray: Ray Data tasks and actors, on this machine "
                   "or a Ray cluster (needs the `ray` extra; photos only).")
@click.option("--ray-address", default=None,
              help="--engine ray: 'auto' (the cluster `ray start` runs here) or HOST:PORT of a "
                   "cluster's head.  [default: $RAY_ADDRESS, else a Ray runtime started for this run]")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="--engine ray: inference actors, each loading the model once.  [default: as many "
                   "as the cluster's GPUs allow, or its CPUs less one]")
@click.option("--gpus-per-actor", type=_FiniteFloatRange(min=0), default=None,
              help="--engine ray: GPUs each actor holds.  [default: 1 when the cluster has GPUs, else 0]")
@click.option("--cpus-per-actor", type=_FiniteFloatRange(min=0, min_open=True), default=None,
              help="--engine ray: CPUs each actor holds, also its backend's CPU threads.  [default: 1]")
@click.option("--engine-cache", type=click.Path(path_type=Path), default=None,
              help="--backend trt: folder of built TensorRT engines, one per model, GPU and TensorRT "
                   "version.  [default: $XDG_CACHE_HOME/hx/trt or ~/.cache/hx/trt]")
@click.pass_context
def run(ctx: click.Context, paths: tuple[str, ...], model: str, backend: str, device: str,
        batch_size: int | None, png_compression: str, log_every: float, outputs: str, background: str, refine: str, resume: bool,
        workers: int | None, max_pixels: int, report: Path | None, quiet: bool,
        glob: str | None, temporal: bool, temporal_strength: float | None, lossless: bool,
        video_codec: str, frames: str, engine: str, ray_address: str | None, actors: int | None,
        gpus_per_actor: float | None, cpus_per_actor: float | None, engine_cache: Path | None) -> None:
    """Write the matte, cutout and/or composite of every photo in each INPUT below OUTPUT.

    INPUT is a photo, a folder (searched recursively; photos by extension, any case), or '-'
    for paths on stdin, one per line (one photo's bytes: `hx-infer cut`). Several INPUTs are
    laid out as each would be alone. Outputs mirror INPUT's tree:
    OUTPUT/alpha/<dir>/<stem>.png, OUTPUT/rgba/<dir>/<stem>.png, OUTPUT/composite/<dir>/<stem>.jpg.
    Paths from stdin keep their path relative to the current directory when inside it, else
    only their file name. When two photos would share an output (a.jpg and a.png), the first in
    sorted order (or the earlier INPUT) wins and the other is reported as failed.

    A rerun resumes: photos whose outputs all exist are skipped, so an interrupted run (even
    kill -9) finishes with the same files as an uninterrupted one. Exit 0 when every photo was
    done (also when INPUT holds no photo: a warning says so), 1 when some failed (see the
    report), 2 on bad usage.

    Videos (mp4, mov, mkv, avi, webm; needs the `video` extra) are matted frame for frame:
    OUTPUT/alpha/<dir>/<stem>.mp4, OUTPUT/composite/<dir>/<stem>.mp4 (.mkv with --lossless),
    OUTPUT/rgba/<dir>/<stem>.mov (or .webm, or PNG frames); audio is copied. Each video counts
    as one file; a rerun redoes a video whose outputs are not all complete.

    --engine ray runs the same stages on Ray (see the README): the same files, byte for byte,
    and the same report; INPUT and OUTPUT must be on storage every node sees at the same path.
    """
    from tqdm import tqdm

    from . import Extractor
    from .backends.base import BackendError
    from .engines import make_engine
    from .errors import ConfigError
    from .model import ModelError
    from .report import REPORT_NAME, ReportError, summary_line
    from .run.options import RunOptions, VideoOptions
    from .temporal import DEFAULT_STRENGTH

    if len(paths) < 2:
        raise click.UsageError("give INPUT... OUTPUT: one or more photos or folders, then the output folder", ctx)
    *sources, output = paths
    output = Path(output)
    inputs = _run_inputs(ctx, sources)
    strength = temporal_strength if temporal_strength is not None else DEFAULT_STRENGTH if temporal else 0.0
    options = RunOptions(
        outputs=outputs, background=background, refine=refine, overwrite=not resume, workers=workers,
        max_pixels=max_pixels, glob=glob, report=report, progress=not quiet, log_every=log_every,
        png_compression=png_compression, video=VideoOptions(temporal=strength, lossless=lossless, rgba="png" if frames == "png" else video_codec))

    def log(line: str) -> None:
        tqdm.write(f"hx-infer: {line}", file=sys.stderr)  # above the bar, not through it

    ray_options = {"address": ray_address, "actors": actors, "gpus_per_actor": gpus_per_actor,
                   "cpus_per_actor": cpus_per_actor}
    given = {name: value for name, value in ray_options.items() if value is not None}
    if given and engine != "ray":
        flag = "--ray-address" if "address" in given else "--" + next(iter(given)).replace("_", "-")
        raise click.UsageError(f"{flag} is an option of --engine ray", ctx)

    report_path = report if report is not None else output / REPORT_NAME
    unwritten = None
    with _exit_on_errors(ctx, ConfigError, ModelError, BackendError):
        with Extractor(model, backend=backend, device=device, batch_size=batch_size,
                       engine=make_engine(engine, **given), engine_cache=engine_cache) as extractor:
            try:
                result = extractor.run(inputs, output, options, log=log)
            except ReportError as e:  # the run is done; say where its report is not, then sum up
                click.echo(f"hx-infer: error: {e}", err=True)
                result, unwritten = e.report, e
    if not any(result["counts"].values()):
        where = "stdin listed" if sources == ["-"] else "INPUT holds"
        click.echo(f"hx-infer: warning: {where} no photo or video" + (f" matching --glob {glob!r}" if glob else ""),
                   err=True)
    click.echo(summary_line(result, None if unwritten else report_path), err=True)
    ctx.exit(EXIT_FAILED if result["counts"]["failed"] or unwritten else EXIT_OK)


def _peek_stdin(n: int) -> bytes:
    """Up to n first bytes of stdin, left there for the reader."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:
        return b""
    if hasattr(raw, "peek"):  # a pipe or file: BufferedReader
        return raw.peek(n)[:n]
    if raw.seekable():  # an in-memory stream (tests)
        at = raw.tell()
        head = raw.read(n)
        raw.seek(at)
        return head
    return b""


def _run_inputs(ctx: click.Context, sources: list[str]):
    """run's INPUTs -> what make_config takes: one path, SeveralInputs, or stdin's lines for '-'."""
    from .io.images import sniff_media
    from .run.config import SeveralInputs

    if "-" in sources:
        if len(sources) > 1:
            raise click.UsageError("INPUT '-' (paths on stdin) cannot be given with other INPUTs", ctx)
        what = sniff_media(_peek_stdin(64))
        if what is not None:
            raise click.UsageError(f"stdin holds {what} bytes, but INPUT '-' reads a list of paths, one per "
                                   f"line; for one photo's bytes use `hx-infer cut - OUT.png`", ctx)
        return (line for line in sys.stdin)
    return sources[0] if len(sources) == 1 else SeveralInputs(sources)


def _same_file(in_stat: os.stat_result, path: str) -> bool:
    """Whether `path` exists and is the file in_stat describes (the same inode, by any name)."""
    try:
        return os.path.samestat(in_stat, os.stat(path))
    except OSError:  # not there, or not to be looked at: nothing of IN's to write over
        return False


# OUT's extension -> (file format, the output kind it implies when --output is not given)
_CUT_FORMATS = {".png": ("png", "rgba"), ".jpg": ("jpeg", "composite"), ".jpeg": ("jpeg", "composite")}


@main.command()
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@click.option("--output", type=click.Choice(["rgba", "alpha", "composite"]), default=None,
              help="What to write.  [default: from OUT: .png rgba, .jpg/.jpeg composite; rgba for '-']")
@click.option("--model", default="default", show_default=True,
              help="'default' (the bundled model) or a model folder made by `hx-train export`.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: trt > ort with CUDA > torch on CUDA > ort on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--background", default="white", show_default=True,
              help="Composite background: a CSS colour name (white, black, teal...), '#RRGGBB' or an image file.")
@click.option("--refine", type=click.Choice(["none", "guided"]), default="none", show_default=True,
              help="guided: sharpen the upsampled matte along the photo's edges.")
@click.option("--png-compression", type=click.Choice(PNG_COMPRESSIONS), default=DEFAULT_PNG_COMPRESSION,
              show_default=True, help="As for run.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95, show_default=True,
              help="A composite written as JPEG.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Reject larger photos (checked from the header, before decoding).")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it exists (else refused: exit 2).")
@click.pass_context
def cut(ctx: click.Context, src: str, dst: str, output: str | None, model: str, backend: str, device: str,
        background: str, refine: str, png_compression: str, jpeg_quality: int, max_pixels: int,
        overwrite: bool) -> None:
    """Cut the person out of one photo: IN to OUT, either of them '-' (stdin, stdout).

    `cat me.jpg | hx-infer cut - - > me.png` writes an RGBA PNG. OUT's extension says what to
    write (.png: the rgba cutout, .jpg: the composite on --background) unless --output says
    otherwise; OUT '-' is an RGBA PNG (grey for --output alpha), or a JPEG for --output
    composite. The matte is the one `hx-infer run` writes for that photo. OUT is written atomically; an OUT that exists is
    refused unless --overwrite, and so is one in a folder that does not exist (none is made).
    Exit 0 done, 1 when IN is not a readable photo, 2 on bad usage.
    """
    from .api import cut as cut_photo
    from .backends.base import BackendError
    from .errors import ConfigError
    from .io.images import DecodeError, atomic_write, read_photo_bytes, read_photo_stream
    from .model import ModelError

    # Started with fd 0 or 1 closed (`<&-`, `>&-`), Python sets sys.stdin / sys.stdout to None.
    if src == "-" and sys.stdin is None:
        raise click.UsageError("IN '-': stdin is closed; redirect it from a photo, or give a file", ctx)
    in_stat = None
    if src != "-":
        try:
            in_stat = os.stat(src)
        except FileNotFoundError:
            raise click.UsageError(f"IN {src}: no such file", ctx) from None
        except OSError:  # e.g. a folder on the way that cannot be searched: said when it is read
            pass
        if in_stat is not None and stat.S_ISDIR(in_stat.st_mode):
            raise click.UsageError(f"IN {src} is a folder; `hx-infer run` takes folders", ctx)
    if dst == "-":
        file_format, kind = ("jpeg", "composite") if output == "composite" else ("png", output or "rgba")
        if sys.stdout is None:
            raise click.UsageError("OUT '-': stdout is closed; redirect it, or give a file name", ctx)
        if sys.stdout.isatty():
            raise click.UsageError(f"OUT '-' would write {file_format.upper()} bytes to the terminal; "
                                   "redirect stdout, or give a file name", ctx)
    else:
        suffix = Path(dst).suffix.lower()
        if suffix not in _CUT_FORMATS:
            raise click.UsageError(f"OUT {dst}: name a .png (rgba, alpha, composite) or .jpg (composite) "
                                   "file, or '-' for stdout", ctx)
        file_format, implied = _CUT_FORMATS[suffix]
        kind = output or implied
        if file_format == "jpeg" and kind != "composite":
            raise click.UsageError(f"OUT {dst}: JPEG has no alpha channel; write a .png for --output {kind}", ctx)
        if in_stat is not None and _same_file(in_stat, dst):
            raise click.UsageError(f"OUT {dst} is IN; hx never writes over a photo", ctx)
        if os.path.isdir(dst):
            raise click.UsageError(f"OUT {dst} is a folder; name a file in it", ctx)
        if os.path.lexists(dst) and not overwrite:  # a dangling link too: it points somewhere the user chose
            raise click.UsageError(_out_exists(dst), ctx)
        # One file, as cp writes it: a missing folder is more likely a typo than a wish for a new one.
        folder = Path(dst).parent
        try:
            folder_is_dir = stat.S_ISDIR(os.stat(folder).st_mode)
        except FileNotFoundError:
            raise click.UsageError(f"OUT {dst}: no such folder {folder}; create it first", ctx) from None
        except NotADirectoryError:  # a file higher up the path
            folder_is_dir = False
        except OSError:  # e.g. a folder on the way that cannot be searched: said when OUT is written
            folder_is_dir = True
        if not folder_is_dir:
            raise click.UsageError(f"OUT {dst}: {folder} is not a folder", ctx)
    name = "stdin" if src == "-" else src
    unreadable = None
    try:  # read bounded: stdin or a path may be /dev/zero, which never ends
        if src == "-":
            data = read_photo_stream(sys.stdin.buffer, max_pixels)
        elif in_stat is not None and stat.S_ISREG(in_stat.st_mode):
            data = read_photo_bytes(Path(src), max_pixels)  # as run reads a photo: header first, bounded
        else:  # a pipe (`<(curl ...)`) or a device: as stdin
            with open(src, "rb") as f:
                data = read_photo_stream(f, max_pixels)
    except DecodeError as e:  # the photo, not the usage: exit 1 as run's failed photos
        unreadable = f"hx-infer: error: {name}: {e}"
    except OSError as e:
        unreadable = f"hx-infer: error: {name}: cannot read ({e.strerror or e})"
    if not unreadable:
        with _exit_on_errors(ctx, ConfigError, ModelError, BackendError, ValueError):
            try:
                result = cut_photo(data, output=kind, file_format=file_format, background=background,
                                   model=model, backend=backend, device=device, refine=refine,
                                   png_compression=png_compression, jpeg_quality=jpeg_quality,
                                   max_pixels=max_pixels)
            except DecodeError as e:
                unreadable = f"hx-infer: error: {name}: {e}"
    if unreadable:
        click.echo(unreadable, err=True)
        ctx.exit(EXIT_FAILED)
    raced = False
    with _exit_on_errors(ctx):
        if dst == "-":
            sys.stdout.buffer.write(result)
            sys.stdout.buffer.flush()
        else:
            try:  # no-clobber: checking and writing are one link, so one made meanwhile is kept
                atomic_write(Path(dst), result, replace=overwrite, parents=False)
            except FileExistsError:
                raced = True
    if raced:  # OUT made by another process while the model ran: the answer an OUT there before gets
        raise click.UsageError(_out_exists(dst), ctx)


def _out_exists(dst: str) -> str:
    return f"OUT {dst} exists; not replaced (give --overwrite to replace it)"


_MAX_TOLERANCE = 100  # px: evaluate.MAX_TOLERANCE (evaluate imports OpenCV, `--help` must not)


@main.command("eval")
@click.argument("model", metavar="MODEL")
@click.argument("data", metavar="DATA", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: trt > ort with CUDA > torch on CUDA > ort on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Crops per inference call.  [default: 8 on CPU, 32 on CUDA]")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write every figure, per crop and per image, to this JSON file: a new file, "
                   "or an earlier eval result it replaces (any other file is refused).")
@click.option("--boundary-tolerance", type=_FiniteFloatRange(0, _MAX_TOLERANCE), default=3, show_default=True,
              help=f"Pixels within which a boundary pixel counts as matched (boundary F), 0 to {_MAX_TOLERANCE}.")
@click.option("--crops", default="full,upper,head", show_default=True,
              help="Comma-separated crops to score: full (photo), upper (upper body), head (head and shoulders).")
@click.option("--refine", type=click.Choice(["none", "guided"]), default="none", show_default=True,
              help="Score the mattes `run --refine` writes (guided: sharpened along the photo's edges).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def eval_command(ctx: click.Context, model: str, data: Path, backend: str, device: str,
                 batch_size: int | None, json_path: Path | None, boundary_tolerance: float, crops: str,
                 refine: str, quiet: bool) -> None:
    """Score MODEL's mattes against the person masks in DATA: IoU, alpha MAE, boundary F.

    MODEL is 'default' or a model folder. DATA holds images/ and masks/ matched by stem (or is a
    folder made by `hx-train prepare`, whose val/ split is used). Every photo is scored whole
    and on its upper-body and head-and-shoulders crops, cut by fixed rules from the mask (see
    hx_infer.evaluate). Prints a table; --json keeps every figure. Exit 0 when every pair was
    scored, 1 when some could not be read, 2 on bad usage.
    """
    from tqdm import tqdm

    from . import Extractor
    from .backends.base import BackendError
    from .evaluate import EvalError, check_json_path, evaluate, format_results, plan_eval
    from .errors import ConfigError
    from .model import ModelError
    from .report import write_report

    def log(line: str) -> None:
        tqdm.write(f"hx-infer: {line}", file=sys.stderr)

    with _exit_on_errors(ctx, EvalError, ConfigError, ModelError, BackendError):
        if json_path is not None:
            check_json_path(json_path)  # before the model runs: a refusal costs no wait
        with Extractor(model, backend=backend, device=device, batch_size=batch_size) as extractor:
            plan_eval(extractor.model, data, crops, boundary_tolerance)  # bad DATA fails before the backend opens
            results = evaluate(extractor.model, data, extractor.backend, crops=crops,
                               tolerance=boundary_tolerance, batch_size=extractor.batch_size, log=log,
                               progress=not quiet, refine=refine)
        if json_path is not None:
            write_report(json_path, results)
    click.echo(format_results(results))
    ctx.exit(EXIT_FAILED if results["failures"] else EXIT_OK)


@main.command()
@click.argument("model_dir", metavar="MODEL_DIR")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write the engine here, and its sidecar ENGINE.json beside it.  "
                   "[default: into --engine-cache, where `run --backend trt` looks]")
@click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Builds from model.fp16.onnx or model.onnx (strongly typed: the graph sets the types).")
@click.option("--min-batch", type=int, default=1, show_default=True, help="Smallest batch the engine takes.")
@click.option("--opt-batch", type=int, default=32, show_default=True, help="The batch it is tuned for.")
@click.option("--max-batch", type=int, default=128, show_default=True,
              help="Largest batch it takes (larger ones are run in pieces).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Layer timings kept across builds.  [default: in --engine-cache, per TensorRT version and GPU]")
@click.option("--workspace", type=_FiniteFloatRange(min=0, min_open=True), default=None,
              help="GiB of GPU memory TensorRT may use while building.  [default: TensorRT's]")
@click.option("--engine-cache", type=click.Path(path_type=Path), default=None,
              help="[default: $XDG_CACHE_HOME/hx/trt or ~/.cache/hx/trt]")
@click.option("--device", default="cuda", show_default=True, help="cuda or cuda:N: the GPU the engine is for.")
@click.pass_context
def build(ctx: click.Context, model_dir: str, out: Path | None, precision: str, min_batch: int, opt_batch: int,
          max_batch: int, timing_cache: Path | None, workspace: float | None, engine_cache: Path | None,
          device: str) -> None:
    """Build a TensorRT engine for MODEL_DIR on this GPU (once; `run --backend trt` reuses it).

    One optimisation profile over the batch axis; the engine is written atomically with a
    sidecar JSON (TensorRT version, GPU and compute capability, precision, profile, ONNX
    sha256). An engine only runs on the TensorRT version and GPU model it was built with.
    Exit 2 when tensorrt or a GPU is missing, or on bad options.
    """
    from .backends.base import BackendError
    from .model import ModelError, load_model_dir
    from .backends.trt_build import Profile, build_for_model

    def log(line: str) -> None:
        click.echo(f"hx-infer: {line}", err=True)

    with _exit_on_errors(ctx, ModelError, BackendError):
        engine = build_for_model(load_model_dir(model_dir, verify=True), precision=precision,
                                 profile=Profile(min_batch, opt_batch, max_batch), out=out,
                                 timing_cache=timing_cache, workspace_gib=workspace, cache_dir=engine_cache,
                                 device=device, log=log)
    click.echo(str(engine))


@main.command()
@click.option("--model", default="default", show_default=True,
              help="'default' (the bundled model) or a model folder made by `hx-train export`.")
@click.option("--backend", "backends", type=click.Choice(BACKENDS), multiple=True,
              help="Repeat to compare several.  [default: auto]")
@click.option("--precision", "precisions", type=click.Choice(["fp32", "fp16", "bf16"]), multiple=True,
              help="Repeat to compare several.  [default: the backend's own, fp16 on CUDA, fp32 on CPU]")
@click.option("--batch-sizes", default=None,
              help="Comma-separated.  [default: 1,8,32,128,256 on CUDA, 1,8,32 on CPU]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed calls per configuration.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed calls first (graph capture, autotuning).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="torch and trt on CUDA: replay a captured graph per batch size.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ort on CPU: threads.  [default: all cores]")
@click.option("--engine-cache", type=click.Path(path_type=Path), default=None, help="--backend trt: as for run.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the results here.")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path), default=None,
              help="Write the table here too.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG chart of images/s against batch size.")
@click.pass_context
def bench(ctx: click.Context, model: str, backends: tuple[str, ...], precisions: tuple[str, ...],
          batch_sizes: str | None, device: str, iterations: int, warmup: int, cuda_graphs: bool,
          threads: int | None, engine_cache: Path | None, json_path: Path | None, markdown_path: Path | None,
          plot_path: Path | None) -> None:
    """Time the model alone: images/s and latency per backend x precision x batch size.

    Warm-up calls are not timed; on CUDA each call is timed with CUDA events. Prints a markdown
    table (with the model's GFLOPs per image and the TFLOP/s reached). Exit 1 when a
    configuration failed while timing (its row says why), 2 on bad usage or a missing runtime.
    """
    from . import load_model
    from .backends.base import BackendError
    from .bench import bench_model, markdown_table, parse_batches, plot_throughput, write_json
    from .model import ModelError

    try:
        batches = parse_batches(batch_sizes) if batch_sizes is not None else None
    except ValueError as e:
        raise click.UsageError(str(e), ctx) from None

    def log(line: str) -> None:
        click.echo(f"hx-infer: {line}", err=True)

    with _exit_on_errors(ctx, ModelError, BackendError):
        result = bench_model(load_model(model), backends=backends or ("auto",), precisions=precisions or (None,),
                             batches=batches, device=device, iterations=iterations, warmup=warmup,
                             cuda_graphs=cuda_graphs, threads=threads, engine_cache=engine_cache, log=log)
        table = markdown_table(result)
        if json_path is not None:
            write_json(result, json_path)
        if markdown_path is not None:
            from .io.images import atomic_write

            atomic_write(markdown_path, table.encode())
        if plot_path is not None:
            plot_throughput(result, plot_path)
    click.echo(table)
    ctx.exit(EXIT_FAILED if any(row["error"] for row in result["rows"]) else EXIT_OK)


@contextlib.contextmanager
def _stopped_before_ready(ctx: click.Context) -> Iterator[None]:
    """serve: SIGTERM or Ctrl-C while the model loads (or a TensorRT engine builds) is a stop like
    one after start-up: one line, exit 0. Until the server puts its own handlers in place (they
    drain and return), both signals arrive here as KeyboardInterrupt; there is nothing to resume."""
    try:
        yield
    except KeyboardInterrupt:
        how = "SIGTERM" if _terminated.is_set() else "SIGINT"
        click.echo(f"hx-infer: {how} before the server was ready: stopped", err=True)
        ctx.exit(EXIT_OK)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; there is no authentication, so keep it on loopback behind a proxy.")
@click.option("--port", type=click.IntRange(0, 65535), default=7000, show_default=True, help="0: any free port.")
@click.option("--model", default="default", show_default=True, help="'default' or a model folder.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Photos of concurrent requests per backend call.")
@click.option("--max-wait-ms", type=_FiniteFloatRange(min=0), default=5.0, show_default=True,
              help="How long a photo waits for others to share its backend call.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode and encode threads.  [default: number of cores]")
@click.option("--max-body-mb", type=_FiniteFloatRange(min=0, min_open=True), default=32.0, show_default=True,
              help="Larger bodies are refused (413) before they are read. MiB.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True,
              help="Larger images are refused (413) from their header, before decoding.")
@click.option("--queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests in the server at once; one more is answered 503 with Retry-After.")
@click.option("--drain-timeout", "drain_timeout_s", type=_FiniteFloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM, seconds that requests in flight may take to finish.")
@click.option("--access-log", is_flag=True, help="Log every request to stdout.")
@click.pass_context
def serve(ctx: click.Context, **options) -> None:
    """Answer POST /api/remove with the cutout, batching concurrent requests onto the model.

    The image is the request body, or the multipart field `file` (rembg's form, with its om and
    bgc fields); ?output=rgba|alpha|composite, &background=, &format=png|jpeg, &refine=. Also
    GET /healthz and GET /metrics (Prometheus). Needs the `serve` extra. SIGTERM drains the
    requests in flight and exits 0. See the README for a reverse proxy in front.
    """
    from .serve import ServeError, ServeOptions, missing_extra, serve as serve_forever

    if missing_extra():
        click.echo(f"hx-infer: error: serve needs the `serve` extra ({missing_extra()} is missing): "
                   "pip install 'hx[serve]'", err=True)
        ctx.exit(EXIT_USAGE)
    from .backends.base import BackendError
    from .model import ModelError

    with _stopped_before_ready(ctx), _exit_on_errors(ctx, ServeError, ModelError, BackendError):
        serve_forever(ServeOptions(**options), log=lambda line: click.echo(line, err=True))


if __name__ == "__main__":
    entry_point()
