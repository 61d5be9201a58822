"""`hx-train prepare`: turn a labelled photo collection into the train/val folders training reads.

Source layouts (SRC is only ever read):

  folders      SRC/images/<stem>.<photo ext> + SRC/masks/<stem>.<photo ext>, matched by stem.
               Mask: any non-zero pixel is person (the alpha channel instead, when the mask has a
               partly transparent one; the palette index for palette images).
  supervisely  A Supervisely dataset (SRC/img/<name> + SRC/ann/<name>.json) or a project of several
               (SRC/<dataset>/{img,ann}; meta.json and other files are ignored). Every polygon and
               bitmap object counts as person whatever its class title: the Supervisely Person set's
               only classes are "person_poly" and "person_bmp", and our masks have one foreground
               class. Other geometries (rectangles, points, ...) cannot make a mask and are ignored.
  ab           pix2pix "AB" images: photo A (left half) and target B (right half) side by side, in
               SRC and/or its sub-folders one level down (pix2pix's train/ val/ test/). See
               `ab_target_mask` for how B becomes a mask.
  coco         A COCO instances JSON (SRC is the .json file, or a folder holding exactly one .json
               beside images/) and its image folder: `file_name`s are looked up under images/ beside
               the JSON, then beside the JSON itself. Every annotation of the chosen category
               (`--category`, default "person") counts: polygons, RLE (uncompressed and compressed)
               and crowd regions alike (hx_train.coco).

Several sources go into one prepared set: each source's keys get its name as a prefix
("ccp_0001", "pennfudan_FudanPed00001"; a name holds no "_", so the first one ends the prefix:
`source_names`), the train/val split is drawn per source, and
DST/sources.json records each source's path, format and counts.

Output (DST/train and DST/val are built in a staging folder inside DST and renamed into place at
the end, so an interrupted run leaves no half-filled split behind; one that a kill -9 left is
removed by the next run, `remove_stale_staging`):

  DST/{train,val}/images/<key>.<jpg|jpeg|png>   JPEG/PNG photos that need no change are copied byte
                                                for byte; anything else (EXIF-rotated, CMYK, WebP,
                                                an AB half, ...) is written as RGB PNG. Photos are
                                                decoded by hx-infer's reader (read_photo), so the
                                                pixels are those fit and hx-infer see. With
                                                --max-side, larger photos are shrunk to it and
                                                written as JPEG (`shrink`)
  DST/{train,val}/masks/<key>.png               single channel, 0 = background, 255 = person

<key> is the source stem, made unique where needed (`unique_keys`), behind the source's prefix
when there are several sources.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zlib
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
from PIL import Image, ImageOps

from hx_infer.io.images import (PHOTO_EXTENSIONS, DecodeError, atomic_write, encode_jpeg, exif_orientation,
                               open_image, read_photo)
from hx_infer.run.options import DEFAULT_MAX_PIXELS

FORMATS = ("folders", "supervisely", "ab", "coco")
VAL_FRACTION = 0.1  # share of each source held out for validation
# ... but at least this many val photos per source where the source has three times as many: a
# mean over 17 photos (10 % of 170) moves by several points with one photo.
MIN_VAL = 30
SOURCES_JSON = "sources.json"
STAGING_PREFIX = ".prepare-"  # DST/.prepare-XXXXXXXX: one run's staging folder (tempfile.mkdtemp)
# What mkdtemp makes of the prefix: 8 characters of its alphabet. Only such names are removed
# as a killed run's staging folder; ".prepare-notes" is the user's.
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}")
PHOTO_SUFFIXES = PHOTO_EXTENSIONS  # what hx-infer reads as a photo
MIN_SIDE = 16  # px; smaller photos cannot survive the crop/resize augmentation
NEAR_WHITE = 250  # a person-on-white pixel with every channel >= this is background
AB_SAMPLE = 8  # images `detect_format` decodes to recognise an AB folder
PHOTO_PNG_LEVEL = 3  # zlib level for photos written as PNG: level 6 is 3x slower for 7 % less
MASK_PNG_LEVEL = 6  # masks are tiny and compress well; the slower level costs ~5 ms each
# --max-side re-encodes shrunk photos as JPEG: the sources are JPEGs, and a PNG of a photo is
# 5-10x larger, which defeats a copy made to be small. 92 leaves no visible blocking; 80 is ~40 %
# smaller (the general set at 384 px: 23 MiB at 80, 36 at 92).
JPEG_QUALITY = 92

# What Pillow and zlib raise on files that are not (complete) images. Pillow does not set
# LOAD_TRUNCATED_IMAGES here, so a truncated file raises OSError instead of loading grey.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error,
                  Image.DecompressionBombError)


class PrepareError(Exception):
    """Nothing can be prepared: SRC, DST or an option is unusable. The message is one line."""


@dataclass
class Skipped:
    source: str  # the photo (or AB file) as found under SRC
    reason: str  # "unreadable image", "no mask", "empty mask", "mask unreadable", "unusable size WxH"


@dataclass
class PrepareSummary:
    fmt: str  # the format of the only source, or "+"-joined formats of several
    train: int
    val: int
    skipped: list[Skipped] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)  # what DST/sources.json holds, per source


class _Skip(Exception):
    """One pair cannot be used; the message is the `Skipped.reason`."""


@dataclass(frozen=True)
class _Pair:
    key: str  # output stem, unique within the run
    photo: Path
    label: object  # mask file (folders), annotation JSON (supervisely), None (ab), coco.Objects (coco)
    fmt: str = ""  # the loader (_LOADERS) of this pair's source
    source: int = 0  # index of the pair's source in the run


@dataclass
class _Sample:
    photo: np.ndarray  # [H, W, 3] uint8 RGB, upright, as hx-infer decodes it
    original: bytes | None  # the file's bytes when they can be copied unchanged
    suffix: str  # output suffix: ".jpg"/".jpeg"/".png" for copies, ".png" otherwise
    mask: np.ndarray  # [H, W] uint8 0/255, same size as photo


# ----------------------------------------------------------------------------------- listing


def _photo_files(folder: Path) -> list[Path]:
    """Photo files directly in `folder`, by extension (case-insensitive), sorted by name.

    Hidden files are left out: macOS copies leave "._name.jpg" resource forks beside each photo.
    """
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.is_file()
                     and os.path.splitext(e.name)[1].lower() in PHOTO_SUFFIXES]
    except OSError as e:
        raise PrepareError(f"{folder}: cannot list ({e.strerror or e})") from None
    return [folder / name for name in sorted(names)]


def _subfolders(folder: Path) -> list[Path]:
    """Sub-folders of `folder`, hidden ones left out, sorted by name."""
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    except OSError as e:
        raise PrepareError(f"{folder}: cannot list ({e.strerror or e})") from None
    return [folder / name for name in sorted(names)]


def unique_keys(candidates: list[tuple[str, str]], separator: str = "_") -> list[str]:
    """Output stems for (group, stem) candidates, in order; unique even on case-insensitive disks.

    A stem that occurs more than once gets its group (the Supervisely dataset or AB sub-folder) as
    a prefix, "ds2_0001"; a counter is added after `separator` if that still collides. Callers
    pass candidates in sorted order, so the keys do not depend on the order the filesystem lists
    files in.
    """
    counts = Counter(stem.lower() for _, stem in candidates)
    seen: set[str] = set()
    keys = []
    for group, stem in candidates:
        base = f"{group}_{stem}" if group and counts[stem.lower()] > 1 else stem
        key, n = base, 1
        while key.lower() in seen:
            n += 1
            key = f"{base}{separator}{n}"
        seen.add(key.lower())
        keys.append(key)
    return keys


def _list_folders(src: Path) -> tuple[list[_Pair], list[Skipped]]:
    photos = _photo_files(src / "images")
    masks: dict[str, list[Path]] = {}
    for path in _photo_files(src / "masks"):
        masks.setdefault(path.stem, []).append(path)
    photo_stems = Counter(p.stem for p in photos)
    pairs, skipped = [], []
    for photo in photos:
        found = masks.get(photo.stem, [])
        # Two photos or two masks with one stem: which belongs to which is a guess, and the same
        # picture in two formats would land in train and val at once.
        if photo_stems[photo.stem] > 1:
            skipped.append(Skipped(str(photo), f"several photos named {photo.stem}.*"))
        elif len(found) > 1:
            skipped.append(Skipped(str(photo), f"several masks named {photo.stem}.*"))
        elif not found:
            skipped.append(Skipped(str(photo), "no mask"))
        else:
            pairs.append(_Pair(photo.stem, photo, found[0]))
    return pairs, skipped


def _supervisely_datasets(src: Path) -> list[tuple[str, Path]]:
    """(name, folder) of each dataset: SRC itself, or its sub-folders that hold img/ and ann/."""
    if (src / "img").is_dir() and (src / "ann").is_dir():
        return [("", src)]
    return [(d.name, d) for d in _subfolders(src) if (d / "img").is_dir() and (d / "ann").is_dir()]


def _list_supervisely(src: Path) -> tuple[list[_Pair], list[Skipped]]:
    datasets = _supervisely_datasets(src)
    if not datasets:
        raise PrepareError(f"{src}: no Supervisely dataset (a folder with img/ and ann/) found")
    found, skipped = [], []
    for name, folder in datasets:
        for photo in _photo_files(folder / "img"):
            # Supervisely names annotations after the full image name: img/a.png -> ann/a.png.json.
            ann = folder / "ann" / f"{photo.name}.json"
            if not ann.is_file():
                ann = folder / "ann" / f"{photo.stem}.json"
            if ann.is_file():
                found.append((name, photo, ann))
            else:
                skipped.append(Skipped(str(photo), "no mask"))
    keys = unique_keys([(name, photo.stem) for name, photo, _ in found])
    return [_Pair(key, photo, ann) for key, (_, photo, ann) in zip(keys, found)], skipped


def _ab_files(src: Path) -> list[tuple[str, Path]]:
    """(group, file) for photos in SRC and its sub-folders one level down, sorted."""
    files = [("", p) for p in _photo_files(src)]
    for sub in _subfolders(src):
        files += [(sub.name, p) for p in _photo_files(sub)]
    return files


def _list_ab(src: Path) -> tuple[list[_Pair], list[Skipped]]:
    files = _ab_files(src)
    keys = unique_keys([(group, path.stem) for group, path in files])
    return [_Pair(key, path, None) for key, (_, path) in zip(keys, files)], []


def _list_coco(src: Path, category: str = "person") -> tuple[list[_Pair], list[Skipped]]:
    from . import coco

    try:
        images, missing = coco.list_images(src, category)
    except coco.CocoError as e:
        raise PrepareError(str(e)) from None
    keys = unique_keys([("", photo.stem) for photo, _ in images])
    return ([_Pair(key, photo, objects) for key, (photo, objects) in zip(keys, images)],
            [Skipped(str(path), reason) for path, reason in missing])


_LISTERS = {"folders": _list_folders, "supervisely": _list_supervisely, "ab": _list_ab, "coco": _list_coco}


# ----------------------------------------------------------------------------------- reading


def _decode_photo(path: Path, data: bytes) -> np.ndarray:
    """A photo's pixels exactly as hx-infer and hx-train fit decode them (hx_infer.io.images:
    EXIF orientation, 16-bit keeps its high byte, strict about damaged files), so what is
    prepared is what training and inference see. [H, W, 3] uint8 RGB."""
    try:
        return read_photo(path, DEFAULT_MAX_PIXELS, data=data)
    except DecodeError:
        raise _Skip("unreadable image") from None


def _size(photo: np.ndarray) -> tuple[int, int]:
    return photo.shape[1], photo.shape[0]


def _decode_label(data: bytes) -> Image.Image:
    """Fully decode a mask file, turned upright by EXIF as its photo is, its mode kept: a label's
    palette indices, alpha and 16-bit values mean something (_person). _Skip("mask unreadable")
    on anything that is not a complete image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decode every pixel now: a truncated file fails here, not in training
            return im.copy() if exif_orientation(im) == 1 else ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        raise _Skip("mask unreadable") from None


def _check_size(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise _Skip(f"unusable size {width}x{height}")


def _read_photo(path: Path) -> tuple[np.ndarray, bytes | None, str]:
    """-> (RGB photo, its bytes if they can be copied as they are, output suffix)."""
    try:
        data = path.read_bytes()
    except OSError:
        raise _Skip("unreadable image") from None
    try:
        with open_image(data) as header:
            fmt, mode, orientation = header.format, header.mode, exif_orientation(header)
            width, height = header.size
    except DecodeError:
        raise _Skip("unreadable image") from None
    if width * height > DEFAULT_MAX_PIXELS:  # hx-train fit and hx-infer would refuse it
        raise _Skip(f"unusable size {width}x{height} (over {DEFAULT_MAX_PIXELS // 10**6} megapixels)")
    photo = _decode_photo(path, data)
    _check_size(*_size(photo))
    suffix = path.suffix.lower()
    copyable = mode == "RGB" and orientation == 1 and (
        (fmt == "JPEG" and suffix in (".jpg", ".jpeg")) or (fmt == "PNG" and suffix == ".png"))
    if copyable:
        return photo, data, suffix
    return photo, None, ".png"


def _person(im: Image.Image) -> np.ndarray:
    """Mask image -> [H, W] bool: non-zero is person.

    The alpha channel decides when there is a partly transparent one (a cutout saved as mask);
    palette images are judged by index, so index 0 is background whatever its colour.
    """
    if im.mode == "P" and "transparency" not in im.info:
        return np.asarray(im) != 0
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        if (rgba[..., 3] < 255).any():
            return rgba[..., 3] != 0
        return rgba[..., :3].any(axis=2)
    if im.mode not in ("1", "L") and not im.mode.startswith("I"):
        return np.asarray(im.convert("RGB")).any(axis=2)
    return np.asarray(im) != 0


def _fit(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] bool -> [H, W] uint8 0/255 for size (W, H); nearest neighbour keeps it binary."""
    out = mask.astype(np.uint8) * 255
    if out.shape != (size[1], size[0]):
        out = cv2.resize(out, size, interpolation=cv2.INTER_NEAREST)
    return out


def _load_folders(pair: _Pair) -> _Sample:
    photo, original, suffix = _read_photo(pair.photo)
    try:
        data = pair.label.read_bytes()
    except OSError:
        raise _Skip("mask unreadable") from None
    mask_im = _decode_label(data)
    return _Sample(photo, original, suffix, _fit(_person(mask_im), _size(photo)))


def supervisely_mask(ann: dict, size: tuple[int, int]) -> np.ndarray:
    """Supervisely annotation -> [H, W] bool person mask; H, W from ann["size"], else size (W, H).

    polygon: points.exterior [[x, y], ...] filled, each of points.interior cut out again, both with
             cv2.fillPoly as Supervisely draws them (the outline pixels belong to the shape).
    bitmap:  bitmap.data = base64(zlib(PNG)); its alpha channel (or its only channel) non-zero is
             the shape, placed with its top-left pixel at bitmap.origin [x, y], clipped to the image.
    Objects are united: the hole of one person can be covered by another.
    Raises KeyError/TypeError/ValueError/zlib.error/OSError on a malformed annotation.
    """
    height, width = (int(ann["size"]["height"]), int(ann["size"]["width"])) if "size" in ann \
        else (size[1], size[0])
    if not 0 < height * width <= 1 << 28:  # a corrupt size must not allocate gigabytes
        raise ValueError(f"annotation size {width}x{height}")
    mask = np.zeros((height, width), np.uint8)
    for obj in ann.get("objects", []):
        kind = obj.get("geometryType")
        if kind == "polygon":
            shape = np.zeros_like(mask)
            exterior = np.round(np.asarray(obj["points"]["exterior"], np.float64)).astype(np.int32)
            if len(exterior) == 0:
                continue
            cv2.fillPoly(shape, [exterior.reshape(-1, 2)], 1)
            holes = [np.round(np.asarray(h, np.float64)).astype(np.int32).reshape(-1, 2)
                     for h in obj["points"].get("interior", []) if len(h)]
            if holes:
                cv2.fillPoly(shape, holes, 0)
            mask |= shape
        elif kind == "bitmap":
            png = zlib.decompress(base64.b64decode(obj["bitmap"]["data"], validate=True))
            with Image.open(io.BytesIO(png)) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    part = np.asarray(im.convert("RGBA"))[..., 3] != 0
                else:
                    part = np.asarray(im.convert("L")) != 0
            x, y = (int(v) for v in obj["bitmap"]["origin"])
            # Clip the bitmap's rectangle to the canvas (origins may be negative or hang over).
            top, left = max(y, 0), max(x, 0)
            bottom, right = min(y + part.shape[0], height), min(x + part.shape[1], width)
            if bottom > top and right > left:
                mask[top:bottom, left:right] |= part[top - y:bottom - y, left - x:right - x]
    return mask.astype(bool)


def _load_supervisely(pair: _Pair) -> _Sample:
    photo, original, suffix = _read_photo(pair.photo)
    try:
        ann = json.loads(pair.label.read_bytes())
        person = supervisely_mask(ann, _size(photo))
    except (*_DECODE_ERRORS, KeyError, TypeError, IndexError, AttributeError, binascii.Error):
        raise _Skip("mask unreadable") from None
    return _Sample(photo, original, suffix, _fit(person, _size(photo)))


def _border(values: np.ndarray) -> np.ndarray:
    return np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])


def _looks_like_mask(b: np.ndarray) -> bool:
    """B [H, W, 3] uint8 is a grey mask: channels agree, nearly all pixels near 0 or 255 (JPEG
    leaves a little grey at edges), and the background (most of the border) is dark."""
    bright, dark = b.max(axis=2), b.min(axis=2)
    grey = np.mean(bright.astype(np.int16) - dark <= 24)
    binary = np.mean((bright <= 40) | (bright >= 215))
    return grey >= 0.99 and binary >= 0.97 and np.mean(_border(bright) >= 215) < 0.5


def _looks_like_on_white(b: np.ndarray) -> bool:
    """B [H, W, 3] uint8 is a person on white: at least half of its border is near-white."""
    return np.mean(_border(b.min(axis=2)) >= NEAR_WHITE) >= 0.5


def ab_target_mask(b: np.ndarray) -> np.ndarray:
    """Right half B [H, W, 3] uint8 RGB -> [H, W] bool person.

    A grey, nearly binary B with a mostly dark border is a mask: person where it is brighter
    than 127 (not "non-zero": AB files are usually JPEG, whose ringing leaves faint non-zero
    halos around the person). Anything else is the original project's "person on white": person
    wherever any channel is below NEAR_WHITE (250).
    """
    if _looks_like_mask(b):
        return b.max(axis=2) > 127
    return b.min(axis=2) < NEAR_WHITE


def _load_ab(pair: _Pair) -> _Sample:
    try:
        data = pair.photo.read_bytes()
    except OSError:
        raise _Skip("unreadable image") from None
    ab = _decode_photo(pair.photo, data)
    height, width = ab.shape[:2]
    if width % 2:
        raise _Skip(f"odd width {width}: not a side-by-side A|B pair")
    _check_size(width // 2, height)
    half = width // 2
    photo = np.ascontiguousarray(ab[:, :half])
    return _Sample(photo, None, ".png", _fit(ab_target_mask(ab[:, half:]), _size(photo)))


def _load_coco(pair: _Pair) -> _Sample:
    from . import coco

    photo, original, suffix = _read_photo(pair.photo)
    try:
        person = coco.objects_mask(pair.label, _size(photo))
    except coco.CocoError as e:
        raise _Skip(f"mask unreadable ({e})") from None
    return _Sample(photo, original, suffix, _fit(person, _size(photo)))


_LOADERS = {"folders": _load_folders, "supervisely": _load_supervisely, "ab": _load_ab, "coco": _load_coco}


# ----------------------------------------------------------------------------------- detection


def _is_ab_folder(src: Path) -> bool:
    """At least 3/4 of the first AB_SAMPLE readable images have an even width and a B half that
    looks like a target (a mask or a person on white). Ordinary photos fail the B test; the
    3/4 lets a stray odd file, which `prepare` then skips, not hide the layout."""
    checked = passed = 0
    for _, path in _ab_files(src)[:4 * AB_SAMPLE]:  # bounded, even in a folder of broken files
        if checked == AB_SAMPLE:
            break
        try:
            ab = _decode_photo(path, path.read_bytes())
        except (_Skip, OSError):
            continue
        checked += 1
        height, width = ab.shape[:2]
        if width % 2 or min(width // 2, height) < MIN_SIDE:
            continue
        b = ab[:, width // 2:]
        passed += _looks_like_mask(b) or _looks_like_on_white(b)
    return checked > 0 and passed * 4 >= checked * 3


def detect_format(src: Path) -> str:
    """Which layout SRC holds: "folders" | "supervisely" | "ab".

    images/ + masks/ -> folders; img/ + ann/ in SRC or in a sub-folder -> supervisely; otherwise
    images (in SRC or one level down) whose right half looks like a mask or a person on white -> ab.
    """
    src = Path(src)
    if src.is_file() and src.suffix.lower() == ".json":
        return "coco"
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder")
    if (src / "images").is_dir() and (src / "masks").is_dir():
        return "folders"
    if (src / "images").is_dir() and len(list(src.glob("*.json"))) == 1:
        return "coco"
    if (src / "images").is_dir():
        raise PrepareError(f"{src}: has images/ but no masks/ beside it")
    if _supervisely_datasets(src):
        return "supervisely"
    if _is_ab_folder(src):
        return "ab"
    raise PrepareError(f"{src}: layout not recognised (expected images/ + masks/, Supervisely "
                       f"img/ + ann/, or side-by-side A|B images); pass --format")


# ----------------------------------------------------------------------------------- writing


def _save(sample: _Sample, key: str, pool: Path) -> str:
    """Write photo and mask into pool/images, pool/masks -> the photo's file name."""
    name = key + sample.suffix
    # Not durable (hx_infer.io.images.atomic_write's fsync policy): running prepare again remakes it.
    if sample.original is not None:
        atomic_write(pool / "images" / name, sample.original)
    else:
        photo = Image.fromarray(sample.photo)
        atomic_write(pool / "images" / name, lambda f: photo.save(f, "PNG", compress_level=PHOTO_PNG_LEVEL))
    mask = Image.fromarray(sample.mask)
    atomic_write(pool / "masks" / f"{key}.png", lambda f: mask.save(f, "PNG", compress_level=MASK_PNG_LEVEL))
    return name


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """[H, W, ...] -> the same shrunk by area averaging so its longer side is at most `max_side`
    px (aspect kept); unchanged when it already is."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def shrink(sample: _Sample, max_side: int, quality: int = JPEG_QUALITY) -> _Sample:
    """The sample with its longer side at most `max_side` px (`fit_within`): the photo re-encoded
    as JPEG of `quality`; the mask thresholded at half, so it stays 0/255 and a thin limb keeps
    the pixels it covers at least half of. Unchanged when it is small enough. _Skip when too little is left."""
    photo = fit_within(sample.photo, max_side)
    if photo is sample.photo:  # small enough: keep the file's own bytes
        return sample
    _check_size(*_size(photo))
    mask = np.where(fit_within(sample.mask, max_side) >= 128, 255, 0).astype(np.uint8)
    if not mask.any():
        raise _Skip(f"empty mask at --max-side {max_side}")
    return _Sample(photo, encode_jpeg(photo, quality), ".jpg", mask)


def _process(pair: _Pair, load: Callable[[_Pair], _Sample], pool: Path, max_side: int = 0,
             quality: int = JPEG_QUALITY) -> str | Skipped:
    """-> the photo's output name, or why the pair was skipped. Write errors propagate: a full disk
    is fatal, not a bad pair. max_side > 0: shrink larger pairs to it, as JPEGs of `quality`."""
    try:
        sample = load(pair)
        if not sample.mask.any():
            return Skipped(str(pair.photo), "empty mask")
        if max_side:
            sample = shrink(sample, max_side, quality)
    except _Skip as e:
        return Skipped(str(pair.photo), str(e))
    return _save(sample, pair.key, pool)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """pool.map that keeps at most `window` items in flight: 10^7 futures would not fit in memory."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ----------------------------------------------------------------------------------- split


def choose_val(keys: list[str], val_fraction: float, seed: int, min_val: int = 0) -> set[str]:
    """The keys that go to val: the max(round(n * val_fraction), min(min_val, n // 3)) with the
    smallest hash of (seed, key).

    Independent of listing order, and adding one pair moves at most one other between splits.
    At least one val pair when n >= 2 and val_fraction > 0; always at least one train pair.
    """
    n = len(keys)
    n_val = max(round(n * val_fraction), min(min_val, n // 3) if val_fraction > 0 else 0)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))

    def rank(key: str) -> tuple[bytes, str]:
        return hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest(), key

    return set(sorted(keys, key=rank)[:n_val])


# ----------------------------------------------------------------------------------- prepare


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_paths(sources: list[Path], dst: Path, overwrite: bool) -> None:
    for src in sources:
        if not (src.is_dir() or (src.is_file() and src.suffix.lower() == ".json")):
            raise PrepareError(f"{src}: SRC is not a folder (nor a COCO .json file)")
        real_src, real_dst = src.resolve(), dst.resolve()
        if _is_within(real_dst, real_src.parent if src.is_file() else real_src):
            raise PrepareError(f"{dst}: DST is inside SRC {src}; SRC is never written to")
        for part in ("train", "val"):
            out = dst / part
            if _is_within(real_src, out.resolve()):
                raise PrepareError(f"{out}: SRC {src} is inside it; it cannot be replaced")
    if dst.exists() and not dst.is_dir():
        raise PrepareError(f"{dst}: DST exists and is not a folder")
    for part in ("train", "val"):
        out = dst / part
        if out.exists() and not out.is_dir():
            raise PrepareError(f"{out}: exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise PrepareError(f"{out}: exists and is not empty (--overwrite replaces it)")
    # The third file prepare writes into DST; anything else there is not prepare's and stays.
    if os.path.lexists(dst / SOURCES_JSON) and not overwrite:
        raise PrepareError(f"{dst / SOURCES_JSON}: exists (--overwrite replaces it)")


def source_names(sources: list[Path]) -> list[str]:
    """A short unique name per source: its folder's name (a COCO JSON's folder) with "_" made "-"
    and leading dots dropped (a hidden file is no photo to fit), made unique with "-2", "-3", ...
    (case-insensitively, as disks may be).

    The prefix is the name and "_", so the first "_" of a file name ends its prefix: no source's
    prefix begins another's, two sources' keys never meet (sources a and a_b made "a_b_c" of
    b_c.jpg and c.jpg alike), and source_of finds each file's source."""
    names = [((src.parent if src.is_file() else src).resolve().name.replace("_", "-").lstrip(".")
              or "source") for src in sources]
    return unique_keys([("", name) for name in names], separator="-")  # "-": a name holds no "_"


def _check_prefixes(prefixes: list[str]) -> None:
    """PrepareError unless no prefix begins another (case-insensitively): what keeps every
    source's keys apart and each file's source known. source_names' names always pass."""
    for i, a in enumerate(prefixes):
        for b in prefixes[i + 1:]:
            if a.lower().startswith(b.lower()) or b.lower().startswith(a.lower()):
                raise PrepareError(f"source prefixes {a!r} and {b!r} could make one name of two pairs; "
                                   "rename one of the source folders")


def _list_source(src: Path, fmt: str, category: str) -> tuple[list[_Pair], list[Skipped]]:
    if fmt == "coco":
        return _list_coco(src, category)
    return _LISTERS[fmt](src)


def prepare(src: Path | list[Path], dst: Path, fmt: str = "auto", val_fraction: float = VAL_FRACTION,
            seed: int = 0, log: Callable[[str], None] = lambda s: None, *, overwrite: bool = False,
            workers: int = 0, min_val: int = MIN_VAL, category: str = "person",
            max_side: int = 0, jpeg_quality: int = JPEG_QUALITY) -> PrepareSummary:
    """Read the pairs in SRC (one path or several; layout `fmt`, or detected per source), write
    DST/{train,val}/{images,masks} and DST/sources.json.

    val_fraction in [0, 1): share of each source's usable pairs for val, chosen by `seed`;
    min_val: at least this many per source where it has three times as many (`choose_val`).
    With several sources every key gets its source's name as a prefix.
    overwrite: replace non-empty DST/train and DST/val (both are removed first, so no stale file
    from an earlier run can leak across the split) and DST/sources.json; without it none of the
    three is touched. Other files in DST are never touched.
    workers: decoding threads, 0 = one per CPU (at most 8). Pillow and OpenCV release the GIL.
    category: the COCO category whose annotations are person.
    max_side: > 0 shrinks every pair whose longer side exceeds it (`shrink`): a smaller copy of a
    set, e.g. to carry to another machine. fit at --size S decodes onto a 2*S canvas, so
    max_side 2*S loses nothing it would see. jpeg_quality (1-100): of the photos it shrinks.
    log: receives the detected format, progress, one line per skipped pair, and the counts.
    Raises PrepareError when nothing can be prepared; bad pairs are skipped and reported instead.
    """
    sources = [Path(s) for s in ([src] if isinstance(src, (str, Path)) else src)]
    dst = Path(dst)
    if not sources:
        raise PrepareError("no SRC given")
    if fmt != "auto" and fmt not in FORMATS:
        raise PrepareError(f"--format: unknown {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    if not 0 <= val_fraction < 1:
        raise PrepareError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
    if min_val < 0:
        raise PrepareError(f"--min-val: must be at least 0, got {min_val}")
    if max_side and max_side < MIN_SIDE:
        raise PrepareError(f"--max-side: must be at least {MIN_SIDE}, got {max_side}")
    if not 1 <= jpeg_quality <= 100:
        raise PrepareError(f"--jpeg-quality: must be from 1 to 100, got {jpeg_quality}")
    _check_paths(sources, dst, overwrite)
    names = source_names(sources)
    several = len(sources) > 1
    if several:
        _check_prefixes([f"{name}_" for name in names])
    pairs: list[_Pair] = []
    records: list[dict] = []
    skipped: list[Skipped] = []
    for index, (source, name) in enumerate(zip(sources, names)):
        source_fmt = detect_format(source) if fmt == "auto" else fmt
        if fmt == "auto":
            log(f"format: {source_fmt}" + (f" ({source})" if several else ""))
        found, missed = _list_source(source, source_fmt, category)
        if not found:
            raise PrepareError(f"{source}: no {source_fmt} pairs found "
                               f"({len(missed)} photos without a usable mask)")
        prefix = f"{name}_" if several else ""
        pairs += [_Pair(prefix + p.key, p.photo, p.label, source_fmt, index) for p in found]
        records.append({"name": name, "prefix": prefix, "path": str(source.resolve()), "format": source_fmt,
                        "pairs": len(found), "train": 0, "val": 0, "skipped": len(missed)})
        log(f"{len(found)} pairs in {source}")
        for s in missed:
            log(f"skipped {s.source}: {s.reason}")
        skipped += missed

    try:
        dst.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(dst, log)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dst))
        held = _hold(staging)
    except OSError as e:
        raise PrepareError(f"{dst}: cannot write ({e.strerror or e})") from None
    try:
        summary = _run(pairs, skipped, records, staging, dst, val_fraction, min_val, seed, log,
                       workers or min(8, os.cpu_count() or 1), overwrite, max_side, jpeg_quality)
    except OSError as e:
        raise PrepareError(f"{e.filename or dst}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(held)
    if summary is None:
        raise PrepareError(f"{sources[0] if not several else 'SRC'}: none of the {len(pairs)} pairs is "
                           f"usable (see the skipped list)")
    return summary


def _hold(staging: Path) -> int:
    """Lock `staging` for this run (flock on the folder; the kernel drops it when the process ends,
    however it ends) -> the fd to close when done. remove_stale_staging leaves a held folder alone."""
    import fcntl

    fd = os.open(staging, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no flock on this file system: the folder is simply not held
        pass
    return fd


def remove_stale_staging(dst: Path, log: Callable[[str], None] = lambda s: None) -> int:
    """Remove the staging folders killed runs left in `dst` (a kill -9 skips the clean-up; each
    holds every pair decoded before it): folders named as prepare names them that no running
    prepare holds (_hold). -> how many were removed."""
    import fcntl

    removed = 0
    with os.scandir(dst) as entries:
        stale = [e.path for e in entries if _STAGING_NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    for path in stale:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: another prepare is writing into it now (or no flock here: leave it)
            continue
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
            log(f"removed {path}: a stale staging folder of a killed prepare")
        finally:
            os.close(fd)
    return removed


def _run(pairs: list[_Pair], skipped: list[Skipped], records: list[dict], staging: Path, dst: Path,
         val_fraction: float, min_val: int, seed: int, log: Callable[[str], None], workers: int,
         overwrite: bool, max_side: int = 0, jpeg_quality: int = JPEG_QUALITY) -> PrepareSummary | None:
    """Decode and write every pair into staging/pool, split each source, and swap the splits and
    sources.json into DST. -> None when no pair was usable (DST untouched)."""
    pool = staging / "pool"
    for sub in ("images", "masks"):
        (pool / sub).mkdir(parents=True)
    written: dict[str, str] = {}  # key -> photo file name
    source_of = {pair.key: pair.source for pair in pairs}
    step = max(len(pairs) // 10, 1000)
    with ThreadPoolExecutor(workers) as executor:
        results = _bounded_map(executor,
                               lambda p: (p.key, _process(p, _LOADERS[p.fmt], pool, max_side, jpeg_quality)),
                               pairs, window=4 * workers)
        # Results come back in input (sorted) order, so the log reads the same on every run.
        for done, (key, result) in enumerate(results, 1):
            if isinstance(result, Skipped):
                skipped.append(result)
                records[source_of[key]]["skipped"] += 1
                log(f"skipped {result.source}: {result.reason}")
            else:
                written[key] = result
            if done % step == 0:
                log(f"{done}/{len(pairs)} pairs read")
    if not written:
        return None

    val: set[str] = set()
    for index, record in enumerate(records):
        # Drawn on the keys without their prefix: a source splits as it would prepared alone.
        cut = len(record["prefix"])
        keys = sorted(k for k in written if source_of[k] == index)
        chosen = choose_val([k[cut:] for k in keys], val_fraction, seed, min_val)
        record.update(train=len(keys) - len(chosen), val=len(chosen))
        val |= {record["prefix"] + k for k in chosen}
    for part in ("train", "val"):
        for sub in ("images", "masks"):
            (staging / part / sub).mkdir(parents=True)
    for key, name in written.items():
        part = staging / ("val" if key in val else "train")
        os.replace(pool / "images" / name, part / "images" / name)
        os.replace(pool / "masks" / f"{key}.png", part / "masks" / f"{key}.png")
    sources_json = {"format": "hx-sources/1", "seed": seed, "val_fraction": val_fraction, "min_val": min_val,
                    "max_side": max_side or None,
                    "jpeg_quality": jpeg_quality if max_side else None, "sources": records}
    atomic_write(staging / SOURCES_JSON, json.dumps(sources_json, indent=2).encode())
    # Swap the finished splits in; an old split goes to staging, which the caller deletes.
    for part in ("train", "val"):
        if not overwrite and (dst / part).is_dir() and any((dst / part).iterdir()):
            raise PrepareError(f"{dst / part}: filled while preparing; nothing replaced")
    if not overwrite and os.path.lexists(dst / SOURCES_JSON):
        raise PrepareError(f"{dst / SOURCES_JSON}: made while preparing; nothing replaced")
    for part in ("train", "val"):
        if (dst / part).exists():
            os.replace(dst / part, staging / f"old-{part}")
        os.replace(staging / part, dst / part)
    os.replace(staging / SOURCES_JSON, dst / SOURCES_JSON)

    fmt = "+".join(dict.fromkeys(r["format"] for r in records))
    summary = PrepareSummary(fmt, train=len(written) - len(val), val=len(val), skipped=skipped, sources=records)
    if len(records) > 1:
        for r in records:
            log(f"{r['name']}: train {r['train']}, val {r['val']}, skipped {r['skipped']}")
    log(f"train {summary.train}, val {summary.val}, skipped {len(skipped)} -> {dst}")
    return summary


def read_sources(data: Path) -> list[dict]:
    """DATA/sources.json's sources (name, prefix, ...); one unnamed source when there is none
    (a set prepared before sources.json existed, or made by hand)."""
    try:
        return json.loads((Path(data) / SOURCES_JSON).read_text())["sources"]
    except FileNotFoundError:
        return [{"name": Path(data).name or "data", "prefix": ""}]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrepareError(f"{Path(data) / SOURCES_JSON}: unreadable ({e})") from None


def source_of(name: str, sources: list[dict]) -> str:
    """The source whose prefix a file name starts with. Sets prepared now have prefixes that no
    other begins (source_names), so one matches at most; in older ones, whose names kept their
    "_", the longest prefix wins, the best guess there is."""
    best = max((s for s in sources if name.startswith(s["prefix"])), key=lambda s: len(s["prefix"]), default=None)
    return best["name"] if best is not None else "data"
