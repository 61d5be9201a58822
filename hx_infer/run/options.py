"""The options of `hx-infer run` as the user gives them, each with its default, in one place.

The CLI builds a RunOptions from its flags, `Extractor.run` from its keywords; `run.config`
checks them once against the inputs and the model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..io.png_choices import DEFAULT_PNG_COMPRESSION
from ..progress import DEFAULT_LOG_EVERY_S

DEFAULT_MAX_PIXELS = 100_000_000  # a 10,000 x 10,000 photo; larger ones are refused from the header
REFINES = ("none", "guided")
RGBA_FORMATS = ("prores", "vp9", "png")


@dataclass(frozen=True)
class VideoOptions:
    """How videos are written. temporal: strength of the matte's moving average, 0 = off (see
    hx_infer.temporal). lossless: mattes and composites as FFV1 in .mkv instead of H.264 in
    .mp4. rgba: "prores" (.mov), "vp9" (.webm) or "png" (a folder of frames)."""

    temporal: float = 0.0
    lossless: bool = False
    rgba: str = "prores"

    def __post_init__(self) -> None:
        if not 0.0 <= self.temporal < 1.0:
            raise ValueError(f"--temporal-strength {self.temporal}: use a value in [0, 1)")
        if self.rgba not in RGBA_FORMATS:
            raise ValueError(f"--video-codec {self.rgba!r}: choose from prores, vp9 (or --frames png)")


@dataclass(frozen=True)
class RunOptions:
    """outputs: kinds to write ('alpha,rgba' or a sequence). background: for composites: white,
    black, #RRGGBB, an image or a video file. refine: none or guided. overwrite: redo photos
    whose outputs exist (else they are skipped: resume). workers: decode and write threads
    (None: one per core). max_pixels: larger photos are refused from their header. glob: only
    inputs whose path below INPUT matches. report: where the JSON report goes (None:
    OUTPUT/hx-report.json). progress: a progress bar on a terminal, elsewhere a line every
    log_every seconds. png_compression: fast, balanced or small (hx_infer.io.images). video: how
    videos are written."""

    outputs: str | Iterable[str] = ("rgba",)
    background: str = "white"
    refine: str = "none"
    overwrite: bool = False
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    glob: str | None = None
    report: Path | None = None
    progress: bool = True
    log_every: float = DEFAULT_LOG_EVERY_S
    png_compression: str = DEFAULT_PNG_COMPRESSION
    video: VideoOptions = field(default_factory=VideoOptions)

    def __post_init__(self) -> None:
        # A picture's path may come as a pathlib.Path from Python; everything downstream parses text.
        if isinstance(self.background, os.PathLike):
            object.__setattr__(self, "background", os.fspath(self.background))
        if not isinstance(self.background, str):
            raise ValueError(f"background={self.background!r}: give white, black, #RRGGBB, or the path "
                             f"of a picture or a video")
