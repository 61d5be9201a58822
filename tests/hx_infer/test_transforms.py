"""hx_infer.transforms: letterbox geometry and its inverse, to_uint8, guided filter."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from hx_infer.transforms import fit, guided_filter, guided_radius, letterbox, to_uint8, unletterbox

SHAPES = [(17, 23), (23, 17), (300, 7), (7, 300), (64, 64), (1, 1), (850, 550), (40, 64), (63, 64)]


def rectangle_photo(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo [h, w, 3] uint8 with a white rectangle on black, and its [h, w] 0/1 mask."""
    mask = np.zeros((h, w), np.float32)
    x0, x1 = w // 4, max(w // 4 + 1, (3 * w) // 4)
    y0, y1 = h // 5, max(h // 5 + 1, (4 * h) // 5)
    mask[y0:y1, x0:x1] = 1.0
    return np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, axis=2), mask


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask > 0.5)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("w, h", SHAPES)
def test_letterbox_shape_range_and_padding(w, h):
    size = 64
    photo, _ = rectangle_photo(w, h)
    image, box = letterbox(photo, size)
    assert image.shape == (3, size, size) and image.dtype == np.float32
    assert max(box.new_w, box.new_h) == size
    assert box == fit(w, h, size)
    assert -1.0 <= image.min() and image.max() <= 1.0
    content = np.zeros((size, size), bool)
    content[box.top:box.top + box.new_h, box.left:box.left + box.new_w] = True
    assert np.all(image[:, ~content] == 0.0)  # pad exactly 0
    # centred: the two margins differ by at most one pixel
    assert abs(box.left - (size - box.left - box.new_w)) <= 1
    assert abs(box.top - (size - box.top - box.new_h)) <= 1


@pytest.mark.parametrize("w, h", SHAPES)
def test_unletterbox_puts_the_rectangle_back(w, h):
    size = 64
    photo, mask = rectangle_photo(w, h)
    image, box = letterbox(photo, size)
    as_alpha = (image[:1] + 1.0) / 2.0  # white -> 1, black -> 0, pad -> 0.5
    back = unletterbox(as_alpha, box)
    assert back.shape == (h, w) and back.dtype == np.float32
    assert 0.0 <= back.min() and back.max() <= 1.0
    # One model pixel covers `step` photo pixels; nothing may move further than that.
    step = max(w, h) / size
    tolerance = int(np.ceil(step)) + 1
    if (mask > 0.5).any() and (back > 0.5).any() and min(w, h) / step >= 4:
        got, want = bbox(back), bbox(mask)
        assert max(abs(g - e) for g, e in zip(got, want)) <= tolerance, (got, want)
    if w * h > 1 and max(w, h) <= size:  # growing: the inverse is close to exact away from edges
        interior = cv2.erode((mask > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert np.all(back[interior] > 0.9)


def test_unletterbox_multichannel_and_identity():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 64, 3), np.uint8)
    image, box = letterbox(photo, 64)
    assert (box.left, box.top) == (0, 0)
    back = unletterbox((image + 1) / 2, box)
    assert back.shape == (64, 64, 3)
    assert np.allclose(back * 255, photo, atol=1e-3)  # same size: an exact round trip


def test_letterbox_into_batch_slot():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (30, 50, 3), np.uint8)
    batch = np.full((2, 3, 32, 32), 7.0, np.float32)
    image, box = letterbox(photo, 32, out=batch[1])
    fresh, _ = letterbox(photo, 32)
    assert image is batch[1] or np.shares_memory(image, batch)
    assert np.array_equal(batch[1], fresh)
    assert np.all(batch[0] == 7.0)


def test_letterbox_of_a_reduced_decode_keeps_the_full_geometry():
    # 550 x 835 decoded at 1/2 gives 275 x 418 (sides rounded up): on its own that letterboxes
    # to a 168-wide block, where the full photo gives 169.
    full = np.zeros((835, 550, 3), np.uint8)
    reduced = np.zeros((418, 275, 3), np.uint8)
    _, own = letterbox(reduced, 256)
    image, box = letterbox(reduced, 256, src_size=(550, 835))
    _, expected = letterbox(full, 256)
    assert own.new_w != expected.new_w
    assert box == expected
    assert unletterbox(np.zeros((1, 256, 256), np.float32), box).shape == (835, 550)
    assert np.all(image[:, :, box.left:box.left + box.new_w] == -1.0)  # black content, no pad inside
    assert np.all(image[:, :, :box.left] == 0.0)


def test_letterbox_rejects_wrong_input():
    with pytest.raises(ValueError):
        letterbox(np.zeros((4, 4), np.uint8), 32)
    with pytest.raises(ValueError):
        letterbox(np.zeros((4, 4, 3), np.float32), 32)
    with pytest.raises(ValueError):
        unletterbox(np.zeros((1, 16, 16), np.float32), fit(4, 4, 32))


def test_to_uint8_rounds_half_to_even_and_clips():
    x = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.5, 1.0, 2.0, np.nan], np.float32)
    got = to_uint8(x)
    assert got.dtype == np.uint8
    assert got.tolist() == [0, 0, 0, 2, 2, 128, 255, 255, 0]


def person_scene(h: int = 192, w: int = 256, factor: int = 4):
    """A photo of an ellipse and a thin pole, the true matte, and that matte as a model at
    1/factor of the photo's size would give it: shrunk (area) and grown back (bilinear)."""
    yy, xx = np.mgrid[:h, :w]
    truth = (((xx - w / 2) / (w / 3)) ** 2 + ((yy - h / 2) / (h / 3)) ** 2 < 1).astype(np.float32)
    truth[:, w // 4: w // 4 + 4] = 1.0
    rng = np.random.default_rng(2)
    photo = np.where(truth[:, :, None] > 0, (190, 150, 120), (50, 90, 60)) + rng.normal(0, 4, (h, w, 3))
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    small = cv2.resize(truth, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    upsampled = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return photo, truth, upsampled


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_guided_filter_moves_a_blurred_matte_onto_the_photo_edge(factor):
    photo, truth, upsampled = person_scene(factor=factor)
    refined = guided_filter(photo, upsampled, model_size=256 // factor)
    assert refined.shape == truth.shape and refined.dtype == np.float32
    assert 0.0 <= refined.min() and refined.max() <= 1.0
    before = np.abs(upsampled - truth).mean()
    after = np.abs(refined - truth).mean()
    assert after < 0.5 * before, (before, after)


def test_classic_guided_filter_steepens_the_edge():
    photo, truth, upsampled = person_scene(factor=4)
    refined = guided_filter(photo, upsampled, radius=4, model_size=None)
    row = truth.shape[0] // 2
    steepest = lambda x: np.abs(np.diff(x[row])).max()  # noqa: E731
    assert steepest(refined) > 2 * steepest(upsampled)


def test_guided_filter_keeps_flat_regions_and_default_radius():
    photo = np.full((40, 60, 3), 128, np.uint8)  # no edges: nothing to follow
    alpha = np.full((40, 60), 0.3, np.float32)
    assert np.allclose(guided_filter(photo, alpha), 0.3, atol=1e-4)
    assert guided_radius(850, 550, 256) == 3
    assert guided_radius(100, 60, 256) == 2
    with pytest.raises(ValueError):
        guided_filter(photo, np.zeros((10, 10), np.float32))
