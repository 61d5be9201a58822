"""Planning a run: which inputs there are, and for each whether to do it, skip it or fail it.

    iter_jobs    the inputs, listed lazily in sorted order (a folder walk, one file, or a list)
    plan_jobs    -> Job (to do), Skipped (all its outputs exist: resume) or Failed (its outputs
                 would collide with an earlier input's, it lies inside OUTPUT, or its folder
                 cannot be listed)

Every engine plans with these, so a run reports the same skips and failures whichever engine
runs it. Name collisions are found in O(folder depth) memory for a folder walk.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..io.images import PHOTO_EXTENSIONS, DecodeError, WriteError, iter_photos
from ..io.video import VIDEO_EXTENSIONS, is_video_name
from .config import RunConfig
from .index import REDO, SKIP, OutputIndex
from .kinds import photo_output_path, video_output_path


@dataclass(frozen=True)
class Job:
    src: Path  # the photo as named by the user (not resolved)
    rel: Path  # its place below OUTPUT/<kind>/; the suffix is replaced per kind
    # Set by the decode stage (dataclasses.replace): what the decoder let through but the report
    # should name, such as stray bytes before a JPEG's end marker. The job is what every engine's
    # stages hand on to the outcome, so the warning reaches the report without a path of its own.
    warning: str | None = None


@dataclass(frozen=True)
class Skipped:
    src: Path
    warning: str | None = None  # what the decoder left when its outputs were made (OutputIndex)


@dataclass(frozen=True)
class Failed:
    src: Path
    reason: str

    @classmethod
    def because(cls, src: Path, e: Exception) -> "Failed":
        """The one line the report gives for `e`. A photo archive holds every kind of broken file;
        whatever one raises must not end a run of a million, so unexpected errors are named by type."""
        if isinstance(e, (DecodeError, WriteError)):  # WriteError: "cannot write OUTPUT/...: reason"
            return cls(src, str(e))
        if isinstance(e, OSError):  # worded as read_photo words it
            return cls(src, f"cannot read ({e.strerror or e})" if e.strerror else str(e))
        return cls(src, f"{type(e).__name__}: {e}".splitlines()[0])


def output_paths(config: RunConfig, job: Job) -> list[Path]:
    """Every file (or PNG-frame folder) `job` writes, one per kind asked for."""
    if is_video_name(job.src.name):
        return [video_output_path(config.output_dir, kind, job.rel, config.options.video) for kind in config.outputs]
    return [photo_output_path(config.output_dir, kind, job.rel) for kind in config.outputs]


class _OutputFolders:
    """Finds inputs that lie in OUTPUT/<kind>: listed there (lexically), or reached through a
    symlink (a photo, or a folder of a walk, that links into OUTPUT), which up-front checks of
    INPUT cannot see. Writing such a photo's outputs could overwrite the photo itself. And finds
    outputs that a folder link inside OUTPUT/<kind> would send elsewhere (into INPUT, say): hx
    writes only inside OUTPUT/<kind>, where it can promise not to touch anything else."""

    _CACHE_FOLDERS = 4096  # real paths of output folders, kept while a walk stays in them

    def __init__(self, config: RunConfig):
        self._lexical = {kind: os.path.abspath(config.output_dir / kind) for kind in config.outputs}
        self._real = {kind: os.path.realpath(config.output_dir / kind) for kind in config.outputs}
        self._real_folders: dict[str, str] = {}

    def holding(self, src: Path) -> str | None:
        """The reason `src` must not run, or None."""
        lexical, real = os.path.abspath(src), os.path.realpath(src)
        for kind in self._lexical:
            if lexical.startswith(self._lexical[kind] + os.sep):
                return f"inside OUTPUT/{kind}; hx never writes over a photo"
            if real.startswith(self._real[kind] + os.sep):
                return f"inside OUTPUT/{kind} (through a link, {real}); hx never writes over a photo"
        return None

    def leaving(self, kinds: Iterable[str], outputs: Iterable[Path]) -> str | None:
        """The reason these outputs (one per kind) must not be written, or None: a folder on the
        way to one is a link that leads out of its OUTPUT/<kind>."""
        for kind, output in zip(kinds, outputs):
            folder = os.path.abspath(output.parent)
            real = self._real_folders.get(folder)
            if real is None:
                if len(self._real_folders) >= self._CACHE_FOLDERS:
                    self._real_folders.clear()
                real = self._real_folders[folder] = os.path.realpath(folder)
            inside = self._real[kind]
            if real != inside and not real.startswith(inside + os.sep):
                return (f"its {kind} output {output} would be written through a link to {real}, outside "
                        f"OUTPUT/{kind}; hx writes only inside OUTPUT")
        return None


def _frames_collision(config: RunConfig, job: Job) -> str | None:
    """--frames png writes a video's cutout as the folder OUTPUT/rgba/<dir>/<stem>/, which is
    exactly where the photos of INPUT/<dir>/<stem>/ have theirs: the video must not run."""
    if (config.options.video.rgba != "png" or "rgba" not in config.outputs or config.source_kind != "folder"
            or not is_video_name(job.src.name)):
        return None
    photos = job.src.parent / job.src.stem
    if not photos.is_dir():
        return None
    frames = video_output_path(config.output_dir, "rgba", job.rel, config.options.video)
    return f"its PNG frames folder {frames} collides with the outputs of the photo folder {photos}"


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
    """The photos of the run, lazily, in sorted order (several INPUTs: one after the other, in the
    order given). on_error(folder, OSError) hears of folders that cannot be listed (their photos
    are then missing from the run)."""
    if config.source_kind == "several":
        return (job for root in config.source.paths for job in _root_jobs(root, config.options.glob, on_error))
    if config.source_kind in ("folder", "file"):
        return _root_jobs(config.source, config.options.glob, on_error)
    return _list_jobs(config.source, config.options.glob)


def _root_jobs(root: Path, glob: str | None, on_error: OnListError | None) -> Iterator[Job]:
    """One INPUT: a folder's tree, or a file by its name."""
    if root.is_dir():
        return _folder_jobs(root, glob, on_error)
    job = Job(root, Path(root.name))
    return iter([job] if glob is None or glob_matches(job.rel, glob) else [])


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


def plan_jobs(config: RunConfig, index: OutputIndex | None = None) -> Iterator[Job | Skipped | Failed]:
    """Each photo of the run as a Job to do, Skipped (all its outputs exist, made from it as far
    as `index` knows; with the warning it recorded then) or Failed (it cannot run: its outputs
    would collide with an earlier photo's, or with those another file made in an earlier run, or
    its folder cannot be listed).
    Every photo is checked for collisions, skipped or not, so a resumed run reports the same."""
    unlistable: list[Failed] = []
    jobs = iter_jobs(config, on_error=lambda folder, e: unlistable.append(
        Failed(folder, f"cannot list folder ({e.strerror or e})")))
    # Videos have guards of their own: a.jpg and a.mp4 write different files (a.png, a.mp4).
    # Several INPUTs can meet anywhere below OUTPUT, as a list's paths can.
    by_key = config.source_kind in ("list", "several")
    guards = {video: (FolderCollisions() if config.source_kind == "folder" else None,
                      ListCollisions() if by_key else None) for video in (False, True)}
    outputs_folders = _OutputFolders(config)
    for job in jobs:
        yield from unlistable
        unlistable.clear()
        video = is_video_name(job.src.name)
        folder_guard, list_guard = guards[video]
        first = folder_guard.check(job.src) if folder_guard else list_guard.check(job) if list_guard else None
        outputs = output_paths(config, job)
        refused = (outputs_folders.holding(job.src) or _frames_collision(config, job)
                   or outputs_folders.leaving(config.outputs, outputs))
        if refused is not None:
            yield Failed(job.src, refused)
        elif first is not None:
            same = os.path.abspath(first) == os.path.abspath(job.src)
            yield Failed(job.src, "listed more than once" if same else f"output name collides with {first}")
        elif not config.options.overwrite and all(path.exists() for path in outputs):
            verdict, warning = index.verdict(job.src, job.rel) if index is not None else (SKIP, None)
            yield (Skipped(job.src, warning) if verdict == SKIP else job if verdict == REDO
                   else Failed(job.src, verdict))
        else:
            yield job
    yield from unlistable
