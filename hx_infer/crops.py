"""The person crops, cut by one fixed rule from a person mask: the upper body and the head and
shoulders. `hx-infer eval` scores them and `hx-train fit` trains on them (its person-band views),
so both read the fractions from here and cannot drift apart.

With the person's rows from the mask (mask > 127; rows top..bottom, height h = bottom - top), the
band of fraction f is rows top .. top + max(1, round(f h)) (exclusive), and its columns run from
the person's leftmost to its rightmost pixel within those rows. A crop grows the band by a margin
of m h above and on either side (not below: the cut is the point), clamped to the photo:

    full   the whole photo.
    upper  the band of BANDS["upper"] = 0.55 (down to the hips), margin CROP_MARGIN = 0.10.
    head   the band of BANDS["head"] = 0.30 (head and shoulders), the same margin.

A mask with no person pixel has no band and no person crop.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

CROPS = ("full", "upper", "head")
BANDS = {"upper": 0.55, "head": 0.30}  # of the person's height, from its top
CROP_MARGIN = 0.10  # of the person's height: room above the head and on either side
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in mask pixels, x1 and y1 exclusive


def band_boxes(mask: np.ndarray, fractions: Iterable[float], margin: float = 0.0) -> list[Box] | None:
    """The box of each band of `fractions` of the person in `mask` ([H, W] uint8), grown by
    `margin` of the person's height above and on either side and clamped to the mask; None when
    the mask holds no person. A fraction of 1.0 is the person's whole box."""
    height, width = mask.shape
    person = mask > 127
    rows = np.flatnonzero(person.any(axis=1))
    if rows.size == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    tall = bottom - top
    grow = round(margin * tall)
    boxes = []
    for fraction in fractions:
        cut = top + max(1, round(fraction * tall))
        cols = np.flatnonzero(person[top:cut].any(axis=0))
        boxes.append((max(0, int(cols[0]) - grow), max(0, top - grow), min(width, int(cols[-1]) + 1 + grow), cut))
    return boxes


def crop_box(mask: np.ndarray, crop: str) -> Box | None:
    """The crop `crop` ("full", "upper" or "head") of a photo with this mask ([H, W] uint8), by
    the rules above; None for a person crop when the mask is empty. ValueError for another name."""
    height, width = mask.shape
    if crop == "full":
        return 0, 0, width, height
    if crop not in BANDS:
        raise ValueError(f"--crops: unknown crop {crop!r}; choose from {','.join(CROPS)}")
    boxes = band_boxes(mask, (BANDS[crop],), CROP_MARGIN)
    return None if boxes is None else boxes[0]
