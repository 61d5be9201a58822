"""A request's pixel work, run in the server's thread pool: bytes -> model input, model output -> bytes.

The same steps, in the same order, as `hx-infer run`'s photo stages on the CPU (decode, letterbox,
un-letterbox, refine), and the same kinds table (hx_infer.run.kinds: how each output is made and
encoded), so a request's answer is byte for byte the file `hx-infer run --outputs <output>` writes
for that photo with the same options. The backends give a photo the same output whatever else is
in its batch, so how requests happen to be batched changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..io.images import DecodeError, encode_png, open_image
from ..run.kinds import KINDS, PAINTED, NumpyPixels
from ..run.photos import model_input
from ..transforms import Letterbox, refine_matte, to_uint8, unletterbox
from .params import RemoveParams, RequestError

_NAME = Path("request")  # read_photo and photo_size take a name beside the bytes
_FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg"}


@dataclass
class Decoded:
    x: np.ndarray  # [3, S, S] float32 in [-1, 1], letterboxed
    box: Letterbox  # maps the model output back to the photo's upright size
    rgb: np.ndarray | None  # [H, W, 3] uint8, kept when the output or the refinement needs pixels


def decode(body: bytes, params: RemoveParams, size: int, target: str, max_pixels: int) -> Decoded:
    """The image file in `body` -> what the model gets. Raises RequestError: 413 when its header
    declares more than max_pixels (before any pixel is decoded), 415 when it is no image hx
    reads, 400 when it is cut short or corrupt."""
    try:
        with open_image(body) as image:
            width, height = image.size
    except DecodeError as e:
        raise RequestError(*_decode_status(str(e)), f"image: {e}") from None
    if width * height > max_pixels:
        raise RequestError(413, "too_many_pixels", f"image: {width}x{height} = {width * height / 1e6:.1f} "
                                                    f"megapixels, over the server's --max-pixels {max_pixels}")
    keep = target == "alpha" and (params.refine != "none" or KINDS[params.output].needs_photo)
    try:  # a decoder's warning is for run's report only
        x, box, rgb, _ = model_input(_NAME, size, max_pixels, reduced=target == "alpha" and not keep, keep_pixels=keep,
                                     data=body)
    except DecodeError as e:
        raise RequestError(*_decode_status(str(e)), f"image: {e}") from None
    return Decoded(x, box, rgb)


def _decode_status(reason: str) -> tuple[int, str]:
    return (415, "not_image") if reason == "not an image" else (400, "bad_image")


def _encoder(kind: str, fmt: str) -> Callable[[np.ndarray, str], bytes]:
    """(image, png compression) -> bytes. A kind in its own format is encoded as `hx-infer run`
    writes it; a composite may also be asked for as PNG (rembg's bgc=, or format=png)."""
    own = KINDS[kind]
    return own.encode if _FORMAT_OF_SUFFIX[own.photo_suffix] == fmt else encode_png


def encode(item: Decoded, out: np.ndarray, params: RemoveParams, size: int, target: str) -> bytes:
    """out: [C, S, S] float32 in [0, 1], the model's output for this photo -> the answer's bytes."""
    restored = unletterbox(out, item.box)  # [H, W] matte, or [H, W, 3] photo painted on white
    if target == "rgb":
        return _encoder(PAINTED, params.format)(to_uint8(restored), params.png_compression)
    alpha = to_uint8(refine_matte(restored, item.rgb, params.refine, size))
    image = KINDS[params.output].make(NumpyPixels(params.background), item.rgb, alpha)
    return _encoder(params.output, params.format)(image, params.png_compression)
