"""The per-photo stages of `hx-infer run` on numpy, and the interface every engine's loop drives.

    decode(job)          worker thread: read the file, letterbox it    -> Decoded | Failed
                         (a decoder's warning rides on the item's job: Job.warning)
    submit(batch)        the loop's thread: the model over a batch     -> (item, output) pairs ready to finish
    flush()              the loop's thread, at the end                 -> the pairs still held back
    finish(item, out)    worker thread: un-letterbox, refine, compose, encode, atomic write -> None | Failed

CpuStages is that interface with the numpy stages; on CUDA, run.device.DeviceStages keeps the
same four methods with the pixel work on the GPU. The Ray engine runs PhotoStages' decode and
finish in its tasks, so a photo's files are the same bytes whichever engine wrote them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Protocol

import numpy as np

from ..backends.base import Backend
from ..io.images import atomic_write, decode_photo, read_photo_and_view
from ..model import ModelDir
from ..transforms import Letterbox, letterbox, refine_matte, to_uint8, unletterbox
from .config import RunConfig
from .kinds import KINDS, PAINTED, NumpyPixels, photo_output_path
from .options import DEFAULT_MAX_PIXELS
from .plan import Failed, Job


class Stages(Protocol):
    """What an engine's loop calls; decode and finish from worker threads, submit and flush from
    its own thread. submit may hold a batch back (to overlap it with the next) and return an
    earlier one's pairs; flush returns whatever is still held."""

    def decode(self, job: Job) -> Any: ...

    def submit(self, batch: list) -> list[tuple[Any, Any]]: ...

    def flush(self) -> list[tuple[Any, Any]]: ...

    def finish(self, item: Any, out: Any) -> Failed | None: ...


@dataclass
class Decoded:
    job: Job
    x: np.ndarray  # [3, S, S] float32 in [-1, 1], letterboxed
    box: Letterbox  # maps the model output back to the photo's upright size
    rgb: np.ndarray | None  # [H, W, 3] uint8, kept only when an output or --refine needs pixels


class MatteInput(NamedTuple):
    x: np.ndarray  # [3, S, S] float32 in [-1, 1], letterboxed
    box: Letterbox
    warning: str | None  # what the decoder let through (io.images.Photo.warning), or None


def matte_input(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                data: bytes | None = None) -> MatteInput:
    """A photo as a matte-only run feeds it to the model: ([3, S, S] float32 in [-1, 1], geometry,
    the decoder's warning).

    A matte-only run never looks at full-resolution pixels: the JPEG decoder scales down
    (1/2, 1/4, 1/8) to about the model size, and the matte's size comes from the header.
    `hx-infer eval` scores its `full` crop through this too, so its figures are those of the
    mattes `hx-infer run --outputs alpha` writes. data: the file's bytes when the caller holds them
    (path is then only a name). Raises DecodeError / OSError.
    """
    photo = decode_photo(path, max_pixels, data=data, reduce_to=size)  # one opening, header first
    return MatteInput(*letterbox(photo.rgb, size, src_size=photo.size), photo.warning)


def compose_outputs(restored: np.ndarray, rgb: np.ndarray | None, config: RunConfig, target: str,
                    model_size: int, pixels: NumpyPixels) -> Iterator[tuple[str, np.ndarray]]:
    """The model's output at the photo's size ([H, W] matte or [H, W, 3] painting, float in
    [0, 1]) -> (kind, uint8 image) for each kind the run writes. Photos and video frames alike."""
    if target == "rgb":
        yield PAINTED, to_uint8(restored)
        return
    alpha = to_uint8(refine_matte(restored, rgb, config.options.refine, model_size))
    for kind in config.outputs:
        yield kind, KINDS[kind].make(pixels, rgb, alpha)


class ModelInput(NamedTuple):
    x: np.ndarray  # [3, S, S] float32 in [-1, 1], letterboxed
    box: Letterbox
    rgb: np.ndarray | None  # [H, W, 3] uint8 at full size when keep_pixels, else None
    warning: str | None


def model_input(path: Path, size: int, max_pixels: int, reduced: bool, keep_pixels: bool,
                data: bytes | None = None) -> ModelInput:
    """A photo file as every photo path feeds it to the model (run's stages, serve, the Python API),
    so a photo's matte is the same whichever of them made it. reduced: a matte alone, from the
    reduced JPEG decode (matte_input). keep_pixels: the pixels at full size too, with the model
    shown what a matte-only run shows it. Neither: a painting model's input, full size in and out.
    data: the file's bytes when the caller holds them (path is then only a name). Raises
    DecodeError / OSError."""
    if reduced:
        x, box, warning = matte_input(path, size, max_pixels, data=data)
        return ModelInput(x, box, None, warning)
    if keep_pixels:
        rgb, view, photo_size, warning = read_photo_and_view(path, max_pixels, size, data=data)
        return ModelInput(*letterbox(view, size, src_size=photo_size), rgb, warning)
    photo = decode_photo(path, max_pixels, data=data)
    return ModelInput(*letterbox(photo.rgb, size), None, photo.warning)


@dataclass(frozen=True)
class PhotoStages:
    """decode and finish on numpy, fixed for the run (no backend: Ray ships this to its tasks)."""

    config: RunConfig
    size: int  # the model's square input
    target: str  # "alpha" or "rgb"
    keep_pixels: bool
    reduced_decode: bool

    @classmethod
    def for_run(cls, config: RunConfig, model: ModelDir) -> "PhotoStages":
        return cls(config, model.size, model.target, keep_pixels=config.needs_photo_pixels(model.target),
                   reduced_decode=config.reduced_decode(model.target))

    def decode(self, job: Job) -> Decoded | Failed:
        try:
            x, box, rgb, warning = model_input(job.src, self.size, self.config.options.max_pixels,
                                               self.reduced_decode, self.keep_pixels)
            return Decoded(replace(job, warning=warning), x, box, rgb)
        except Exception as e:  # noqa: BLE001 - see Failed.because
            return Failed.because(job.src, e)

    def finish(self, item: Decoded, out: np.ndarray) -> Failed | None:
        """out: [C, S, S] float32 in [0, 1] for this photo -> its outputs, written atomically."""
        config = self.config
        try:
            restored = unletterbox(out, item.box)  # [H, W] matte or [H, W, 3] painted photo
            pixels = NumpyPixels(config.background)
            for kind, image in compose_outputs(restored, item.rgb, config, self.target, self.size, pixels):
                atomic_write(photo_output_path(config.output_dir, kind, item.job.rel), KINDS[kind].encode(image, config.options.png_compression))
            return None
        except Exception as e:  # noqa: BLE001 - see Failed.because
            return Failed.because(item.job.src, e)


class CpuStages:
    """The Stages of a local run whose pixel work is numpy: PhotoStages around backend.infer."""

    def __init__(self, config: RunConfig, backend: Backend, model: ModelDir):
        self.stages = PhotoStages.for_run(config, model)
        self.backend = backend

    def decode(self, job: Job) -> Decoded | Failed:
        return self.stages.decode(job)

    def submit(self, batch: list[Decoded]) -> list[tuple[Decoded, np.ndarray]]:
        x = np.stack([item.x for item in batch])  # [N, 3, S, S] float32
        out = np.asarray(self.backend.infer(x))  # [N, C, S, S] float32 in [0, 1]
        return list(zip(batch, out))

    def flush(self) -> list[tuple[Decoded, np.ndarray]]:
        return []

    def finish(self, item: Decoded, out: np.ndarray) -> Failed | None:
        return self.stages.finish(item, out)
