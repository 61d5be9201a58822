"""hx_infer.compose: background parsing and rendering, RGBA cutouts, compositing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hx_infer.compose import Background, composite, parse_background, rgba_cutout


def random_photo(h: int = 23, w: int = 17, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), np.uint8), rng.integers(0, 256, (h, w), np.uint8)


@pytest.mark.parametrize("spec, color", [
    ("white", (255, 255, 255)), ("BLACK", (0, 0, 0)), ("#FF8000", (255, 128, 0)),
    ("#ff8000", (255, 128, 0)), ("#0aF", (0, 170, 255)), (" #123456 ", (0x12, 0x34, 0x56)),
])
def test_parse_colours(spec, color):
    background = parse_background(spec)
    rendered = background.render(5, 7)
    assert rendered.shape == (5, 7, 3) and rendered.dtype == np.uint8
    assert np.all(rendered == color)


@pytest.mark.parametrize("spec", ["reddish", "#12345", "#GGGGGG", "", "#1234567", "rgb(1,2,3)"])
def test_parse_rejects_with_one_line(spec):
    with pytest.raises(ValueError) as info:
        parse_background(spec)
    assert str(info.value) == f"--background {spec!r}: use white, black, a CSS colour name, '#RRGGBB' or an image file"


@pytest.mark.parametrize("spec", ["nowhere.png", "photos/bg", "clip.mp4"])
def test_a_missing_background_file_says_so(spec):
    with pytest.raises(ValueError) as info:
        parse_background(spec)
    assert str(info.value) == f"--background {spec!r}: no such file"


@pytest.mark.parametrize("spec, color", [("teal", (0, 128, 128)), ("Crimson", (220, 20, 60)),
                                         ("rebeccapurple", (102, 51, 153))])
def test_css_colour_names(spec, color):
    background = parse_background(spec)
    assert background.color == color and background.label == spec.lower()


def test_parse_rejects_a_broken_image(tmp_path):
    path = tmp_path / "bg.jpg"
    path.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        parse_background(str(path))


def test_image_background_covers_and_centre_crops(tmp_path):
    # 40 x 20 image: left half red, right half blue, with a green 2-px stripe in the centre
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = (255, 0, 0)
    image[:, 20:] = (0, 0, 255)
    image[:, 19:21] = (0, 255, 0)
    path = tmp_path / "bg.png"
    Image.fromarray(image).save(path)
    background = parse_background(str(path))
    tall = background.render(40, 10)  # cover: scaled x2 to 80 x 40, then the centre 10 columns
    assert tall.shape == (40, 10, 3)
    assert np.all(tall[:, 5, 1] > 200)  # the green stripe stays in the middle
    assert np.all(tall[:, 0] == (255, 0, 0)) and np.all(tall[:, -1] == (0, 0, 255))
    wide = background.render(5, 40)  # already wide enough: scaled to 40 x 20, centre 5 rows
    assert wide.shape == (5, 40, 3)
    assert np.array_equal(wide, image[7:12])
    assert background.render(5, 40) is background.render(5, 40)  # cached for repeated sizes


def test_background_needs_exactly_one_source():
    with pytest.raises(ValueError):
        Background()
    with pytest.raises(ValueError):
        Background(color=(0, 0, 0), image=np.zeros((2, 2, 3), np.uint8))


def test_rgba_keeps_original_pixels_and_clears_the_removed_background():
    rgb, alpha = random_photo()
    alpha[:5] = 0
    rgba = rgba_cutout(rgb, alpha)
    assert rgba.shape == (23, 17, 4) and rgba.dtype == np.uint8
    seen = alpha > 0
    assert np.array_equal(rgba[seen][:, :3], rgb[seen])  # straight, not premultiplied
    assert not rgba[~seen].any()  # the background is gone, not only transparent
    assert np.array_equal(rgba[..., 3], alpha)
    as_float = rgba_cutout(rgb, alpha.astype(np.float32) / 255)
    assert np.array_equal(as_float, rgba)


def test_composite_matches_the_formula():
    rgb, alpha = random_photo()
    background = parse_background("#204060")
    out = composite(rgb, alpha, background)
    a = alpha.astype(np.float64)[..., None] / 255
    expected = np.rint(rgb * a + np.array([0x20, 0x40, 0x60]) * (1 - a))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert np.mean(out == expected) > 0.99  # off by one only on float32 ties
    assert np.array_equal(composite(rgb, alpha.astype(np.float32) / 255, background), out)


def test_composite_extremes_are_exact():
    rgb, _ = random_photo()
    white = parse_background("white")
    assert np.array_equal(composite(rgb, np.full((23, 17), 255, np.uint8), white), rgb)
    assert np.all(composite(rgb, np.zeros((23, 17), np.uint8), white) == 255)
    assert np.array_equal(composite(rgb, np.ones((23, 17), np.float32), white), rgb)


def test_composite_on_an_image(tmp_path):
    rgb, alpha = random_photo(8, 6)
    bg_image = np.random.default_rng(3).integers(0, 256, (8, 6, 3), np.uint8)
    path = tmp_path / "bg.png"
    Image.fromarray(bg_image).save(path)
    out = composite(rgb, np.zeros((8, 6), np.uint8), parse_background(str(path)))
    assert np.array_equal(out, bg_image)  # same size: the image itself


def test_shape_mismatch_is_a_value_error():
    rgb, alpha = random_photo()
    with pytest.raises(ValueError, match="does not match"):
        composite(rgb, alpha[:-1], parse_background("black"))
    with pytest.raises(ValueError, match="does not match"):
        rgba_cutout(rgb, alpha[:, :-1])


def test_composite_float_alpha_out_of_range_and_nan():
    rgb, _ = random_photo(4, 4)
    alpha = np.array([[np.nan, -0.5, 1.5, 0.5]] * 4, np.float32)
    out = composite(rgb, alpha, parse_background("black"))
    assert np.all(out[:, :2] == 0)  # NaN and negative: background
    assert np.array_equal(out[:, 2], rgb[:, 2])  # above 1: the photo
    assert np.array_equal(out[:, 3], np.rint(rgb[:, 3] * 0.5).astype(np.uint8))
