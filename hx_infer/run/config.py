"""One run's options checked once, against the inputs and the model, into a frozen RunConfig.

Everything downstream (planning, stages, videos, the report) reads the RunConfig and checks
nothing again. Bad options raise ConfigError with one line naming the option or path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..compose import Background
from ..errors import ConfigError
from ..io.images import PHOTO_EXTENSIONS, check_png_compression
from ..io.lock import LOCK_NAME
from ..io.video import VIDEO_EXTENSIONS
from ..manifest import MANIFEST_NAME
from ..model import ModelDir
from ..report import REPORT_NAME, is_report
from .backgrounds import parse_background_or_video
from .kinds import KINDS, PAINTED
from .options import REFINES, RunOptions

__all__ = ["ConfigError", "RunConfig", "SeveralInputs", "make_config", "parse_names", "parse_outputs",
           "default_workers"]

WHITE = ("white", "#ffffff")  # the only background an rgb-target model can honour


@dataclass(frozen=True)
class SeveralInputs:
    """Several INPUTs (photos, videos or folders), each laid out below OUTPUT as a run of it alone
    would lay it out: a file by its name, a folder by its tree. An output two INPUTs would both
    write is written once, for the first; the later photo is reported as failed."""

    paths: tuple[Path, ...]

    def __init__(self, paths: Iterable[str | Path]):
        object.__setattr__(self, "paths", tuple(Path(p) for p in paths))


@dataclass(frozen=True)
class RunConfig:
    """One run, checked. `source` is a file, a folder, or an iterable of paths; `options` are the
    user's (checked); the other fields are what was settled from them."""

    source: Path | Iterable[str | Path] | SeveralInputs
    source_kind: str  # "file", "folder", "list" (paths, as from stdin) or "several" (SeveralInputs)
    output_dir: Path
    options: RunOptions
    outputs: tuple[str, ...]  # options.outputs parsed, in the order given
    background: Background  # options.background parsed once
    workers: int
    report_path: Path

    @property
    def source_label(self) -> str | list[str]:
        if self.source_kind == "several":
            return [str(path) for path in self.source.paths]
        return "-" if self.source_kind == "list" else str(self.source)

    def needs_photo_pixels(self, target: str) -> bool:
        """Whether a model of `target` needs each photo's full-resolution pixels after inference."""
        return target == "alpha" and (self.options.refine != "none"
                                      or any(KINDS[kind].needs_photo for kind in self.outputs))

    def reduced_decode(self, target: str) -> bool:
        """A matte-only run: JPEGs decoded at about the model's size, the matte's size from the
        header. Every run of the same options decodes the same way, so resumed files match."""
        return target == "alpha" and not self.needs_photo_pixels(target)


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
    return parse_names(outputs, KINDS, "--outputs", "kind", ConfigError)


def make_config(inputs: str | Path | Iterable[str | Path], output_dir: str | Path, model: ModelDir,
                options: RunOptions = RunOptions()) -> RunConfig:
    """Check every option before any photo is touched; raise ConfigError naming the bad one.

    inputs: a photo, a folder (searched recursively), SeveralInputs of those, or an iterable of
    photo paths (the CLI's `-` passes stdin's lines). output_dir must not be an input folder or
    inside one.
    """
    output_dir = Path(output_dir)
    if isinstance(inputs, SeveralInputs):
        source, source_kind, roots = inputs, "several", inputs.paths
        if not roots:
            raise ConfigError("INPUT: give at least one photo or folder")
    elif isinstance(inputs, (str, Path)):
        source = Path(inputs)
        source_kind, roots = None, (source,)
    else:
        source, source_kind, roots = inputs, "list", ()
    for root in roots:
        if not root.exists():
            raise ConfigError(f"INPUT {root}: no such file or folder")
    if source_kind is None:
        source_kind = "folder" if source.is_dir() else "file"
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"OUTPUT {output_dir}: exists and is not a folder")
    kinds = parse_outputs(options.outputs)
    for root in roots:
        _check_apart(root, output_dir, kinds)

    report_path = Path(options.report) if options.report is not None else output_dir / REPORT_NAME
    _check_report_path(report_path, tuple(root for root in roots if root.is_dir()), output_dir)
    try:
        check_png_compression(options.png_compression)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not options.log_every > 0:
        raise ConfigError(f"--log-every must be more than 0 seconds, got {options.log_every:g}")
    if options.refine not in REFINES:
        raise ConfigError(f"--refine {options.refine!r}: choose from {', '.join(REFINES)}")
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {options.workers}")
    if options.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be at least 1, got {options.max_pixels}")
    try:
        background = parse_background_or_video(options.background)
    except ValueError as e:  # the message names --background already
        raise ConfigError(str(e)) from None
    if model.target == "rgb":
        # The generator paints the person on white: there is no matte to cut out with.
        if kinds != (PAINTED,):
            raise ConfigError(f"--outputs {','.join(kinds)}: model {model.root} paints the person on white "
                              f"(target rgb) and makes only --outputs {PAINTED}")
        if options.background.strip().lower() not in WHITE:
            raise ConfigError(f"--background {options.background}: model {model.root} paints the person on white "
                              f"(target rgb); it cannot use another background")
        if options.refine != "none":
            raise ConfigError(f"--refine {options.refine}: model {model.root} makes no matte to refine (target rgb)")
    return RunConfig(source=source, source_kind=source_kind, output_dir=output_dir, options=options,
                     outputs=kinds, background=background, workers=options.workers or default_workers(),
                     report_path=report_path)


def _check_report_path(report_path: Path, input_folders: tuple[Path, ...], output_dir: Path) -> None:
    """The report replaces only an earlier report: never the user's notes, a model file or a
    photo, never a file among the photos (a rerun would find it there), and never OUTPUT's lock
    or manifest, which may not exist yet (releasing the lock would delete the report; a report
    in the manifest's place would end every later run)."""
    if report_path.is_dir() or report_path.suffix.lower() in PHOTO_EXTENSIONS | VIDEO_EXTENSIONS:
        raise ConfigError(f"--report {report_path}: give the path of a .json file")
    for own in (LOCK_NAME, MANIFEST_NAME):
        if os.path.realpath(report_path) == os.path.realpath(output_dir / own):
            raise ConfigError(f"--report {report_path}: that is OUTPUT's {own}, which hx keeps for itself; "
                              f"choose another path")
    for folder in input_folders:
        if folder.resolve() in report_path.resolve().parents:
            raise ConfigError(f"--report {report_path}: inside INPUT {folder}; write it elsewhere")
    if (report_path.exists() or report_path.is_symlink()) and not is_report(report_path):
        raise ConfigError(f"--report {report_path}: exists and is not an hx-infer report; not replaced "
                          f"(remove it, or choose another path)")


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
