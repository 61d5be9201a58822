"""Folders of photos with person masks, as `hx-train prepare` writes them and `hx-train fit` and
`hx-infer eval` read them: FOLDER/images/<stem>.* beside FOLDER/masks/<stem>.*, matched by stem.

One reading of a mask file for training and evaluation alike (read_mask), so the pixels a model is
trained towards are the pixels it is scored against. (`hx-train prepare` reads a source's own label
files by its own, more forgiving rule, "any non-zero pixel is person", and writes 0/255 masks that
both rules read alike.)
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .images import is_photo_name, read_photo

Pair = tuple[Path, Path]  # (photo, mask)


def photo_files(folder: Path, error: type[Exception] = ValueError) -> list[Path]:
    """The photo files directly in `folder` by extension, sorted by name; hidden files (macOS's
    "._name.jpg" forks) and folders are left out."""
    try:
        return sorted(p for p in folder.iterdir() if is_photo_name(p.name) and not p.name.startswith(".")
                      and p.is_file())
    except OSError as e:
        raise error(f"{folder}: cannot list ({e.strerror or e})") from None


def find_pairs(folder: Path, error: type[Exception] = ValueError) -> tuple[list[Pair], list[Path]]:
    """(photo, mask) pairs of folder/images and folder/masks matched by stem, sorted by photo
    name, and the photos that have no mask. A folder that cannot be listed and two masks of one
    stem raise `error` (one line naming the file); what a caller does without pairs is its own."""
    folder = Path(folder)
    masks: dict[str, Path] = {}
    for path in photo_files(folder / "masks", error):
        if path.stem in masks:
            raise error(f"{path}: a second mask for {path.stem!r} (also {masks[path.stem].name})")
        masks[path.stem] = path
    pairs, unpaired = [], []
    for photo in photo_files(folder / "images", error):
        if photo.stem in masks:
            pairs.append((photo, masks[photo.stem]))
        else:
            unpaired.append(photo)
    return pairs, unpaired


def read_mask(path: Path) -> np.ndarray:
    """A mask file -> [H, W] uint8, 0 = background, 255 = person, values between are soft edges.

    Decoded as hx-infer decodes a photo (hx_infer.io.images.read_photo), so a mask is upright by
    EXIF exactly as its photo is, 16-bit masks keep their high byte (65535 -> 255, 1000 -> 3; a
    clip at 255 would make every faint 16-bit value person), and colour masks become their BT.601
    luma (alpha dropped). Raises DecodeError.
    """
    return cv2.cvtColor(read_photo(path), cv2.COLOR_RGB2GRAY)
