"""`hx-infer`: click commands that parse, validate and call hx_infer (run, eval; build, bench
and info come later). Kept light: `hx-infer --help` imports no runtime.

Exit codes: 0 all photos done; 1 some photos failed (listed in the report); 2 bad usage (option,
path or model). Every error is one line on stderr, never a traceback (HX_DEBUG=1 shows it for
internal errors).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

import click

from . import __version__
from .backends.base import BACKENDS
from .engines import ENGINES, EngineError

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
            click.echo("hx-infer: interrupted; run the same command again to resume", err=True)
            code = 130
        sys.exit(code if isinstance(code, int) else EXIT_OK)


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
@click.argument("input", metavar="INPUT")
@click.argument("output", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--model", default="default", show_default=True,
              help="'default' (the bundled model) or a model folder made by `hx-train export`.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: trt > ort with CUDA > torch on CUDA > ort on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Photos per inference call.  [default: 8 on CPU, 32 on CUDA]")
@click.option("--outputs", default="rgba", show_default=True,
              help="Comma-separated kinds to write: alpha (matte), rgba (cutout), composite.")
@click.option("--background", default="white", show_default=True,
              help="Composite background: white, black, '#RRGGBB', an image file, or a video file "
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
@click.option("--temporal-strength", type=click.FloatRange(0, 1, max_open=True), default=None,
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
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=None,
              help="--engine ray: GPUs each actor holds.  [default: 1 when the cluster has GPUs, else 0]")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--engine ray: CPUs each actor holds, also its backend's CPU threads.  [default: 1]")
@click.pass_context
def run(ctx: click.Context, input: str, output: Path, model: str, backend: str, device: str,
        batch_size: int | None, outputs: str, background: str, refine: str, resume: bool,
        workers: int | None, max_pixels: int, report: Path | None, quiet: bool,
        glob: str | None, temporal: bool, temporal_strength: float | None, lossless: bool,
        video_codec: str, frames: str, engine: str, ray_address: str | None, actors: int | None,
        gpus_per_actor: float | None, cpus_per_actor: float | None) -> None:
    """Write the matte, cutout and/or composite of every photo in INPUT below OUTPUT.

    INPUT is a photo, a folder (searched recursively; photos by extension, any case), or '-'
    for paths on stdin, one per line. Outputs mirror INPUT's tree:
    OUTPUT/alpha/<dir>/<stem>.png, OUTPUT/rgba/<dir>/<stem>.png, OUTPUT/composite/<dir>/<stem>.jpg.
    Paths from stdin keep their path relative to the current directory when inside it, else
    only their file name. When two photos would share an output (a.jpg and a.png), the first in
    sorted order wins and the other is reported as failed.

    A rerun resumes: photos whose outputs all exist are skipped, so an interrupted run (even
    kill -9) finishes with the same files as an uninterrupted one. Exit 0 when every photo was
    done, 1 when some failed (see the report), 2 on bad usage.

    Videos (mp4, mov, mkv, avi, webm; needs the `video` extra) are matted frame for frame:
    OUTPUT/alpha/<dir>/<stem>.mp4, OUTPUT/composite/<dir>/<stem>.mp4 (.mkv with --lossless),
    OUTPUT/rgba/<dir>/<stem>.mov (or .webm, or PNG frames); audio is copied. Each video counts
    as one file; a rerun redoes a video whose outputs are not all complete.

    --engine ray runs the same stages on Ray (see the README): the same files, byte for byte,
    and the same report; INPUT and OUTPUT must be on storage every node sees at the same path.
    """
    from tqdm import tqdm

    from . import Extractor
    from .engines import make_engine
    from .backends.base import BackendError
    from .model import ModelError
    from .pipeline import ConfigError
    from .report import REPORT_NAME, summary_line
    from .temporal import DEFAULT_STRENGTH
    from .video_pipeline import VideoOptions

    inputs = (line for line in sys.stdin) if input == "-" else input
    strength = temporal_strength if temporal_strength is not None else DEFAULT_STRENGTH if temporal else 0.0
    video = VideoOptions(temporal=strength, lossless=lossless, rgba="png" if frames == "png" else video_codec)

    def log(line: str) -> None:
        tqdm.write(f"hx-infer: {line}", file=sys.stderr)  # above the bar, not through it

    ray_options = {"address": ray_address, "actors": actors, "gpus_per_actor": gpus_per_actor,
                   "cpus_per_actor": cpus_per_actor}
    given = {name: value for name, value in ray_options.items() if value is not None}
    if given and engine != "ray":
        flag = "--ray-address" if "address" in given else "--" + next(iter(given)).replace("_", "-")
        raise click.UsageError(f"{flag} is an option of --engine ray", ctx)

    with _exit_on_errors(ctx, ConfigError, ModelError, BackendError):
        with Extractor(model, backend=backend, device=device, batch_size=batch_size,
                       engine=make_engine(engine, **given)) as extractor:
            result = extractor.run(
                inputs, output, outputs=outputs, background=background, refine=refine,
                overwrite=not resume, workers=workers, max_pixels=max_pixels, glob=glob,
                report=report, progress=not quiet, log=log, video=video)
    report_path = report if report is not None else output / REPORT_NAME
    click.echo(summary_line(result, report_path), err=True)
    ctx.exit(EXIT_FAILED if result["counts"]["failed"] else EXIT_OK)


@main.command("eval")
@click.argument("model", metavar="MODEL")
@click.argument("data", metavar="DATA", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: trt > ort with CUDA > torch on CUDA > ort on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Crops per inference call.  [default: 8 on CPU, 32 on CUDA]")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write every figure, per crop and per image, to this JSON file.")
@click.option("--boundary-tolerance", type=click.FloatRange(min=0), default=3, show_default=True,
              help="Pixels within which a boundary pixel counts as matched (boundary F).")
@click.option("--crops", default="full,upper,head", show_default=True,
              help="Comma-separated crops to score: full (photo), upper (upper body), head (head and shoulders).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def eval_command(ctx: click.Context, model: str, data: Path, backend: str, device: str,
                 batch_size: int | None, json_path: Path | None, boundary_tolerance: float, crops: str,
                 quiet: bool) -> None:
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
    from .evaluate import EvalError, evaluate, format_results, plan_eval
    from .io.images import PHOTO_EXTENSIONS
    from .model import ModelError
    from .pipeline import ConfigError
    from .report import write_report

    def log(line: str) -> None:
        tqdm.write(f"hx-infer: {line}", file=sys.stderr)

    with _exit_on_errors(ctx, EvalError, ConfigError, ModelError, BackendError):
        if json_path is not None and (json_path.is_dir() or json_path.suffix.lower() in PHOTO_EXTENSIONS):
            raise EvalError(f"--json {json_path}: give the path of a .json file")
        with Extractor(model, backend=backend, device=device, batch_size=batch_size) as extractor:
            plan_eval(extractor.model, data, crops, boundary_tolerance)  # bad DATA fails before the backend opens
            results = evaluate(extractor.model, data, extractor.backend, crops=crops,
                               tolerance=boundary_tolerance, batch_size=extractor.batch_size, log=log,
                               progress=not quiet)
        if json_path is not None:
            write_report(json_path, results)
    click.echo(format_results(results))
    ctx.exit(EXIT_FAILED if results["failures"] else EXIT_OK)


if __name__ == "__main__":
    main(prog_name="hx-infer")
