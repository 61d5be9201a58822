"""Photo files: strict decoding with EXIF orientation, deterministic encoding, atomic writes.

Users point hx at archives of 10^5-10^7 photos, so every function here is written for the
bad file as much as for the good one: a photo that cannot be decoded raises DecodeError
with a one-line reason (the caller adds the file name), and nothing is ever written where
a killed process could leave half a file.
"""
from __future__ import annotations

import errno
import fnmatch
import functools
import io
import numbers
import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, NamedTuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .png_choices import DEFAULT_PNG_COMPRESSION, PNG_COMPRESSIONS

PHOTO_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
TEMP_MARK = ".hx-tmp"

# Pillow decodes only these formats for us. A file's extension does not decide its decoder
# (a PNG named .jpg still reads), but nothing exotic (EPS would start Ghostscript) is tried.
# (The multi-picture JPEGs, MPO, many cameras write come through "JPEG"; frame 0 is the photo.)
_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")

# hx checks every photo against --max-pixels itself, from the header, before decoding.
# Pillow's own guard would otherwise warn at 89 megapixels and refuse at 179 whatever
# --max-pixels says, and with a different message; this turns it off for the process.
Image.MAX_IMAGE_PIXELS = None

# EXIF orientation tag (0x0112) -> the Pillow transpose that shows the photo upright
# (the same table as PIL.ImageOps.exif_transpose).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}

# PNG encoders by --png-compression, measured side by side in benchmarks/png_encode.py (ccp
# photos with soft mattes, 550 x ~830 and x2.3 = ~2 MP, one core of the 2-core development machine;
# ms per image and bytes against "balanced"):
#   fast      RGB/RGBA: fpng (one fixed-Huffman deflate pass, no zlib)    RGBA  2.3 ms  1.3x bytes
#             grey: as balanced (already ~1 ms; no encoder measured was 2x faster at this size)
#   balanced  OpenCV (libpng + zlib) level 1, "up" filter, Z_FILTERED      RGBA 17 ms    1.0x, grey 1.1 ms
#   small     OpenCV level 6 with libpng's adaptive filters               RGBA 114 ms   0.9x, grey 4.7 ms 0.84x
# Every choice gives the same bytes for the same pixels (resume and the Ray engine compare them),
# and every file is a plain 8-bit PNG any decoder reads.
# (The choices' names live in png_choices.py, which the CLI imports without OpenCV.)
# OpenCV before 4.10 has no IMWRITE_PNG_FILTER; there its plain default is the fast choice.
_PNG_FILTER = getattr(cv2, "IMWRITE_PNG_FILTER", None)


def _opencv_params(compression: str) -> list[int]:
    if compression == "small":
        return [cv2.IMWRITE_PNG_COMPRESSION, 6]
    if _PNG_FILTER is None:
        return []
    # One fixed filter is what makes level 1 fast; libpng's adaptive choice per row costs 3x.
    return [cv2.IMWRITE_PNG_COMPRESSION, 1, _PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_FILTERED]


@functools.cache
def _fpng():
    import fpng  # a base dependency; imported on first use, like every encoder's library

    return fpng


class DecodeError(Exception):
    """A photo that cannot be read. str(e) is the reason only; the caller names the file."""


class WriteError(OSError):
    """An output that could not be written (read-only, disk full, a name too long, a file where
    its folder goes). str(e) is one line, "cannot write PATH: reason"; filename is PATH."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.message = f"cannot write {path}: {cause.strerror or cause}"

    def __str__(self) -> str:
        return self.message


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder"))


def regular_file_problem(path: Path) -> str | None:
    """Why `path` is not a regular file one can read to its end ("not a regular file (a named
    pipe)", "broken symlink", ...), or None. Asked of the file system only: a FIFO or a device
    is never opened, since opening a FIFO blocks until a writer comes, and /dev/zero never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if isinstance(e, FileNotFoundError) and os.path.islink(path):
            return "broken symlink"
        return f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in _NOT_REGULAR if test(mode)), "not a file")
    return f"not a regular file ({what})"


def open_image(source: Path | bytes) -> Image.Image:
    """Open the header of a photo (no pixels decoded; Pillow reads only as far as the header
    goes). Raises DecodeError."""
    if isinstance(source, bytes):
        if not source:
            raise DecodeError("zero bytes")
        fp: object = io.BytesIO(source)
    else:
        problem = regular_file_problem(source)
        if problem is not None:
            raise DecodeError(problem)
        fp = source
    try:
        return Image.open(fp, formats=_FORMATS)
    except UnidentifiedImageError:
        if not isinstance(source, bytes) and _is_empty(source):
            raise DecodeError("zero bytes") from None
        raise DecodeError("not an image") from None
    except OSError as e:
        if e.errno is not None:  # the file system, not the file's content
            raise DecodeError(f"cannot read ({e.strerror})") from None
        raise DecodeError(_reason(e)) from None
    except MemoryError:
        raise
    except Exception as e:  # Pillow raises anything from struct.error to SyntaxError on bad headers
        raise DecodeError(_reason(e)) from None


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _reason(e: BaseException) -> str:
    """One line for what went wrong inside Pillow."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, EOFError) or "truncated" in text.lower():
        return "truncated image"
    return f"corrupt image ({text})"


def check_pixels(image: Image.Image, max_pixels: int) -> None:
    """DecodeError if the opened image's header declares more than max_pixels pixels."""
    w, h = image.size
    if w * h > max_pixels:
        raise DecodeError(f"{w}x{h} = {_pixels(w * h)} over --max-pixels {max_pixels}")


def _pixels(n: int) -> str:
    """135 megapixels, 0.3 megapixels, 4 pixels: never a size that rounds to 0."""
    if n >= 10_000_000:
        return f"{n / 1e6:.0f} megapixels"
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n} pixels"


def exif_orientation(image: Image.Image) -> int:
    """EXIF (or XMP) orientation 1..8; 1 when absent or nonsense."""
    try:
        if image.format == "PNG" and "exif" not in image.info:
            # PngImageFile.getexif() decodes the whole image to look for a late eXIf chunk;
            # an early one is already in info, and that is the common place.
            return 1
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except MemoryError:
        raise
    except Exception:  # a broken EXIF block should not cost the photo
        return 1
    return value if value in _UPRIGHT else 1


def _draft_size(image: Image.Image, reduce_to: int) -> tuple[int, int] | None:
    """The size to ask libjpeg for when the longer side may shrink to about reduce_to, or None."""
    w, h = image.size
    longer = max(w, h)
    if image.format not in ("JPEG", "MPO") or longer <= reduce_to:
        return None
    # draft() picks the largest scale that keeps BOTH sides at least the requested size,
    # so ask for the photo's own aspect ratio, not a square.
    return max(1, w * reduce_to // longer), max(1, h * reduce_to // longer)


def _draft(image: Image.Image, reduce_to: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the longer side stays >= reduce_to."""
    size = _draft_size(image, reduce_to)
    if size is not None:
        image.draft("RGB", size)


# --- strict JPEG decoding ---------------------------------------------------------------------
# libjpeg only *warns* about damaged entropy data ("Corrupt JPEG data: premature end of data
# segment") and fills the rest of the photo with grey; Pillow ignores those warnings, so a photo
# damaged in the middle decodes "fine" with a wrong bottom half. simplejpeg (libjpeg-turbo, the
# same library Pillow's wheels carry) raises on them with strict=True, and gives the same pixels
# as Pillow for the same file and scale, a little faster (benchmarks/jpeg_decode.py).
_JPEG_COLOURS = {"RGB": "RGB", "L": "GRAY"}  # Pillow's mode -> simplejpeg's; CMYK stays with Pillow
# What a valid JPEG of w x h pixels can hold beyond its pixels' worth of bytes (EXIF, ICC, XMP, an
# MPO's later pictures); a larger file is read only this far: libjpeg needs the first picture only.
_JPEG_SLACK = 32 << 20


def _jpeg_scale(image: Image.Image, reduce_to: int | None) -> int:
    """1, 2, 4 or 8: the scale Image.draft would pick (so both decoders give the same pixels)."""
    size = _draft_size(image, reduce_to) if reduce_to is not None else None
    if size is None:
        return 1
    ratio = min(image.size[0] // size[0], image.size[1] // size[1])
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


# A few stray bytes before the end-of-image marker are padding some cameras and editors write,
# after the last pixel was decoded; hundreds are what is left when damaged data ran out the
# image's blocks early (a damaged bottom half that libjpeg reports only this way).
_PADDING = re.compile(r"Corrupt JPEG data: (\d+) extraneous bytes before marker 0xd9")
_MAX_PADDING = 64


def _jpeg_problem(message: str) -> str | None:
    """The reason for a libjpeg warning that means lost pixels, or None for a harmless one."""
    if message.startswith("Premature end of JPEG file"):
        return "truncated image"
    padding = _PADDING.match(message)
    if padding is not None and int(padding.group(1)) <= _MAX_PADDING:
        return None
    if message.startswith("Corrupt JPEG data"):
        return f"corrupt JPEG data ({message.split(':', 1)[1].strip()})"
    return None


def _jpeg_warning(message: str) -> str:
    """The reason given for a libjpeg warning that _jpeg_problem lets through. Harmless as far as
    libjpeg can tell, but not always harmless: damage midway can leave nothing but a few stray
    bytes before the end marker, so the photo is processed and named for its owner to look at."""
    padding = _PADDING.match(message)
    if padding is not None:
        return (f"{padding.group(1)} stray bytes before the JPEG end marker: padding, or damage midway "
                f"that libjpeg cannot tell from it")
    return f"JPEG warning ({message.strip()})"


class Photo(NamedTuple):
    """A decoded photo, and what the decoder noticed but let through."""

    rgb: np.ndarray  # [H, W, 3] uint8 RGB, upright (smaller than `size` for a reduced decode)
    size: tuple[int, int]  # the upright photo's (width, height), from its header
    warning: str | None  # a libjpeg warning taken as harmless (stray bytes before the end marker), or None


def _decode_jpeg_strict(image: Image.Image, data: bytes | None, reduce_to: int | None
                        ) -> tuple[np.ndarray | None, str | None]:
    """(pixels, warning) of an opened JPEG: pixels [h, w, 3] uint8 RGB, or None to let Pillow decode
    it (a mode strict decoding does not take, or a harmless warning that it refuses: the warning's
    reason comes back with the None). DecodeError for lost pixels."""
    import simplejpeg

    colour = _JPEG_COLOURS.get(image.mode)
    if colour is None:
        return None, None
    if data is None:
        w, h = image.size
        image.fp.seek(0)
        data = image.fp.read(w * h * 4 + _JPEG_SLACK)  # bounded, whatever the file's size
    scale = _jpeg_scale(image, reduce_to)
    w, h = image.size
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=colour, min_width=-(-w // scale),
                                        min_height=-(-h // scale), strict=True)
    except ValueError as e:
        problem = _jpeg_problem(str(e))
        if problem is not None:
            raise DecodeError(problem) from None
        return None, _jpeg_warning(str(e))
    if colour == "GRAY":
        return cv2.cvtColor(pixels[:, :, 0], cv2.COLOR_GRAY2RGB), None
    return pixels, None


# EXIF orientation -> the same pixel permutation as _UPRIGHT's Pillow transpose, on arrays
_UPRIGHT_ARRAY: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> [H, W, 3] uint8 RGB. Alpha is dropped, not composited."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)  # one copy out of Pillow; read-only view of it
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey (PNG, TIFF): keep the high byte. Pillow's convert("L") clips at 255
        # instead, which turns every 16-bit photo white.
        wide = np.asarray(image)
        if mode == "I":
            wide = np.clip(wide, 0, 65535)
        gray = (wide >> 8).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    if mode == "L":
        return cv2.cvtColor(np.asarray(image), cv2.COLOR_GRAY2RGB)
    try:
        return np.asarray(image.convert("RGB"))  # P, PA, LA, RGBA, CMYK, 1, F, YCbCr, ...
    except ValueError:
        raise DecodeError(f"unsupported colour mode {mode}") from None


def read_photo(path: Path, max_pixels: int = 100_000_000, data: bytes | None = None,
               reduce_to: int | None = None) -> np.ndarray:
    """Decode a photo upright -> [H, W, 3] uint8 RGB (may be read-only; copy before writing in place).

    Orientation from EXIF is applied, so H, W are the size a viewer shows. Grey, palette,
    RGBA (alpha dropped), CMYK, 16-bit and LA photos are converted. The pixel count is checked
    against max_pixels from the header, before any pixel is decoded. A file cut short raises
    DecodeError("truncated image"), a JPEG damaged midway DecodeError("corrupt JPEG data (...)");
    neither is ever padded with grey. Only regular files are opened.

    data: the file's bytes when the caller has already read them (path is then only a name).
    reduce_to: the caller needs only an image whose longer side is about this many pixels;
    JPEGs are then decoded at 1/2, 1/4 or 1/8 scale (longer side stays >= reduce_to), other
    formats at full size. The caller resizes; the result's size is NOT the photo's size
    (photo_size gives that, as does decode_photo).
    """
    return decode_photo(path, max_pixels, data, reduce_to).rgb


def decode_photo(path: Path, max_pixels: int = 100_000_000, data: bytes | None = None,
                 reduce_to: int | None = None) -> Photo:
    """read_photo, plus the photo's upright (width, height) from the same opening of the file and
    the libjpeg warning, if any, that did not stop it (see Photo)."""
    # From a path Pillow reads the header first and the rest as it decodes, so a 4 GB video
    # named .jpg costs one small read, not 4 GB of memory.
    with open_image(data if data is not None else Path(path)) as image:
        check_pixels(image, max_pixels)
        size = _upright_size(image)
        orientation = exif_orientation(image)
        warning = None
        if image.format in ("JPEG", "MPO"):
            pixels, warning = _decode_jpeg_strict(image, data, reduce_to)
            if pixels is not None:
                turn = _UPRIGHT_ARRAY.get(orientation)
                return Photo(np.ascontiguousarray(turn(pixels)) if turn else pixels, size, None)
        if reduce_to is not None:
            _draft(image, reduce_to)
        try:
            image.load()
        except MemoryError:
            raise
        except OSError as e:
            if e.errno is not None:
                raise DecodeError(f"cannot read ({e.strerror})") from None
            raise DecodeError(_reason(e)) from None
        except Exception as e:
            raise DecodeError(_reason(e)) from None
        # After load(): Pillow's TIFF reader turns TIFFs upright itself and drops the tag then.
        return Photo(upright_rgb(image), size, warning)


def read_photo_bytes(path: Path, max_pixels: int = 100_000_000) -> bytes:
    """A photo file's bytes, for decoders that take bytes (nvJPEG): only a regular file, only
    after its header was read and its pixel count checked (DecodeError otherwise), and never more
    than a photo of that size can hold (a 16-bit RGBA PNG stored uncompressed: 8 bytes a pixel)."""
    with open_image(Path(path)) as image:
        check_pixels(image, max_pixels)
        w, h = image.size
        image.fp.seek(0)
        return image.fp.read(w * h * 8 + _JPEG_SLACK)


def read_photo_stream(stream: BinaryIO, max_pixels: int = 100_000_000) -> bytes:
    """A photo file's bytes from a stream that may never end (stdin, a pipe, /dev/zero), read
    only while they can still be a photo: the first bytes must be those of a format hx reads (as
    Pillow tells them apart), and no more is read than read_photo_bytes would read of a photo of
    max_pixels pixels. DecodeError otherwise; the pixel count itself is the decoder's check."""
    head = stream.read(16)  # all Pillow looks at to tell its formats apart
    if not head:
        raise DecodeError("zero bytes")
    Image.init()
    if not any(accept is None or accept(head) for _, accept in (Image.OPEN[name] for name in _FORMATS)):
        raise DecodeError("not an image")  # /dev/zero and text end here, after 16 bytes
    limit = max_pixels * 8 + _JPEG_SLACK
    data = bytearray(head)
    while len(data) <= limit:
        chunk = stream.read(min(1 << 20, limit + 1 - len(data)))
        if not chunk:
            return bytes(data)
        data += chunk
    raise DecodeError(f"over {limit} bytes, more than a photo of --max-pixels {max_pixels} holds")


class PhotoAndView(NamedTuple):
    rgb: np.ndarray  # [H, W, 3] uint8 RGB, upright, full size
    view: np.ndarray  # [h, w, 3] uint8 RGB: the reduced decode (rgb itself when nothing reduces)
    size: tuple[int, int]  # upright (width, height)
    warning: str | None  # as Photo.warning, from either decode


def read_photo_and_view(path: Path, max_pixels: int, reduce_to: int, data: bytes | None = None) -> PhotoAndView:
    """A photo at full size, the same photo as read_photo(..., reduce_to=reduce_to) gives it, and
    its upright (width, height): (rgb [H, W, 3], view [h, w, 3], size, warning), both uint8 RGB.

    For the runs that need the photo's pixels: the model is shown `view`, exactly what a
    matte-only run shows it, so a photo's matte is the same whatever else is written. A JPEG's
    bytes are read once (bounded, after its header) and decoded twice, the second time at the
    reduced scale, which costs about a third of the full decode; other formats are decoded once.
    data: the file's bytes when the caller holds them (path is then only a name).
    """
    with open_image(data if data is not None else Path(path)) as image:
        check_pixels(image, max_pixels)
        reduces = image.format in ("JPEG", "MPO") and _jpeg_scale(image, reduce_to) > 1
        if reduces and data is None:
            w, h = image.size
            image.fp.seek(0)
            data = image.fp.read(w * h * 4 + _JPEG_SLACK)
    full = decode_photo(path, max_pixels, data=data)
    if not reduces:
        return PhotoAndView(full.rgb, full.rgb, full.size, full.warning)
    shown = decode_photo(path, max_pixels, data=data, reduce_to=reduce_to)
    return PhotoAndView(full.rgb, shown.rgb, full.size, full.warning or shown.warning)


def upright_rgb(image: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> [H, W, 3] uint8 RGB, turned upright by its EXIF orientation, converted
    from any mode as read_photo converts a file's (alpha dropped)."""
    method = _UPRIGHT.get(exif_orientation(image))
    return _to_rgb(image.transpose(method) if method is not None else image)


@functools.cache
def _tiff_size_is_upright() -> bool:
    """Whether this Pillow's TIFF reader reports (and loads) TIFFs already upright, as 13.0 does."""
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = 6
    Image.new("L", (2, 1)).save(buf, "TIFF", exif=exif)
    with Image.open(buf) as probe:
        return probe.size == (1, 2)


def photo_size(path: Path, data: bytes | None = None) -> tuple[int, int]:
    """Upright (width, height) of a photo, read from its header without decoding pixels."""
    with open_image(data if data is not None else Path(path)) as image:
        return _upright_size(image)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    w, h = image.size
    if image.format == "TIFF" and _tiff_size_is_upright():
        return w, h
    if exif_orientation(image) in _SWAPS_AXES:
        w, h = h, w
    return w, h


def _check_uint8(image: np.ndarray, shapes: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array ({shapes}), got {getattr(image, 'dtype', type(image))}")


def check_png_compression(compression: str) -> str:
    """ValueError naming --png-compression unless it is one of PNG_COMPRESSIONS."""
    if compression not in PNG_COMPRESSIONS:
        raise ValueError(f"--png-compression {compression!r}: choose {', '.join(PNG_COMPRESSIONS)}")
    return compression


def check_jpeg_quality(quality: int) -> int:
    """ValueError naming --jpeg-quality unless it is a whole number from 1 to 100: OpenCV takes a
    float or a bool to a multi-line overload error, and the Python API passes whatever it is given."""
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 1 <= quality <= 100:
        raise ValueError(f"--jpeg-quality {quality!r}: use a whole number from 1 to 100")
    return int(quality)


def encode_png(image: np.ndarray, compression: str = DEFAULT_PNG_COMPRESSION) -> bytes:
    """[H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA uint8 -> PNG bytes; same input, same bytes.

    compression: "fast" (default), "balanced" or "small" (PNG_COMPRESSIONS; sizes and times above).
    """
    _check_uint8(image, "[H,W], [H,W,3] or [H,W,4]")
    check_png_compression(compression)
    colour = image.ndim == 3 and image.shape[2] in (3, 4)
    if not colour and image.ndim != 2:
        raise ValueError(f"encode_png: expected [H,W], [H,W,3] or [H,W,4], got {list(image.shape)}")
    if colour and compression == "fast":
        return _fpng().from_ndarray(np.ascontiguousarray(image))
    if colour:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", image, _opencv_params(compression))
    if not ok:
        raise ValueError(f"encode_png: OpenCV could not encode a {list(image.shape)} image")
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """[H, W, 3] RGB uint8 -> JPEG bytes (4:2:0, baseline); same input, same bytes."""
    _check_uint8(rgb, "[H,W,3]")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"encode_jpeg: expected [H,W,3] RGB, got {list(rgb.shape)}")
    check_jpeg_quality(quality)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"encode_jpeg: OpenCV could not encode a {list(rgb.shape)} image")
    return buf.tobytes()


# What _temp_name makes: "." + (part of) the final name + "." + 12 hex digits + ".hx-tmp". Only
# such names are ever removed by clean_temporaries: a user's own "notes.hx-tmp" is not ours.
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}" + re.escape(TEMP_MARK), re.DOTALL)


def _temp_name(final: str) -> str:
    # NAME_MAX is 255 bytes on every common file system; keep room for the mark and token. The
    # name's bytes as the file system has them (a name that is not UTF-8 is legal on Linux).
    stem = os.fsdecode(os.fsencode(final)[:200])
    return f".{stem}.{secrets.token_hex(6)}{TEMP_MARK}"


def is_temp_name(name: str) -> bool:
    """Whether `name` is one hx made for a temporary (atomic_write, video writers)."""
    return _TEMP_NAME.fullmatch(name) is not None


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None], replace: bool = True,
                 durable: bool = False, parents: bool = True) -> None:
    """Write `data` to `path` so that `path` is either absent, the old file, or complete.

    data: the bytes, or a function that writes them to the open file (a checkpoint streamed by
    torch.save, a PNG by Pillow), so a large file is never held in memory twice.
    The bytes go to `.<name>.<random>.hx-tmp` in the same folder (same file system, so the
    rename is atomic), then os.replace puts them in place. On any exception the temporary is
    removed and the exception re-raised. replace=False raises FileExistsError instead of
    replacing an existing `path` (atomically, via a hard link, where the file system has them).
    parents=False: `path`'s folder is not made when missing (WriteError instead).

    fsync policy, the one for all of hx: by default no fsync. That protects against a killed
    process, not against power loss, and an fsync per file costs milliseconds, a large share of
    the per-photo budget; everything hx-infer and hx-train prepare write is made again by running
    the same command. durable=True, for what costs hours to make again (training checkpoints and
    metrics, an exported model): the file is fsynced before the rename and its folder after, so
    after a power loss `path` holds the old file or the new one, whole.
    """
    path = Path(path)
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:  # a file where a folder of the path goes
        raise WriteError(path, _file_in_the_way(path.parent) or e) from None
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        temp = path.parent / _temp_name(path.name)
        f = open(temp, "xb")  # "x": never write into, or later delete, someone else's file
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        with f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if replace:
            os.replace(temp, path)
        else:
            _link_no_clobber(temp, path)
    except BaseException as e:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, FileExistsError):
            raise WriteError(path, e) from None
        raise
    if durable:
        fsync_path(path.parent)


def _file_in_the_way(folder: Path) -> NotADirectoryError | None:
    """The error naming the first of `folder` and its parents that is there but is no folder (a
    file, a link to nothing), or None. mkdir says "File exists" for it, which reads as if the
    output itself were there."""
    for place in (*reversed(folder.parents), folder):
        if os.path.lexists(place) and not place.is_dir():
            return NotADirectoryError(errno.ENOTDIR, f"{place} is not a folder")
    return None


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_no_clobber(temp: Path, path: Path) -> None:
    try:
        os.link(temp, path)  # fails with FileExistsError if path appeared meanwhile
    except FileExistsError:
        raise FileExistsError(f"{path}: already exists") from None
    except OSError:  # no hard links here (some network and FAT file systems)
        if os.path.lexists(path):
            raise FileExistsError(f"{path}: already exists") from None
        os.replace(temp, path)
        return
    temp.unlink()


def clean_temporaries(root: Path, min_age_s: float = 0.0, keep_out: tuple[Path, ...] = ()) -> int:
    """Remove the temporaries killed runs left below `root` (files and folders named as hx names
    them: `.<name>.<12 hex>.hx-tmp`); return how many were removed.

    (Folders: a video's PNG frame sequence is written into one and renamed when complete.)
    min_age_s: keep temporaries younger than this, when another hx run may be writing into
    the same folder right now. keep_out: folders never walked into (the run's INPUT, when it
    lies inside OUTPUT: what is there is the user's). Symlinked folders are not followed;
    nothing else is touched.
    """
    removed = 0
    cutoff = time.time() - min_age_s
    fenced = {os.path.realpath(p) for p in keep_out}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in fenced]
        for name in [d for d in dirs if is_temp_name(d)]:
            dirs.remove(name)  # removed whole, not walked into
            if _remove_temporary(os.path.join(folder, name), min_age_s, cutoff, shutil.rmtree):
                removed += 1
        for name in names:
            if is_temp_name(name) and _remove_temporary(os.path.join(folder, name), min_age_s, cutoff, os.unlink):
                removed += 1
    return removed


def _remove_temporary(temp: str, min_age_s: float, cutoff: float, remove: Callable[[str], None]) -> bool:
    try:
        if os.path.islink(temp) or (min_age_s > 0 and os.stat(temp).st_mtime > cutoff):
            return False
        remove(temp)
    except FileNotFoundError:  # its writer finished or cleaned it meanwhile
        return False
    return True


# The first bytes of the files people pipe into a tool by mistake -> what to call them.
# Each is long enough that no list of names starts with it by chance ("BM" alone is BMW_M3.jpg).
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG image"), (b"\x89PNG\r\n\x1a\n", "PNG image"), (b"GIF87a", "GIF image"),
               (b"GIF89a", "GIF image"), (b"II*\x00", "TIFF image"), (b"MM\x00*", "TIFF image"),
               (b"\x1aE\xdf\xa3", "Matroska/WebM video"))
# Bytes no list of names holds: C0 controls other than tab, CR and LF. A name that is not UTF-8
# (Latin-1, say) is still a name, so invalid UTF-8 alone is not binary.
_NOT_TEXT = bytes(set(range(0x20)) - {0x09, 0x0A, 0x0D})


def sniff_media(head: bytes) -> str | None:
    """What binary data starting with `head` is ("JPEG image", "PNG image", ..., "binary data"),
    or None when it may be text (a list of paths). Looks at the first bytes only."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00":  # its reserved fields are zero
        return "BMP image"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return "WebP image" if head[8:12] == b"WEBP" else "AVI video"
    if head[4:8] == b"ftyp":
        return "MP4/MOV/HEIF file"
    if any(byte in _NOT_TEXT for byte in head):
        return "binary data"
    return None


def is_photo_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in PHOTO_EXTENSIONS


def _matches(relative: str, name: str, glob: str) -> bool:
    # Case-insensitive, like the extension check: "*.jpg" finds IMG_1.JPG.
    target = relative if "/" in glob else name
    return fnmatch.fnmatchcase(target.lower(), glob.lower())


def iter_photos(root: Path, glob: str | None = None, include_hidden: bool = False,
                on_error: Callable[[Path, OSError], None] | None = None,
                extensions: frozenset[str] = PHOTO_EXTENSIONS) -> Iterator[Path]:
    """Yield every photo below `root` (by extension, case-insensitive), depth first, sorted.

    The order is that of sorted(paths, key=lambda p: p.parts) and is the same on every run.
    Folders are listed one at a time, so a tree of millions of files is never held in memory.
    Symlinked folders are followed unless they lead back to one of their own ancestors.
    glob: keep only names matching it ("*_0??.jpg"), or relative paths when it contains a
    "/" ("2019/*/*.jpg", where * also crosses folders). Case-insensitive.
    include_hidden: names starting with "." are skipped by default (macOS "._x.jpg" forks).
    on_error: called with a folder that cannot be listed; by default its OSError is raised.
    extensions: the suffixes (lower case, with the dot) to list; hx-infer run adds videos.
    A `root` that is a file is yielded as is. Entries named like a photo that are not regular
    files (FIFOs, devices, broken symlinks) are yielded too: read_photo reports them, unopened.
    """
    root = Path(root)
    if os.path.lexists(root) and not root.is_dir():  # a file, or a FIFO / broken link to report
        yield root
        return
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    yield from _walk(root, "", glob, include_hidden, on_error, ancestors=frozenset(), extensions=extensions)


def _walk(folder: Path, prefix: str, glob: str | None, include_hidden: bool,
          on_error: Callable[[Path, OSError], None] | None, ancestors: frozenset,
          extensions: frozenset[str] = PHOTO_EXTENSIONS) -> Iterator[Path]:
    try:
        st = folder.stat()
        here = (st.st_dev, st.st_ino)
        if here in ancestors:  # a symlink loop
            return
        ancestors = ancestors | {here}
        # Keep (name, is_folder) of what matters only: a camera folder can hold a million
        # files, and a DirEntry costs several times what its name does.
        kept: list[tuple[str, bool]] = []
        with os.scandir(folder) as it:
            for entry in it:
                name = entry.name
                if not include_hidden and name.startswith("."):
                    continue
                try:
                    if entry.is_dir():  # follows symlinks; d_type answers without a stat
                        kept.append((name, True))
                    elif os.path.splitext(name)[1].lower() in extensions:
                        # Regular or not: a FIFO, a device or a broken symlink named like a photo
                        # is yielded too, so that reading it reports it instead of a silent skip.
                        kept.append((name, False))
                except OSError:
                    continue  # vanished or unreadable entry; nothing to yield
    except OSError as e:
        if on_error is None:
            raise
        on_error(folder, e)
        return
    kept.sort()
    for name, is_folder in kept:
        relative = prefix + name
        if is_folder:
            yield from _walk(folder / name, relative + "/", glob, include_hidden, on_error, ancestors, extensions)
        elif glob is None or _matches(relative, name, glob):
            yield folder / name
