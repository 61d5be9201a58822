"""The output-kind table is the one place a kind is defined: a row added there (and, when its
image needs an operation the kinds so far do not, that operation on both Pixels: numpy and
torch) is written by the numpy stages and the device stages alike, with no other change."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hx_infer import Extractor
from hx_infer.engines import local
from hx_infer.io.images import encode_png
from hx_infer.run import device
from hx_infer.run.kinds import KINDS, NumpyPixels, OutputKind

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.torch_on_one_thread

# A binary person mask: a kind that is not there, and the one pixel operation it needs.
MASK = OutputKind("mask", ".png", lambda options: "ffv1-matte", needs_photo=False, needs_background=False,
                  make=lambda pixels, rgb, alpha: pixels.threshold(alpha), encode=encode_png)


def numpy_threshold(self, alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha > 127, 255, 0).astype(np.uint8)


def torch_threshold(self, alpha: torch.Tensor) -> torch.Tensor:
    return (alpha > 127).to(torch.uint8) * 255


@pytest.fixture
def photos(tmp_path, make_disc_photo):
    root = tmp_path / "photos"
    root.mkdir()
    for i, (h, w) in enumerate([(90, 120), (70, 50)]):
        Image.fromarray(make_disc_photo(h, w, seed=i)[0]).save(root / f"p{i}.png")
    return root


@pytest.mark.parametrize("stages", ["numpy", "device"])
def test_a_new_kind_is_one_row_of_the_table(photos, tmp_path, tiny_model_dir, monkeypatch, stages):
    monkeypatch.setitem(KINDS, "mask", MASK)
    monkeypatch.setattr(NumpyPixels, "threshold", numpy_threshold, raising=False)
    monkeypatch.setattr(device.TorchPixels, "threshold", torch_threshold, raising=False)
    if stages == "device":  # the torch stages on CPU tensors, as a CUDA run would use them
        monkeypatch.setattr(local, "choose_stages", device.DeviceStages)
    with Extractor(tiny_model_dir, backend="ort", device="cpu", batch_size=2) as ex:
        report = ex.run(photos, tmp_path / "out", outputs="alpha,mask", progress=False)
    assert report["counts"] == {"processed": 2, "skipped": 0, "failed": 0}
    for i in range(2):
        alpha = np.asarray(Image.open(tmp_path / f"out/alpha/p{i}.png"))
        mask = np.asarray(Image.open(tmp_path / f"out/mask/p{i}.png"))
        assert mask.shape == alpha.shape and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask, np.where(alpha > 127, 255, 0))
