"""hx_infer.crops: the person band rule that hx-infer eval's crops and hx-train's person-band
views both cut, with its fractions in one place."""
from __future__ import annotations

import numpy as np

from hx_infer.crops import BANDS, CROP_MARGIN, band_boxes, crop_box
from hx_train import data as hxdata
from hx_train.config import TrainConfig


def _person(seed: int, height: int = 60, width: int = 40) -> np.ndarray:
    """A blob of person (two ellipses: head and body) somewhere in the frame, uint8 0/255."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cx, top = rng.integers(8, width - 8), rng.integers(0, height // 3)
    head = ((yy - top - 5) / 5.0) ** 2 + ((xx - cx) / 4.0) ** 2 <= 1
    body = ((yy - top - 25) / 18.0) ** 2 + ((xx - cx) / rng.uniform(6, 12)) ** 2 <= 1
    return ((head | body) * 255).astype(np.uint8)


def test_training_bands_are_eval_crops_without_the_margin():
    for seed in range(20):
        mask = _person(seed)
        boxes = hxdata.person_boxes(mask, (BANDS["upper"], BANDS["head"]))
        whole, upper, head = band_boxes(mask, (1.0, BANDS["upper"], BANDS["head"]))
        np.testing.assert_array_equal(boxes, np.array([whole, upper, head], np.float32))
        for crop, band in (("upper", upper), ("head", head)):
            x0, y0, x1, y1 = crop_box(mask, crop)
            grow = round(CROP_MARGIN * (whole[3] - whole[1]))
            h, w = mask.shape
            assert (x0, y0, x1, y1) == (max(0, band[0] - grow), max(0, band[1] - grow),
                                        min(w, band[2] + grow), band[3])


def test_training_defaults_take_the_fractions_from_the_crops():
    config = TrainConfig()
    assert (config.upper_body_fraction, config.head_fraction) == (BANDS["upper"], BANDS["head"])


def test_an_empty_mask_has_no_band():
    empty = np.zeros((8, 8), np.uint8)
    assert band_boxes(empty, (0.5,)) is None and crop_box(empty, "head") is None
    assert np.isnan(hxdata.person_boxes(empty, (0.5,))).all()
