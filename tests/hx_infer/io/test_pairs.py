"""hx_infer.io.pairs: the one listing of photo/mask pairs and the one reading of a mask file,
which hx-train fit (hx_train.data) and hx-infer eval share."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hx_infer.io.images import read_photo
from hx_infer.io.pairs import find_pairs, read_mask
from hx_train import data as hxdata


def _save(array: np.ndarray, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def test_pairs_skip_hidden_files_and_folders_named_like_photos(tmp_path):
    for stem in ("a", "b"):
        _save(np.zeros((4, 4, 3), np.uint8), tmp_path / "images" / f"{stem}.png")
        _save(np.zeros((4, 4), np.uint8), tmp_path / "masks" / f"{stem}.png")
    _save(np.zeros((4, 4, 3), np.uint8), tmp_path / "images" / "._a.png")  # a macOS fork
    (tmp_path / "images" / "album.jpg").mkdir()  # a folder, not a photo
    _save(np.zeros((4, 4, 3), np.uint8), tmp_path / "images" / "c.jpg")
    pairs, unpaired = find_pairs(tmp_path)
    assert [(p.name, m.name) for p, m in pairs] == [("a.png", "a.png"), ("b.png", "b.png")]
    assert [p.name for p in unpaired] == ["c.jpg"]
    # Training takes the same listing and insists on a mask for every photo.
    with pytest.raises(hxdata.DataError, match=r"c\.jpg: no mask named c\.\*"):
        hxdata.split_pairs(tmp_path)
    (tmp_path / "images" / "c.jpg").unlink()
    assert hxdata.split_pairs(tmp_path) == pairs  # the folder named album.jpg is no photo


def test_two_masks_of_one_stem_raise_the_callers_error(tmp_path):
    _save(np.zeros((4, 4, 3), np.uint8), tmp_path / "images" / "a.png")
    _save(np.zeros((4, 4), np.uint8), tmp_path / "masks" / "a.png")
    _save(np.zeros((4, 4), np.uint8), tmp_path / "masks" / "a.jpg")
    with pytest.raises(KeyError, match=r"a\.png: a second mask for 'a' \(also a\.jpg\)"):
        find_pairs(tmp_path, KeyError)
    with pytest.raises(hxdata.DataError, match="a second mask"):
        hxdata.split_pairs(tmp_path)


def test_a_16_bit_mask_keeps_its_high_byte_in_training_as_in_eval(tmp_path):
    """Training read masks with Pillow's convert("L"), which clips 16-bit values at 255: a faint
    soft edge of 1000/65535 (1.5 %) became 255, person. Eval kept the high byte. Now both do."""
    wide = np.array([[0, 1000, 32768, 65535]], np.uint16)
    path = tmp_path / "m.png"
    Image.fromarray(wide).save(path)
    expected = np.array([[0, 3, 128, 255]], np.uint8)
    np.testing.assert_array_equal(read_mask(path), expected)
    np.testing.assert_array_equal(hxdata.read_mask(path), expected)


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "LA", "RGBA"])
def test_a_mask_reads_as_its_grey_whatever_the_file_mode(tmp_path, mode):
    grey = np.zeros((6, 5), np.uint8)
    grey[1:4, 2:4] = 255
    grey[0, 0] = 128
    path = tmp_path / f"m_{mode}.png"
    Image.fromarray(grey).convert(mode).save(path)
    np.testing.assert_array_equal(read_mask(path), grey)
    np.testing.assert_array_equal(hxdata.read_mask(path), grey)


def test_a_mask_is_turned_upright_like_its_photo(tmp_path):
    """EXIF orientation 6 (rotate 90 clockwise to view): mask and photo come out upright alike."""
    stored = np.zeros((4, 6), np.uint8)
    stored[0, :3] = 255  # the top row's left half
    exif = Image.Exif()
    exif[0x0112] = 6
    mask_path, photo_path = tmp_path / "m.png", tmp_path / "p.png"
    Image.fromarray(stored).save(mask_path, exif=exif)
    Image.fromarray(np.repeat(stored[..., None], 3, axis=2)).save(photo_path, exif=exif)
    upright = read_mask(mask_path)
    assert upright.shape == (6, 4)
    np.testing.assert_array_equal(upright, read_photo(photo_path)[..., 0])
    np.testing.assert_array_equal(hxdata.read_mask(mask_path), upright)


def test_an_unreadable_mask_is_one_line_naming_it(tmp_path):
    path = tmp_path / "m.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(hxdata.DataError, match=r"m\.png: cannot read mask") as info:
        hxdata.read_mask(path)
    assert "\n" not in str(info.value)
