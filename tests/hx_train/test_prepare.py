"""hx_train.prepare on tiny synthetic layouts (32x48 px), plus one check on real ccp pairs."""
from __future__ import annotations

import base64
import io
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hx_train.prepare import PrepareError, ab_target_mask, choose_val, detect_format, prepare
from shared_data import SHARED_DATA

W, H = 32, 48
CCP = SHARED_DATA / "ccp"


def noise(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def person(w: int = W, h: int = H, top: int = 10, left: int = 8) -> np.ndarray:
    """[h, w] uint8 0/255 with a 20x16 block of person."""
    m = np.zeros((h, w), np.uint8)
    m[top:top + 20, left:left + 16] = 255
    return m


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def make_folders(root: Path, n: int) -> Path:
    for i in range(n):
        save(noise(i), root / "images" / f"p{i:02d}.jpg")
        save(person(left=4 + i % 8), root / "masks" / f"p{i:02d}.png")
    return root


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def outputs(dst: Path) -> dict[str, set[str]]:
    return {part: {p.stem for p in (dst / part / "masks").iterdir()} for part in ("train", "val")}


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------------------ folders


def test_folders_copies_photos_and_writes_binary_masks(tmp_path):
    src = make_folders(tmp_path / "src", 5)
    logs: list[str] = []
    summary = prepare(src, tmp_path / "dst", log=logs.append, workers=2)

    assert (summary.fmt, summary.train, summary.val, summary.skipped) == ("folders", 4, 1, [])
    out = outputs(tmp_path / "dst")
    assert out["train"] | out["val"] == {f"p{i:02d}" for i in range(5)}
    assert not out["train"] & out["val"]
    for part, stems in out.items():
        for stem in stems:
            photo = tmp_path / "dst" / part / "images" / f"{stem}.jpg"
            assert photo.read_bytes() == (src / "images" / f"{stem}.jpg").read_bytes()
            with Image.open(tmp_path / "dst" / part / "masks" / f"{stem}.png") as m:
                assert m.mode == "L" and m.size == (W, H)
            np.testing.assert_array_equal(read(tmp_path / "dst" / part / "masks" / f"{stem}.png"),
                                          read(src / "masks" / f"{stem}.png"))
    assert any("train 4, val 1, skipped 0" in line for line in logs)
    assert not [p for p in (tmp_path / "dst").iterdir() if p.name.startswith(".")]  # staging removed


def test_folders_mask_rules_and_conversions(tmp_path):
    src = tmp_path / "src"
    # Grey mask with faint values: any non-zero pixel is person.
    save(noise(1), src / "images" / "grey.png")
    faint = np.zeros((H, W), np.uint8)
    faint[5:9, 5:9] = 1
    save(faint, src / "masks" / "grey.png")
    # Mask at half size: resized with nearest neighbour, not skipped.
    save(noise(2), src / "images" / "small.JPG")
    half = np.zeros((H // 2, W // 2), np.uint8)
    half[5:15, 4:12] = 255
    save(half, src / "masks" / "small.png")
    # WebP photo: not JPEG/PNG, so written as PNG.
    save(noise(3), src / "images" / "web.webp", lossless=True)
    save(person(), src / "masks" / "web.png")
    # EXIF-rotated JPEG: stored 48x32, displayed 32x48 -> rotated and written as PNG.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save(noise(4, w=H, h=W), src / "images" / "rot.jpg", exif=exif.tobytes())
    save(person(), src / "masks" / "rot.png")

    prepare(src, tmp_path / "dst", val_fraction=0.0)
    out = tmp_path / "dst" / "train"
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == ["grey.png", "rot.png", "small.jpg", "web.png"]
    expected = np.zeros((H, W), np.uint8)
    expected[5:9, 5:9] = 255
    np.testing.assert_array_equal(read(out / "masks" / "grey.png"), expected)
    doubled = np.zeros((H, W), np.uint8)
    doubled[10:30, 8:24] = 255
    np.testing.assert_array_equal(read(out / "masks" / "small.png"), doubled)
    np.testing.assert_array_equal(read(out / "images" / "web.png"), noise(3))
    with Image.open(out / "images" / "rot.png") as rot:
        assert rot.size == (W, H) and rot.mode == "RGB"


def test_bad_pairs_are_skipped_with_reasons(tmp_path):
    src = make_folders(tmp_path / "src", 2)
    images, masks = src / "images", src / "masks"
    (images / "zero.jpg").write_bytes(b"")
    save(person(), masks / "zero.png")
    whole = save(noise(7, 96, 96), images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    save(person(), masks / "cut.png")
    save(noise(8), images / "lonely.jpg")
    save(noise(9), images / "black.jpg")
    save(np.zeros((H, W), np.uint8), masks / "black.png")
    save(noise(10, w=10, h=40), images / "tiny.png")
    save(person(10, 40, top=0, left=0), masks / "tiny.png")
    save(noise(11), images / "badmask.png")
    (masks / "badmask.png").write_bytes(b"not a png")
    (images / "._p00.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    logs: list[str] = []

    summary = prepare(src, tmp_path / "dst", log=logs.append)
    reasons = {Path(s.source).stem: s.reason for s in summary.skipped}
    assert reasons == {"zero": "unreadable image", "cut": "unreadable image", "lonely": "no mask",
                       "black": "empty mask", "tiny": "unusable size 10x40",
                       "badmask": "mask unreadable"}  # the macOS "._p00.jpg" is not listed at all
    assert summary.train + summary.val == 2
    assert sum(line.startswith("skipped ") for line in logs) == 6
    assert any(str(images / "cut.jpg") in line and "unreadable image" in line for line in logs)


def test_no_pairs_and_bad_options_raise(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(PrepareError, match="no folders pairs"):
        prepare(tmp_path / "empty", tmp_path / "dst")
    with pytest.raises(PrepareError, match="SRC is not a folder"):
        prepare(tmp_path / "missing", tmp_path / "dst")
    src = make_folders(tmp_path / "src", 2)
    with pytest.raises(PrepareError, match="--format"):
        prepare(src, tmp_path / "dst", fmt="voc")
    with pytest.raises(PrepareError, match="--val-fraction"):
        prepare(src, tmp_path / "dst", val_fraction=1.0)
    # Every pair present but unusable: an error, after the skips are reported.
    save(np.zeros((H, W), np.uint8), src / "masks" / "p00.png")
    save(np.zeros((H, W), np.uint8), src / "masks" / "p01.png")
    with pytest.raises(PrepareError, match="none of the 2 pairs"):
        prepare(src, tmp_path / "dst")
    assert not (tmp_path / "dst" / "train").exists()


# ------------------------------------------------------------------------------ split


def test_split_is_deterministic_and_independent_of_creation_order(tmp_path):
    forward = make_folders(tmp_path / "a", 20)
    backward = tmp_path / "b"
    for i in reversed(range(20)):
        save(noise(i), backward / "images" / f"p{i:02d}.jpg")
        save(person(left=4 + i % 8), backward / "masks" / f"p{i:02d}.png")

    prepare(forward, tmp_path / "d1", val_fraction=0.25, seed=3, min_val=0)
    prepare(backward, tmp_path / "d2", val_fraction=0.25, seed=3, min_val=0)
    prepare(forward, tmp_path / "d3", val_fraction=0.25, seed=4, min_val=0)
    first, second, other_seed = (outputs(tmp_path / d) for d in ("d1", "d2", "d3"))
    assert first == second
    assert len(first["val"]) == 5 and len(first["train"]) == 15
    assert other_seed["val"] != first["val"]


def test_choose_val_counts():
    keys = [f"k{i}" for i in range(10)]
    assert choose_val(keys, 0.0, 0) == set()
    assert len(choose_val(keys[:2], 0.1, 0)) == 1  # at least one val pair from two
    assert choose_val(keys[:1], 0.5, 0) == set()  # the only pair trains
    assert len(choose_val(keys, 0.3, 0)) == 3
    assert choose_val(keys, 0.3, 0) == choose_val(list(reversed(keys)), 0.3, 0)
    # Adding a pair moves at most one key out of val.
    assert len(choose_val(keys, 0.3, 0) - choose_val(keys + ["new"], 0.3, 0)) <= 1


# ------------------------------------------------------------------------------ DST safety


def test_existing_dst_is_protected_and_overwrite_replaces_it(tmp_path):
    src = make_folders(tmp_path / "src", 4)
    before = listing(src)
    dst = tmp_path / "dst"
    prepare(src, dst)
    stale = dst / "train" / "images" / "stale.jpg"
    stale.write_bytes(b"from an earlier run")

    with pytest.raises(PrepareError, match="--overwrite"):
        prepare(src, dst)
    assert stale.exists()

    summary = prepare(src, dst, overwrite=True)
    assert summary.train + summary.val == 4
    assert not stale.exists()
    assert listing(src) == before  # SRC untouched throughout


def test_a_sources_json_in_dst_is_kept_without_overwrite(tmp_path):
    """Only DST/train and DST/val were checked: a DST holding a sources.json (an earlier set's,
    whose splits were moved away, or the user's own file) lost it to the new set's."""
    src = make_folders(tmp_path / "src", 4)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "sources.json").write_bytes(b"the user's")
    (dst / "notes.txt").write_bytes(b"the user's")
    with pytest.raises(PrepareError, match="sources.json.*--overwrite"):
        prepare(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt", "sources.json"]
    assert (dst / "sources.json").read_bytes() == b"the user's"

    summary = prepare(src, dst, overwrite=True)
    assert summary.train + summary.val == 4
    assert json.loads((dst / "sources.json").read_text())["format"] == "hx-sources/1"
    assert (dst / "notes.txt").read_bytes() == b"the user's"  # not a file prepare writes: left alone


def test_a_rerun_removes_the_staging_folder_a_killed_prepare_left(tmp_path):
    """kill -9 left DST/.prepare-XXXXXXXX (every pair decoded so far, 52 MB of them) for good.
    Only folders named as prepare names them go, and none a running prepare holds."""
    import fcntl
    import os

    src = make_folders(tmp_path / "src", 4)
    dst = tmp_path / "dst"
    stale = dst / ".prepare-k9x_2ab7"
    save(noise(0), stale / "pool" / "images" / "p00.jpg")
    live = dst / ".prepare-live0001"
    live.mkdir()
    mine = [dst / ".prepare-notes", dst / ".prepare-ABCDEFGH", dst / ".prepare-abcd12345"]
    for folder in mine:
        (folder / "keep").mkdir(parents=True)
    (dst / ".prepare-file0001").write_bytes(b"a file, not a staging folder")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running prepare holds its own
        lines: list[str] = []
        prepare(src, dst, log=lines.append)
    finally:
        os.close(fd)
    assert not stale.exists() and live.is_dir() and (dst / ".prepare-file0001").is_file()
    assert all((folder / "keep").is_dir() for folder in mine)
    assert any("stale" in line and ".prepare-k9x_2ab7" in line for line in lines), lines
    assert sorted(p.name for p in dst.iterdir() if not p.name.startswith(".prepare-")) == \
        ["sources.json", "train", "val"]


def test_dst_inside_src_is_refused(tmp_path):
    src = make_folders(tmp_path / "src", 2)
    with pytest.raises(PrepareError, match="inside SRC"):
        prepare(src, src / "prepared")
    assert not (src / "prepared").exists()
    # Nor may --overwrite remove a DST split that holds SRC.
    inner = make_folders(tmp_path / "dst" / "train" / "src", 2)
    with pytest.raises(PrepareError, match="cannot be replaced"):
        prepare(inner, tmp_path / "dst", overwrite=True)
    assert (inner / "images" / "p00.jpg").exists()


# ------------------------------------------------------------------------------ supervisely


def bitmap_data(mask: np.ndarray, alpha: bool) -> str:
    """Encode as Supervisely does: PNG (palette + transparency when `alpha`), zlib, base64."""
    im = Image.fromarray(mask.astype(np.uint8))
    buf = io.BytesIO()
    if alpha:
        im.putpalette([0, 0, 0, 255, 255, 255])
        im.save(buf, "PNG", transparency=0)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(buf, "PNG")
    return base64.b64encode(zlib.compress(buf.getvalue())).decode()


def supervisely_ann(objects: list[dict]) -> dict:
    return {"description": "", "tags": [], "size": {"height": H, "width": W}, "objects": objects}


POLYGON_WITH_HOLE = {"classTitle": "person_poly", "geometryType": "polygon",
                     "points": {"exterior": [[2, 3], [20, 3], [20, 30], [2, 30]],
                                "interior": [[[6, 8], [10, 8], [10, 12], [6, 12]]]}}
BITMAP = np.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 1]], bool)


def expected_supervisely() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[3:31, 2:21] = 255  # polygon outline pixels belong to the shape
    m[8:13, 6:11] = 0  # the hole, outline included
    m[35:38, 25:29] = BITMAP * 255  # bitmap at origin x=25, y=35
    m[44:48, 28:32] = 255  # second bitmap hangs over the bottom-right corner and is clipped
    return m


def write_dataset(folder: Path, names: list[str], seed: int = 0) -> None:
    for i, name in enumerate(names):
        save(noise(seed + i), folder / "img" / name)
        objects = [POLYGON_WITH_HOLE,
                   {"classTitle": "person_bmp", "geometryType": "bitmap",
                    "bitmap": {"data": bitmap_data(BITMAP, alpha=True), "origin": [25, 35]}},
                   {"classTitle": "person_bmp", "geometryType": "bitmap",
                    "bitmap": {"data": bitmap_data(np.ones((6, 6), bool), alpha=False),
                               "origin": [28, 44]}},
                   {"classTitle": "person_poly", "geometryType": "rectangle",
                    "points": {"exterior": [[0, 0], [31, 47]], "interior": []}}]
        (folder / "ann").mkdir(parents=True, exist_ok=True)
        (folder / "ann" / f"{name}.json").write_text(json.dumps(supervisely_ann(objects)))


def test_supervisely_polygon_hole_and_bitmaps_exact(tmp_path):
    src = tmp_path / "ds"
    write_dataset(src, ["a.png", "b.jpg"])
    save(noise(9), src / "img" / "no_ann.png")
    (src / "ann" / "broken.png.json").write_text("{")
    save(noise(9), src / "img" / "broken.png")

    assert detect_format(src) == "supervisely"
    summary = prepare(src, tmp_path / "dst", val_fraction=0.0)
    assert (summary.fmt, summary.train) == ("supervisely", 2)
    assert {Path(s.source).name: s.reason for s in summary.skipped} == {
        "no_ann.png": "no mask", "broken.png": "mask unreadable"}
    for stem in ("a", "b"):
        np.testing.assert_array_equal(read(tmp_path / "dst" / "train" / "masks" / f"{stem}.png"),
                                      expected_supervisely())
    copied = tmp_path / "dst" / "train" / "images" / "b.jpg"
    assert copied.read_bytes() == (src / "img" / "b.jpg").read_bytes()


def test_supervisely_project_prefixes_colliding_stems(tmp_path):
    src = tmp_path / "project"
    src.mkdir()
    (src / "meta.json").write_text(json.dumps({"classes": [], "tags": []}))
    write_dataset(src / "ds1", ["0001.png", "0002.png"])
    write_dataset(src / "ds2", ["0001.png", "0003.png"], seed=10)

    assert detect_format(src) == "supervisely"
    prepare(src, tmp_path / "dst", val_fraction=0.0)
    stems = outputs(tmp_path / "dst")["train"]
    assert stems == {"ds1_0001", "ds2_0001", "0002", "0003"}
    np.testing.assert_array_equal(read(tmp_path / "dst" / "train" / "images" / "ds2_0001.png"),
                                  noise(10))


# ------------------------------------------------------------------------------ ab


def on_white(seed: int, w: int = W, h: int = H) -> tuple[np.ndarray, np.ndarray]:
    """A person-on-white target [h, w, 3] and its true mask [h, w] bool."""
    mask = person(w, h, top=h // 2 - 10, left=w // 2 - 8).astype(bool)
    b = np.full((h, w, 3), 255, np.uint8)
    # Smooth colours like skin and cloth (pure noise would smear over the white in JPEG).
    rows = np.arange(h, dtype=np.int32)[:, None, None]
    base = np.random.default_rng(seed).integers(40, 180, 3)
    b[mask] = (base + rows * 2 + np.zeros((1, w, 3), np.int32))[mask].clip(0, 240)
    return b, mask


def test_ab_mask_and_person_on_white_targets(tmp_path):
    src = tmp_path / "ab"
    target, truth = on_white(0)
    save(np.concatenate([noise(1), target], axis=1), src / "white.png")
    grey = np.repeat(person(top=5, left=2)[..., None], 3, axis=2)
    save(np.concatenate([noise(2), grey], axis=1), src / "train" / "mask.png")
    save(np.concatenate([noise(3), target], axis=1), src / "val" / "white.png")  # stem collides
    save(noise(4, w=W * 2 + 1), src / "odd.png")

    assert detect_format(src) == "ab"
    summary = prepare(src, tmp_path / "dst", val_fraction=0.0)
    out = tmp_path / "dst" / "train"
    assert summary.fmt == "ab" and summary.train == 3
    assert [(Path(s.source).name, s.reason) for s in summary.skipped] == [
        ("odd.png", "odd width 65: not a side-by-side A|B pair")]
    assert outputs(tmp_path / "dst")["train"] == {"white", "mask", "val_white"}
    np.testing.assert_array_equal(read(out / "images" / "white.png"), noise(1))
    np.testing.assert_array_equal(read(out / "masks" / "white.png"), truth * 255)
    np.testing.assert_array_equal(read(out / "masks" / "mask.png"), person(top=5, left=2))


def jpeg(arr: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_ab_target_rules_on_jpeg():
    # A grey mask survives JPEG exactly: ringing stays far from the 127 threshold.
    grey = np.repeat(person()[..., None], 3, axis=2)
    np.testing.assert_array_equal(ab_target_mask(jpeg(grey)), person().astype(bool))
    # Person on white: all of the person is found; JPEG ringing may add a halo (pixels below
    # NEAR_WHITE), but only within a 16 px JPEG block (4:2:0 MCU) of the person, never beyond.
    for seed in range(3):
        target, truth = on_white(seed, 96, 96)
        got = ab_target_mask(jpeg(target))
        assert got[truth].all()
        near = cv2.dilate(truth.astype(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
        assert not got[~near].any()


# ------------------------------------------------------------------------------ detection


def test_detect_format(tmp_path):
    assert detect_format(make_folders(tmp_path / "f", 1)) == "folders"
    write_dataset(tmp_path / "s" / "img_set", ["x.png"])
    assert detect_format(tmp_path / "s") == "supervisely"
    photos = tmp_path / "photos"
    for i in range(3):
        save(noise(i, w=2 * W), photos / f"{i}.png")  # wide, but the right half is no target
    with pytest.raises(PrepareError, match="layout not recognised"):
        detect_format(photos)
    with pytest.raises(PrepareError, match="layout not recognised"):
        prepare(photos, tmp_path / "dst")
    (tmp_path / "half" / "images").mkdir(parents=True)
    with pytest.raises(PrepareError, match="no masks/"):
        detect_format(tmp_path / "half")


# ------------------------------------------------------------------------------ real data


def test_real_ccp_pairs(tmp_path):
    if not (CCP / "images").is_dir():
        pytest.skip(f"{CCP} not available")
    src = tmp_path / "ccp"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    photos = sorted((CCP / "images").iterdir())[:20]
    for photo in photos:
        (src / "images" / photo.name).symlink_to(photo)
        mask = CCP / "masks" / f"{photo.stem}.png"
        (src / "masks" / mask.name).symlink_to(mask)

    summary = prepare(src, tmp_path / "dst", min_val=0)
    assert (summary.fmt, summary.train, summary.val, summary.skipped) == ("folders", 18, 2, [])
    for part in ("train", "val"):
        for mask in (tmp_path / "dst" / part / "masks").iterdir():
            values = read(mask)
            assert values.ndim == 2 and set(np.unique(values)) <= {0, 255}
            photo = tmp_path / "dst" / part / "images" / f"{mask.stem}.jpg"
            assert photo.read_bytes() == (CCP / "images" / photo.name).read_bytes()
            with Image.open(photo) as im:
                assert im.size == (values.shape[1], values.shape[0])


# ------------------------------------------------------------------------------ photo decoding


def test_a_16_bit_photo_is_prepared_as_hx_infer_decodes_it(tmp_path):
    """prepare had its own decoding: a 16-bit photo whose values were all <= 255 kept them as
    they were (the high byte otherwise), while hx-infer and hx-train fit always keep the high
    byte, so a dark 16-bit photo was trained on 256 times brighter than inference shows it.
    prepare now decodes with hx-infer's reader."""
    from hx_infer.io.images import read_photo

    src = tmp_path / "src"
    dark = noise(0)[..., 0].astype(np.uint16)  # 0..255 of 65535: nearly black
    bright = dark * 257  # the same picture at full range
    save(dark, src / "images" / "dark.png")
    save(bright, src / "images" / "bright.png")
    for stem in ("dark", "bright"):
        save(person(), src / "masks" / f"{stem}.png")
    prepare(src, tmp_path / "dst", val_fraction=0.0, workers=1)
    for stem in ("dark", "bright"):
        prepared = read(tmp_path / "dst" / "train" / "images" / f"{stem}.png")
        np.testing.assert_array_equal(prepared, read_photo(src / "images" / f"{stem}.png"))
    assert read(tmp_path / "dst" / "train" / "images" / "dark.png").max() == 0


def test_a_photo_over_the_pixel_limit_is_skipped_not_left_for_fit_to_refuse(tmp_path, monkeypatch):
    import hx_train.prepare as hxprepare

    monkeypatch.setattr(hxprepare, "DEFAULT_MAX_PIXELS", W * H - 1)
    src = make_folders(tmp_path / "src", 1)
    with pytest.raises(PrepareError):
        prepare(src, tmp_path / "dst", log=lambda line: None, workers=1)
    logs: list[str] = []
    make_folders(tmp_path / "src2", 1)
    save(noise(9, W // 2, H // 2), tmp_path / "src2" / "images" / "small.jpg")
    save(person(W // 2, H // 2, top=2, left=2), tmp_path / "src2" / "masks" / "small.png")
    summary = prepare(tmp_path / "src2", tmp_path / "dst2", log=logs.append, workers=1)
    assert [(Path(s.source).name, s.reason) for s in summary.skipped] == [
        ("p00.jpg", f"unusable size {W}x{H} (over 0 megapixels)")]


# ------------------------------------------------------------------------------ --max-side


def test_max_side_shrinks_large_pairs_to_jpeg_and_binary_masks_and_copies_small_ones(tmp_path):
    src = tmp_path / "src"
    save(noise(0, 64, 96), src / "images" / "big.jpg")
    big_mask = np.zeros((96, 64), np.uint8)
    big_mask[20:60, 16:48] = 255  # 40x32 -> 20x16 at half size
    big_mask[81, 1] = 255  # a stray pixel: a quarter of its shrunk pixel, so it goes
    big_mask[84:, 40:42] = 255  # a 2 px limb on even columns covers its shrunk pixels: it stays
    save(big_mask, src / "masks" / "big.png")
    save(noise(1, 64, 96), src / "images" / "speck.jpg")
    speck = np.zeros((96, 64), np.uint8)
    speck[50, 30] = 255  # one pixel of person: nothing is left of it at half size
    save(speck, src / "masks" / "speck.png")
    save(noise(2, 40, 24), src / "images" / "small.png")
    save(person(40, 24, top=2, left=2)[:24, :40], src / "masks" / "small.png")

    summary = prepare(src, tmp_path / "dst", val_fraction=0, max_side=48, jpeg_quality=60, workers=1)

    assert [(s.source.rsplit("/", 1)[-1], s.reason) for s in summary.skipped] == \
        [("speck.jpg", "empty mask at --max-side 48")]
    train = tmp_path / "dst" / "train"
    with Image.open(train / "images" / "big.jpg") as im:
        assert (im.format, im.size) == ("JPEG", (32, 48))
    mask = read(train / "masks" / "big.png")
    assert mask.shape == (48, 32) and set(np.unique(mask)) == {0, 255}
    expected = np.zeros((48, 32), np.uint8)
    expected[10:30, 8:24] = 255
    expected[42:, 20] = 255
    np.testing.assert_array_equal(mask, expected)
    assert (train / "images" / "small.png").read_bytes() == (src / "images" / "small.png").read_bytes()
    record = json.loads((tmp_path / "dst" / "sources.json").read_text())
    assert (record["max_side"], record["jpeg_quality"]) == (48, 60)
    # The JPEG is encoded at the quality asked for: a higher one is a larger file.
    finer = prepare(src, tmp_path / "finer", val_fraction=0, max_side=48, jpeg_quality=95, workers=1)
    assert finer.train == 2
    assert (tmp_path / "finer/train/images/big.jpg").stat().st_size > (train / "images" / "big.jpg").stat().st_size


def test_bad_max_side_and_jpeg_quality_are_refused(tmp_path):
    src = make_folders(tmp_path / "src", 3)
    with pytest.raises(PrepareError, match="--max-side: must be at least 16"):
        prepare(src, tmp_path / "dst", max_side=8)
    with pytest.raises(PrepareError, match="--jpeg-quality: must be from 1 to 100"):
        prepare(src, tmp_path / "dst", max_side=16, jpeg_quality=0)
    assert not (tmp_path / "dst").exists()
