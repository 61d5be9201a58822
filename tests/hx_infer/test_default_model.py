"""The model bundled in the package: it loads, matches its recorded hashes, and finds a figure.

A sanity check, not the quality claim (that is `hx-infer eval` on held-out photos, README)."""
from __future__ import annotations

import numpy as np
import pytest

from hx_infer import Extractor
from hx_infer.model import default_model_dir, load_model_dir

pytestmark = pytest.mark.skipif(not (default_model_dir() / "model.json").is_file(),
                                reason="no bundled model in this checkout")


def test_bundled_model_loads_and_matches_its_sha256():
    model = load_model_dir("default", verify=True)  # raises on a missing file or a wrong hash
    assert model.target == "alpha"
    assert model.card["sha256"]["model.onnx"] == model.sha256


def figure_on_background(height: int = 480, width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """A standing figure (head, torso, legs) in dark clothes on a light, slightly graded wall."""
    yy, xx = np.mgrid[0:height, 0:width]
    wall = np.stack([200 + 30 * yy / height, 190 + 20 * xx / width, 170 + 0 * xx], -1)
    cx = width // 2
    head = (yy - 0.16 * height) ** 2 + (xx - cx) ** 2 <= (0.07 * height) ** 2
    torso = (abs(xx - cx) <= 0.16 * width) & (yy >= 0.22 * height) & (yy <= 0.58 * height)
    legs = (abs(abs(xx - cx) - 0.07 * width) <= 0.05 * width) & (yy > 0.58 * height) & (yy <= 0.95 * height)
    person = head | torso | legs
    rgb = wall.copy()
    rgb[person] = (60, 50, 90)
    rgb[head] = (205, 160, 130)
    return rgb.clip(0, 255).astype(np.uint8), person


def test_bundled_model_segments_a_synthetic_figure():
    rgb, person = figure_on_background()
    with Extractor(model="default", backend="ort", device="cpu") as extractor:
        alpha = extractor.alpha(rgb)
    assert alpha.shape == person.shape
    found = alpha > 127
    iou = (found & person).sum() / (found | person).sum()
    assert iou > 0.5, f"IoU {iou:.3f}"
