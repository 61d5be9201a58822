"""`hx_infer.remove`: one call from a photo to its cutout, in the kind the caller holds.

    from PIL import Image
    import hx_infer

    cutout = hx_infer.remove(Image.open("me.jpg"))                     # PIL RGBA
    matte = hx_infer.remove(rgb_array, output="alpha")                  # [H, W] uint8
    jpeg = hx_infer.remove(open("me.jpg", "rb").read(), output="composite", background="#00ff00")

What goes in and what comes back:

    PIL image                 -> PIL image: "RGBA" (rgba), "L" (alpha), "RGB" (composite)
    [H, W, 3] RGB, [H, W, 4] RGBA (its alpha is ignored) or [H, W] grey uint8 array
                              -> array: [H, W, 4], [H, W] or [H, W, 3] uint8
    encoded bytes (JPEG, PNG, WebP, BMP, TIFF)
                              -> bytes: PNG (rgba, alpha; --png-compression), JPEG (composite)

The matte is the one `hx-infer run` writes for the same photo with the same model, backend and
options: bytes go through run's decoder (EXIF orientation; for output="alpha" the reduced JPEG
decode of `run --outputs alpha`), a PIL image is turned upright by its EXIF orientation as run
turns a file, and an array is taken as the upright pixels. One Extractor per (model, backend,
device) is opened on first use and kept for the process, so only the first call pays for loading.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union, overload

import numpy as np

from .io.png_choices import DEFAULT_PNG_COMPRESSION

if TYPE_CHECKING:
    from PIL import Image

    from .compose import Background
    from .extractor import Extractor

Output = Literal["rgba", "alpha", "composite"]
OUTPUTS = ("rgba", "alpha", "composite")
ImageInput = Union["Image.Image", np.ndarray, bytes, bytearray, memoryview]

_EXTRACTORS: dict[tuple[str, str, str], "Extractor"] = {}
_LOCK = threading.Lock()


def extractor_for(model: str | Path = "default", backend: str = "auto", device: str = "auto") -> "Extractor":
    """The process's one Extractor for (model, backend, device), opened on first use."""
    from .extractor import Extractor

    key = (str(model), backend, device)
    with _LOCK:
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = Extractor(model, backend=backend, device=device)
        return _EXTRACTORS[key]


@overload
def remove(image: "Image.Image", *, output: Output = ..., background: str | os.PathLike = ...,
           model: str | Path = ..., backend: str = ..., device: str = ..., refine: str = ...,
           png_compression: str = ..., jpeg_quality: int = ...) -> "Image.Image": ...
@overload
def remove(image: np.ndarray, *, output: Output = ..., background: str | os.PathLike = ...,
           model: str | Path = ..., backend: str = ..., device: str = ..., refine: str = ...,
           png_compression: str = ..., jpeg_quality: int = ...) -> np.ndarray: ...
@overload
def remove(image: bytes | bytearray | memoryview, *, output: Output = ..., background: str | os.PathLike = ...,
           model: str | Path = ..., backend: str = ..., device: str = ..., refine: str = ...,
           png_compression: str = ..., jpeg_quality: int = ...) -> bytes: ...


def remove(image: ImageInput, *, output: Output = "rgba", background: str | os.PathLike = "white",
           model: str | Path = "default", backend: str = "auto", device: str = "auto", refine: str = "none",
           png_compression: str = DEFAULT_PNG_COMPRESSION, jpeg_quality: int = 95):
    """Cut the person out of `image`; see the module docstring for the kinds in and out.

    output: "rgba" (the photo's pixels with the matte as alpha), "alpha" (the matte, 255 =
    person) or "composite" (the person on `background`: white, black, #RRGGBB or an image's path,
    a str or an os.PathLike such as pathlib.Path).
    model, backend, device, refine: as `hx-infer run`'s options. png_compression ("fast",
    "balanced", "small") and jpeg_quality: only for bytes out. Raises ValueError (bad input or
    option), DecodeError (bytes that are not a photo), ModelError / BackendError / ConfigError.
    """
    from .compose import parse_background
    from .io.images import check_jpeg_quality, check_png_compression

    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}: choose rgba, alpha or composite")
    check_png_compression(png_compression)
    check_jpeg_quality(jpeg_quality)
    behind = parse_background(background)  # a bad one fails before any inference
    extractor = extractor_for(model, backend, device)
    rgb, alpha = _matte(extractor, image, output, refine)
    result = _compose(rgb, alpha, output, behind)
    if isinstance(image, np.ndarray):
        return result
    if isinstance(image, (bytes, bytearray, memoryview)):
        file_format = "jpeg" if output == "composite" else "png"
        return encode(result, file_format, png_compression, jpeg_quality)
    from PIL import Image

    return Image.fromarray(result, {"rgba": "RGBA", "alpha": "L", "composite": "RGB"}[output])


def _matte(extractor: "Extractor", image: ImageInput, output: str, refine: str) -> tuple[np.ndarray | None, np.ndarray]:
    """-> (rgb [H, W, 3] uint8, or None when only the matte is needed; matte [H, W] uint8)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_and_matte(extractor, bytes(image), keep_pixels=output != "alpha", refine=refine)
    rgb = as_rgb(image)
    return rgb, extractor.alphas([rgb], refine=refine)[0]


def decode_and_matte(extractor: "Extractor", data: bytes, keep_pixels: bool, refine: str = "none",
                     max_pixels: int = 100_000_000) -> tuple[np.ndarray | None, np.ndarray]:
    """A photo file's bytes -> (its upright pixels or None, its matte), decoded as `hx-infer run`
    decodes a file: reduced JPEG decode when only the matte is wanted and nothing refines it."""
    from .run.photos import model_input

    # The reduced decode when only the matte is wanted and nothing refines it; otherwise the
    # pixels too, with the model shown the matte-only decode, as `hx-infer run` shows it.
    reduced = not keep_pixels and refine == "none"
    x, box, rgb, _ = model_input(Path("<bytes>"), extractor.model.size, max_pixels, reduced=reduced,
                                 keep_pixels=not reduced, data=data)  # a decoder's warning: for run's report only
    return rgb, extractor.mattes([(x, box, rgb)], refine)[0]


def as_rgb(image: "Image.Image | np.ndarray") -> np.ndarray:
    """A PIL image (turned upright by its EXIF orientation) or a uint8 array -> [H, W, 3] uint8 RGB."""
    import cv2

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"remove(): expected a uint8 array, got {image.dtype}")
        _check_not_empty(*image.shape[1::-1])
        if image.ndim == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        if image.ndim == 3 and image.shape[2] == 3:
            return image
        if image.ndim == 3 and image.shape[2] == 4:
            return np.ascontiguousarray(image[..., :3])  # as run drops an RGBA photo's alpha
        raise ValueError(f"remove(): expected an [H, W], [H, W, 3] or [H, W, 4] array, got {list(image.shape)}")
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise ValueError(f"remove(): expected a PIL image, a uint8 array or encoded bytes, got {type(image).__name__}")
    _check_not_empty(*image.size)
    from .io.images import upright_rgb

    return upright_rgb(image)


def _check_not_empty(width: int, height: int) -> None:
    if not width or not height:  # caught here, it is the caller's image, not an internal letterbox error
        raise ValueError(f"remove(): the image is empty ({width}x{height} pixels)")


def cut(data: bytes, *, output: Output = "rgba", file_format: str = "png", background: str = "white",
        model: str | Path = "default", backend: str = "auto", device: str = "auto", refine: str = "none",
        png_compression: str = DEFAULT_PNG_COMPRESSION, jpeg_quality: int = 95,
        max_pixels: int = 100_000_000) -> bytes:
    """One photo file's bytes -> the bytes of its `output` as `file_format` ("png", or "jpeg" for
    a composite): what `hx-infer cut` writes. Raises as remove() does."""
    if output not in OUTPUTS:
        raise ValueError(f"--output {output!r}: choose rgba, alpha or composite")
    if file_format == "jpeg" and output != "composite":
        raise ValueError(f"--output {output}: JPEG has no alpha channel; write a .png")
    from .compose import parse_background
    from .io.images import check_jpeg_quality, check_png_compression

    check_png_compression(png_compression)
    check_jpeg_quality(jpeg_quality)
    behind = parse_background(background)
    extractor = extractor_for(model, backend, device)
    rgb, alpha = decode_and_matte(extractor, data, keep_pixels=output != "alpha", refine=refine,
                                  max_pixels=max_pixels)
    return encode(_compose(rgb, alpha, output, behind), file_format, png_compression, jpeg_quality)


def encode(image: np.ndarray, file_format: str, png_compression: str, jpeg_quality: int) -> bytes:
    """[H, W], [H, W, 3] or [H, W, 4] uint8 -> "png" or "jpeg" ([H, W, 3] only) file bytes."""
    from .io.images import encode_jpeg, encode_png

    return encode_jpeg(image, jpeg_quality) if file_format == "jpeg" else encode_png(image, png_compression)


def _compose(rgb: np.ndarray | None, alpha: np.ndarray, output: str, background: "Background") -> np.ndarray:
    from .compose import composite, rgba_cutout

    if output == "alpha":
        return alpha
    if output == "rgba":
        return rgba_cutout(rgb, alpha)
    return composite(rgb, alpha, background)
