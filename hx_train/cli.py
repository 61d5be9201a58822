"""hx-train: prepare a data set, train the pix2pix model on it, export it for hx-infer.

Each command parses its options, calls one library function, and turns that library's expected
errors into a single line `hx-train: <message>` with exit status 2. torch and the command modules
are imported inside the commands, so `hx-train --help` answers at once.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from hx_infer import __version__

from .config import AMP_MODES, DEVICES, GAN_LOSSES, SEG_LOSSES, TARGETS, TrainConfig, TrainError

DEFAULTS = TrainConfig()
PREPARE_FORMATS = ("auto", "folders", "supervisely", "ab", "coco")  # hx_train.prepare's source layouts
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C


class CommandError(click.ClickException):
    """An expected failure: one line on stderr, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"hx-train: {self.format_message()}", err=True)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineGroup(click.Group):
    """click prints a usage error as usage, hint and message on three lines; print it as one, like
    every other error here. (Plain `hx-train` still prints the help.)"""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            if isinstance(e, _NO_ARGS_IS_HELP):
                raise
            raise CommandError(e.format_message()) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a sub-command's bad option or missing argument
            if isinstance(e, _NO_ARGS_IS_HELP):
                raise
            raise CommandError(e.format_message()) from None


def _log(message: str) -> None:
    click.echo(message, err=True)


def _io_error(e: OSError) -> CommandError:
    where = f"{e.filename}: " if e.filename else ""
    return CommandError(f"{where}{e.strerror or e}")


def _require_train(command: str, *modules: str) -> None:
    """One line and exit 2 when the train extra (torch, onnx, onnxscript) is not installed."""
    from hx_infer.extras import require

    problem = require(command, "train", *modules)  # shown as "hx-train: fit needs torch ..."
    if problem:
        raise CommandError(problem)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hx-train", message="%(prog)s %(version)s")
def main() -> None:
    """Train the pix2pix person extractor: prepare -> fit -> export."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path), metavar="SRC [SRC ...] DST")
@click.option("--format", "fmt", type=click.Choice(PREPARE_FORMATS), default="auto", show_default=True,
              help="layout of every SRC; auto recognises each of the others, per SRC")
@click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1,
              show_default=True, help="share of each source's pairs held out for validation")
@click.option("--min-val", type=click.IntRange(0), default=30, show_default=True,
              help="at least this many val pairs per source, where it has three times as many")
@click.option("--category", default="person", show_default=True,
              help="coco: the category whose annotations are person")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the train/val split")
@click.option("--max-side", type=click.IntRange(16), default=None,
              help="shrink pairs longer than this (px) to it, photos as JPEG: a smaller copy of the set "
                   "(fit --size S sees at most 2*S px, so 2*S loses nothing)")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=92, show_default=True,
              help="of the photos --max-side shrinks")
@click.option("--overwrite", is_flag=True, help="replace DST/train, DST/val and DST/sources.json")
def prepare(paths: tuple[Path, ...], fmt: str, val_fraction: float, min_val: int, category: str, seed: int,
            max_side: int | None, jpeg_quality: int, overwrite: bool) -> None:
    """Turn photos + person masks in each SRC into DST/{train,val}/{images,masks}.

    Several SRCs make one set: names get each source's name as a prefix, the split is drawn per
    source, and DST/sources.json records each source.
    """
    from .prepare import PrepareError
    from .prepare import prepare as run_prepare

    if len(paths) < 2:
        raise CommandError("prepare needs SRC and DST (hx-train prepare SRC [SRC ...] DST)")
    *sources, dst = paths
    try:
        summary = run_prepare(sources, dst, fmt, val_fraction, seed, _log, overwrite=overwrite,
                              min_val=min_val, category=category, max_side=max_side or 0,
                              jpeg_quality=jpeg_quality)
    except PrepareError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise _io_error(e) from None
    count = lambda x: x if isinstance(x, int) else len(x)  # noqa: E731  (counts or lists of names)
    click.echo(f"{dst}: {count(summary.train)} train, {count(summary.val)} val pairs, "
               f"{count(summary.skipped)} skipped")


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="run folder: checkpoints, metrics.jsonl, samples/")
@click.option("--preset", default=DEFAULTS.preset, show_default=True,
              help="networks from hx_train.models.PRESETS: base (the paper's), lite (fast CPU inference), "
                   "slim (256 px at lite-128's CPU cost), mid (slim with 3x its filters deep down), "
                   "wide (mid with 4/3 its filters at 1/8-1/16 of the side) or wide16 (wide with twice its filters "
                   "at 1/2-1/4 of the side)")
@click.option("--size", type=int, default=DEFAULTS.size, show_default=True,
              help="input side in pixels, a power of two from 64 to 512")
@click.option("--target", type=click.Choice(TARGETS), default=DEFAULTS.target, show_default=True,
              help="alpha: predict the matte; rgb: paint the person on white")
@click.option("--epochs", type=int, default=DEFAULTS.epochs, show_default=True,
              help="epochs at the initial learning rate")
@click.option("--epochs-decay", type=int, default=DEFAULTS.epochs_decay, show_default=True,
              help="then epochs of linear decay to zero")
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True)
@click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True, help="Adam learning rate")
@click.option("--lambda-l1", type=float, default=DEFAULTS.lambda_l1, show_default=True,
              help="weight of L1 against the GAN loss")
@click.option("--lambda-gan", type=float, default=DEFAULTS.lambda_gan, show_default=True,
              help="weight of the GAN loss; 0 trains G alone on L1 (+ --seg-loss), no discriminator")
@click.option("--gan-loss", type=click.Choice(GAN_LOSSES), default=DEFAULTS.gan_loss, show_default=True)
@click.option("--seg-loss", type=click.Choice(SEG_LOSSES), default=DEFAULTS.seg_loss, show_default=True,
              help="extra matte term (alpha only)")
@click.option("--seg-weight", type=float, default=DEFAULTS.seg_weight, show_default=True)
@click.option("--amp", type=click.Choice(AMP_MODES), default=DEFAULTS.amp, show_default=True,
              help="autocast dtype; auto: bf16 on CUDA (fp16 on GPUs without bf16), fp32 on the CPU. "
                   "bf16 also runs on the CPU, faster where it has AVX512-BF16 or AMX")
@click.option("--device", type=click.Choice(DEVICES), default=DEFAULTS.device, show_default=True)
@click.option("--compile/--no-compile", default=DEFAULTS.compile, show_default=True,
              help="torch.compile the networks")
@click.option("--backgrounds", type=click.Path(path_type=Path), default=None,
              help="folder of person-free photos: people from the training pairs are pasted onto them, "
                   "and some are shown with no person at all")
@click.option("--p-composite", type=click.FloatRange(0.0, 1.0), default=DEFAULTS.p_composite, show_default=True,
              help=f"share of views that are a background photo with 1-{DEFAULTS.composite_people} people pasted on "
                   "(needs --backgrounds)")
@click.option("--p-empty", type=click.FloatRange(0.0, 1.0), default=DEFAULTS.p_empty, show_default=True,
              help="share of views that are a background photo with nobody on it (needs --backgrounds)")
@click.option("--p-paste", type=click.FloatRange(0.0, 1.0), default=DEFAULTS.p_paste, show_default=True,
              help="share of photo views with another training person pasted in: groups and overlaps "
                   "on real scenes (before --p-composite replaces views with composites)")
@click.option("--composite-max-height", type=click.FloatRange(0.0, 4.0, min_open=True),
              default=DEFAULTS.composite_max_height, show_default=True,
              help="tallest pasted person, as a share of the frame's height (heights are drawn "
                   f"log-uniform from {DEFAULTS.composite_min_height}); above 1: close-ups cut by the frame")
@click.option("--crop-min", type=click.FloatRange(0.0, 1.0, min_open=True), default=DEFAULTS.crop_min,
              show_default=True,
              help="whole-photo views keep this much of each side at least: lower zooms in, "
                   "so people are larger and cut by the frame")
@click.option("--white-balance", type=click.FloatRange(0.0, 1.0, max_open=True), default=DEFAULTS.white_balance,
              show_default=True, help="each colour channel is multiplied by 1 +/- this: colour casts")
@click.option("--source-balance", type=click.FloatRange(0.0, 1.0), default=DEFAULTS.source_balance,
              show_default=True,
              help="a photo of a source of n photos is drawn with weight n^-this: 0 = every photo alike, "
                   "1 = every source alike")
@click.option("--init-from", type=click.Path(path_type=Path), default=None,
              help="a checkpoint or a model folder (hx-train export's; 'default': the bundled model) "
                   "whose generator starts this run: the same --preset, or a wider one of the same "
                   "--size (its added filters start at zero effect); D starts fresh")
@click.option("--workers", type=int, default=DEFAULTS.workers, show_default=True,
              help="image decoding threads (0: one per core, at most 8)")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--resume", is_flag=True,
              help="continue the run in --out from its last.pt; options given here override its own")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar and no per-epoch lines")
@click.pass_context
def fit(ctx: click.Context, data: Path, out: Path, resume: bool, quiet: bool, **options) -> None:
    """Train on DATA/train, validate on DATA/val (the output of `hx-train prepare`)."""
    _require_train("fit", "torch")
    from .train import fit as run_fit

    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    try:
        for values in (options, given):  # a path in the config is a string: checkpoints hold no Path
            for name in ("backgrounds", "init_from"):
                if values.get(name) is not None:
                    values[name] = str(values[name])
        # With --resume the run's own config, read by fit once it holds RUN, with `given` over it.
        config = None if resume else TrainConfig(**options)
        result = run_fit(config, data, out, resume=resume, overrides=given if resume else None,
                         log=(lambda _: None) if quiet else _log,
                         progress=False if quiet else None, command=shlex.join(["hx-train", *sys.argv[1:]]))
    except TrainError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise _io_error(e) from None
    except KeyboardInterrupt:
        if not (out / "last.pt").exists():  # a new run stopped in its first epoch: nothing to resume
            raise CommandError(f"interrupted; no epoch finished, nothing was saved in {out}",
                               EXIT_INTERRUPTED) from None
        raise CommandError(f"interrupted; {out / 'last.pt'} holds the last finished epoch "
                           "(continue with --resume)", EXIT_INTERRUPTED) from None
    key = result["best_key"]
    click.echo(f"{out}: {result.get('epoch', 0)} epochs, val {key} {result.get('val', {}).get(key, float('nan')):.4f}, "
               f"best {result['best_metric']:.4f}")


@main.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="model folder to write")
@click.option("--overwrite", is_flag=True, help="replace an earlier model folder at --out (no other folder)")
@click.option("--trust-checkpoint", is_flag=True,
              help="load a checkpoint that holds Python objects, not only tensors and plain data (full "
                   "unpickling runs any code in the file: only for checkpoints you made)")
def export(ckpt: Path, out: Path, overwrite: bool, trust_checkpoint: bool) -> None:
    """Write CKPT's generator as a model folder for hx-infer (ONNX fp32 + fp16, weights, model.json)."""
    _require_train("export", "torch", "onnx", "onnxscript")
    from .export import ExportError
    from .export import export as run_export

    try:
        model = run_export(ckpt, out, log=_log, overwrite=overwrite, trust=trust_checkpoint)
    except ExportError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise _io_error(e) from None
    click.echo(f"{model.root}: {model.preset} {model.size}px -> {model.target}")


if __name__ == "__main__":
    main(prog_name="hx-train")
