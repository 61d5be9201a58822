"""The output kinds of `hx-infer run`: one row each, read by the photo stages, the device (CUDA)
stages and the video writer alike.

A row says where a kind's file goes and how it is made:
    photo_suffix   OUTPUT/<kind>/<rel>/<stem><suffix> for a photo
    video          VideoOptions -> the name of its io.video encoding (which carries the suffix)
    needs_photo    whether it needs the photo's full-resolution pixels (else the matte alone)
    needs_background  whether it is drawn on --background (a video background is then read along)
    make           (pixels, rgb, alpha) -> the image to encode: [H, W] / [H, W, 4] / [H, W, 3] uint8
    encode         (that image, --png-compression) -> the photo file's bytes

`make` is given a `Pixels`: compose.py's numpy functions on the CPU, torch ones on the device,
so a kind is composed by the same rule on both. Adding a kind is one row here (plus a Pixels
method when it needs a new operation, on both Pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..compose import Background, composite, rgba_cutout
from ..io.images import encode_jpeg, encode_png
from ..io.video import ENCODINGS, Encoding
from .options import VideoOptions


class Pixels(Protocol):
    """The operations kinds are made of, on one kind of array (numpy or torch), background bound."""

    def rgba(self, rgb: Any, alpha: Any) -> Any:
        """rgb [H, W, 3] uint8 + alpha [H, W] uint8 -> [H, W, 4] uint8."""

    def composite(self, rgb: Any, alpha: Any) -> Any:
        """rgb over the run's background by alpha -> [H, W, 3] uint8."""


@dataclass(frozen=True)
class NumpyPixels:
    """Pixels on numpy arrays (hx_infer.compose), for one background."""

    background: Background

    def rgba(self, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return rgba_cutout(rgb, alpha)

    def composite(self, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return composite(rgb, alpha, self.background)


@dataclass(frozen=True)
class OutputKind:
    name: str
    photo_suffix: str
    video: Callable[[VideoOptions], str]
    needs_photo: bool
    needs_background: bool
    make: Callable[[Pixels, Any, Any], Any]
    encode: Callable[[np.ndarray, str], bytes]


KINDS: dict[str, OutputKind] = {kind.name: kind for kind in (
    OutputKind("alpha", ".png", lambda options: "ffv1-matte" if options.lossless else "h264-matte",
               needs_photo=False, needs_background=False, make=lambda pixels, rgb, alpha: alpha, encode=encode_png),
    OutputKind("rgba", ".png", lambda options: options.rgba,
               needs_photo=True, needs_background=False, make=lambda pixels, rgb, alpha: pixels.rgba(rgb, alpha),
               encode=encode_png),
    OutputKind("composite", ".jpg", lambda options: "ffv1" if options.lossless else "h264",
               needs_photo=True, needs_background=True, make=lambda pixels, rgb, alpha: pixels.composite(rgb, alpha),
               encode=lambda image, png_compression: encode_jpeg(image)),
)}

# A model with target "rgb" paints the person on white: its output is this kind's image as it
# stands (there is no matte to cut out with or to put on another background).
PAINTED = "composite"


def made_by(target: str, outputs: tuple[str, ...]) -> tuple[str, ...]:
    """The kinds a model of `target` writes when asked for `outputs` (checked by the run config)."""
    return (PAINTED,) if target == "rgb" else outputs


def photo_output_path(output_dir: Path, kind: str, rel: Path) -> Path:
    """OUTPUT/<kind>/<rel's folder>/<stem><suffix>: where a photo's output of `kind` goes."""
    return output_dir / kind / rel.parent / (rel.stem + KINDS[kind].photo_suffix)


def video_encoding(kind: str, options: VideoOptions) -> Encoding:
    """The io.video Encoding a video's output of `kind` is written with."""
    return ENCODINGS[KINDS[kind].video(options)]


def video_output_path(output_dir: Path, kind: str, rel: Path, options: VideoOptions) -> Path:
    """Where a video's output of `kind` goes (a folder for PNG frames)."""
    return output_dir / kind / rel.parent / (rel.stem + video_encoding(kind, options).suffix)
