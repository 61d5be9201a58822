"""hx_infer.io.images on a corpus of odd but valid photos and of broken files, made in tmp_path."""
from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from hx_infer.io.images import (PNG_COMPRESSIONS, TEMP_MARK, DecodeError, atomic_write, clean_temporaries,
                                encode_jpeg, encode_png, iter_photos, photo_size, read_photo,
                                read_photo_stream)
from shared_data import SHARED_DATA

CCP_IMAGES = SHARED_DATA / "ccp" / "images"


def quadrants(w: int, h: int) -> np.ndarray:
    """[h, w, 3] uint8 with four flat colours, so orientation survives JPEG compression."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (255, 0, 0)
    rgb[: h // 2, w // 2:] = (0, 255, 0)
    rgb[h // 2:, : w // 2] = (0, 0, 255)
    rgb[h // 2:, w // 2:] = (255, 255, 255)
    return rgb


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_16bit_rgb(values: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    h, w, _ = values.shape
    raw = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def png_claiming(w: int, h: int) -> bytes:
    """A grey PNG whose header says w x h but holds almost no data: a decompression bomb's header."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def jpeg_bytes(rgb: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, **options)
    return buf.getvalue()


def exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rgb = quadrants(40, 24)
    for orientation in (3, 6):
        save(Image.fromarray(rgb), root / f"exif{orientation}.jpg", quality=95,
             exif=exif_with_orientation(orientation))
    rgba = np.dstack([rgb, np.zeros((24, 40), np.uint8)])  # fully transparent: colour must survive
    rgba[:, :20, 3] = 255
    save(Image.fromarray(rgba, "RGBA"), root / "alpha.png")
    save(Image.fromarray(rgb).convert("L"), root / "gray.png")
    save(Image.fromarray(np.array([[0x1234, 0x8000, 65535, 300]] * 3, np.uint16)), root / "gray16.png")
    (root / "rgb16.png").write_bytes(png_16bit_rgb(np.array([[[0x1234, 0x8000, 65535], [300, 0, 0xFF00]]],
                                                             np.uint16)))
    save(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), root / "cmyk.jpg", quality=95)
    save(Image.fromarray(rgb).convert("P"), root / "palette.png")
    save(Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]])[..., :2], "LA"), root / "la.png")
    save(Image.fromarray(rgb), root / "UPPER.JPG", quality=95)
    save(Image.fromarray(quadrants(17, 23)), root / "odd.png")
    save(Image.fromarray(rgb), root / "photo.webp", lossless=True)
    save(Image.fromarray(rgb), root / "photo.bmp")
    save(Image.fromarray(rgb), root / "photo.tiff")
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    full_jpeg = jpeg_bytes(quadrants(64, 48))
    (bad / "truncated.jpg").write_bytes(full_jpeg[: len(full_jpeg) // 2])
    (bad / "truncated_progressive.jpg").write_bytes(
        jpeg_bytes(quadrants(64, 48), progressive=True)[:-200])
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(png, "PNG")
    (bad / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (bad / "text.jpg").write_text("this is not a photo\n")
    (bad / "huge.png").write_bytes(png_claiming(45000, 3000))
    return root


# ---- reading -------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    path = save(Image.fromarray(quadrants(40, 24)), tmp_path / "o.jpg", quality=95,
                exif=exif_with_orientation(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = read_photo(path)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert photo_size(path) == (got.shape[1], got.shape[0])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_other_formats(fmt):
    buf = io.BytesIO()
    Image.fromarray(quadrants(40, 24)).save(buf, fmt, exif=exif_with_orientation(6))
    data = buf.getvalue()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = read_photo(Path("x"), data=data)
    assert got.shape == (40, 24, 3)
    assert np.array_equal(got, expected)
    assert photo_size(Path("x"), data=data) == (24, 40)


def test_orientation_6_rotates_clockwise(corpus):
    got = read_photo(corpus / "exif6.jpg")  # stored 40x24, shown 24x40
    assert got.shape == (40, 24, 3)
    # stored top-left (red) is shown at the top-right after a quarter turn clockwise
    assert np.abs(got[2, -3].astype(int) - (255, 0, 0)).max() < 40
    assert np.abs(got[-3, 2].astype(int) - (255, 255, 255)).max() < 40
    assert photo_size(corpus / "exif6.jpg") == (24, 40)


def test_orientation_3_turns_upside_down(corpus):
    got = read_photo(corpus / "exif3.jpg")
    assert got.shape == (24, 40, 3)
    assert np.abs(got[-3, -3].astype(int) - (255, 0, 0)).max() < 40  # red is now bottom-right


def test_every_mode_becomes_rgb_uint8(corpus):
    for name in ["alpha.png", "gray.png", "gray16.png", "rgb16.png", "cmyk.jpg", "palette.png",
                 "la.png", "UPPER.JPG", "odd.png", "photo.webp", "photo.bmp", "photo.tiff"]:
        got = read_photo(corpus / name)
        assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3, name
        assert photo_size(corpus / name) == (got.shape[1], got.shape[0]), name


def test_rgba_drops_alpha_without_compositing(corpus):
    got = read_photo(corpus / "alpha.png")
    assert np.array_equal(got, quadrants(40, 24))  # transparent half keeps its colours


def test_16bit_grey_keeps_the_high_byte(corpus):
    got = read_photo(corpus / "gray16.png")
    assert got[0, :, 0].tolist() == [0x12, 0x80, 0xFF, 0x01]  # not clipped to 255
    assert np.array_equal(got[..., 0], got[..., 2])


def test_16bit_rgb_keeps_the_high_byte(corpus):
    got = read_photo(corpus / "rgb16.png")
    assert got.tolist() == [[[0x12, 0x80, 0xFF], [0x01, 0x00, 0xFF]]]


def test_cmyk_red_reads_as_red(corpus):
    got = read_photo(corpus / "cmyk.jpg")
    assert got.shape == (10, 20, 3)
    assert np.abs(got.reshape(-1, 3).mean(0) - (255, 0, 0)).max() < 20


def test_grey_and_palette_keep_their_look(corpus):
    gray = read_photo(corpus / "gray.png")
    assert np.array_equal(gray[..., 0], np.asarray(Image.open(corpus / "gray.png")))
    palette = read_photo(corpus / "palette.png")
    assert np.abs(palette.astype(int) - quadrants(40, 24)).max() <= 8


def test_odd_size_and_data_argument(corpus):
    path = corpus / "odd.png"
    from_path = read_photo(path)
    assert from_path.shape == (23, 17, 3)
    assert np.array_equal(read_photo(Path("any-name"), data=path.read_bytes()), from_path)
    assert photo_size(Path("any-name"), data=path.read_bytes()) == (17, 23)


@pytest.mark.parametrize("name, reason", [
    ("zero.jpg", "zero bytes"),
    ("truncated.jpg", "truncated image"),
    ("truncated_progressive.jpg", "truncated image"),
    ("truncated.png", "truncated image"),
    ("text.jpg", "not an image"),
    ("huge.png", "45000x3000 = 135 megapixels over --max-pixels 100000000"),
])
def test_bad_files_give_one_line_reasons(corpus, name, reason):
    with pytest.raises(DecodeError) as info:
        read_photo(corpus / "bad" / name)
    assert str(info.value) == reason


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(DecodeError, match="cannot read"):
        read_photo(tmp_path / "absent.jpg")
    with pytest.raises(DecodeError, match="cannot read"):
        photo_size(tmp_path / "absent.jpg")


class Endless(io.RawIOBase):
    """A stream that starts with `head` and then gives zeros for ever, as /dev/zero does."""

    def __init__(self, head: bytes = b""):
        self.head, self.given = head, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = len(buffer)
        chunk = (self.head[self.given:] + bytes(n))[:n]
        buffer[:n] = chunk
        self.given += n
        return n


def test_read_photo_stream_stops_where_no_photo_goes():
    png = encode_png(quadrants(8, 6))
    assert read_photo_stream(io.BytesIO(png)) == png
    for data, reason in [(b"", "zero bytes"), (b"plain text", "not an image"), (b"GIF89a......", "not an image")]:
        with pytest.raises(DecodeError, match=reason):
            read_photo_stream(io.BytesIO(data))
    with pytest.raises(DecodeError, match="not an image"):
        read_photo_stream(Endless())  # /dev/zero: after its first 16 bytes
    endless = Endless(png)
    with pytest.raises(DecodeError, match="more than a photo of --max-pixels 100 holds"):
        read_photo_stream(io.BufferedReader(endless), max_pixels=100)
    assert endless.given <= 100 * 8 + (32 << 20) + (1 << 20)  # 8 bytes a pixel and the JPEG slack


def test_pixel_limit_is_ours_not_pillows():
    # 200 MP is over Pillow's own refusal threshold (179 MP) and 100 MP over its warning (89 MP);
    # with --max-pixels above them, hx must go on to decode (and find the data missing).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for w, h in [(20000, 10000), (10000, 10000)]:
            with pytest.raises(DecodeError) as info:
                read_photo(Path("bomb.png"), data=png_claiming(w, h), max_pixels=300_000_000)
            assert str(info.value) == "truncated image"
            assert photo_size(Path("bomb.png"), data=png_claiming(w, h)) == (w, h)
    with pytest.raises(DecodeError, match="over --max-pixels 1000"):
        read_photo(Path("small.png"), data=png_claiming(100, 11), max_pixels=1000)


def test_reduce_to_decodes_jpeg_smaller_upright(tmp_path):
    rgb = quadrants(400, 240)
    path = save(Image.fromarray(rgb), tmp_path / "big.jpg", quality=95, exif=exif_with_orientation(6))
    full = read_photo(path)
    small = read_photo(path, reduce_to=64)
    assert full.shape == (400, 240, 3)
    assert max(small.shape[:2]) >= 64 and max(small.shape[:2]) < 200
    assert small.shape[0] > small.shape[1]  # still upright
    resized = cv2.resize(full, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(resized.astype(int) - small).mean() < 8
    png = save(Image.fromarray(rgb), tmp_path / "big.png")
    assert read_photo(png, reduce_to=64).shape == (240, 400, 3)  # only JPEGs shrink


def test_ccp_photos_read_upright_if_present():
    if not CCP_IMAGES.is_dir():
        pytest.skip("shared ccp data not here")
    for path in sorted(CCP_IMAGES.glob("*.jpg"))[:3]:
        rgb = read_photo(path)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert np.array_equal(rgb, expected)
        assert min(read_photo(path, reduce_to=256).shape[:2]) >= 256 * min(rgb.shape[:2]) // max(rgb.shape[:2])


# ---- encoding ------------------------------------------------------------------------------

def _cutout_like(h: int, w: int) -> np.ndarray:
    """[h, w, 4] uint8: a smooth photo with a soft-edged disc as alpha, which compresses like a cutout."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1)
    alpha = np.clip(255 - (np.hypot(yy - h / 2, xx - w / 2) - h / 4) * 16, 0, 255)
    return np.dstack([rgb, alpha]).astype(np.uint8)


@pytest.mark.parametrize("compression", PNG_COMPRESSIONS)
def test_encode_png_round_trips_and_is_deterministic(compression):
    rng = np.random.default_rng(1)
    smooth = _cutout_like(40, 30)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in [(23, 17), (23, 17, 3), (23, 17, 4)]]
    images += [smooth, smooth[..., :3], smooth[..., 3], smooth[::2, ::3]]  # the last one is a strided view
    for image in images:
        data = encode_png(image, compression)
        assert data == encode_png(image.copy(), compression)
        back = np.asarray(Image.open(io.BytesIO(data)))
        assert np.array_equal(back, image)  # Pillow reads RGB(A) order: no channel swap


def test_encode_png_gives_the_same_bytes_in_another_process(tmp_path):
    """Resume compares nothing but files written by earlier runs: the bytes must not depend on the process."""
    image = _cutout_like(60, 50)
    np.save(tmp_path / "image.npy", image)
    code = ("import sys, hashlib, numpy as np; from hx_infer.io.images import encode_png, PNG_COMPRESSIONS; "
            "image = np.load(sys.argv[1]); "
            "print(' '.join(hashlib.sha256(encode_png(image, c)).hexdigest() for c in PNG_COMPRESSIONS))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "image.npy")], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [hashlib.sha256(encode_png(image, c)).hexdigest() for c in PNG_COMPRESSIONS]


def test_png_compression_choices_trade_bytes():
    image = _cutout_like(240, 180)
    sizes = {c: len(encode_png(image, c)) for c in PNG_COMPRESSIONS}
    assert sizes["small"] < sizes["balanced"] < sizes["fast"]
    with pytest.raises(ValueError, match="--png-compression 'tiny'"):
        encode_png(image, "tiny")


def test_encode_jpeg_keeps_rgb_order_and_is_deterministic():
    rgb = quadrants(32, 16)
    data = encode_jpeg(rgb, quality=90)
    assert data == encode_jpeg(rgb.copy(), quality=90)
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(back[2, 2] - (255, 0, 0)).max() < 30


def test_encoders_reject_wrong_input():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(np.zeros((4, 4, 3), np.uint8), quality=101)


# ---- writing -------------------------------------------------------------------------------

def test_atomic_write_creates_folders_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "x.png"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.png"]


def test_atomic_write_no_clobber(tmp_path):
    target = tmp_path / "x.png"
    atomic_write(target, b"mine", replace=False)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"other", replace=False)
    assert target.read_bytes() == b"mine"
    assert os.listdir(tmp_path) == ["x.png"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(OSError):
        atomic_write(folder, b"data")  # os.replace onto a folder fails
    assert sorted(os.listdir(tmp_path)) == ["dir.png", "x.png"]
    assert os.listdir(folder) == []


def test_atomic_write_long_name_fits(tmp_path):
    target = tmp_path / ("é" * 120 + ".png")  # 244 bytes: the temporary must be shortened
    atomic_write(target, b"x")
    assert target.read_bytes() == b"x"


def test_clean_temporaries_removes_only_ours(tmp_path):
    (tmp_path / "sub").mkdir()
    keep = [tmp_path / "photo.jpg", tmp_path / "sub" / "a.png", tmp_path / "sub" / "hx-tmp.txt",
            tmp_path / f"notes{TEMP_MARK}", tmp_path / f".photo.png.abc{TEMP_MARK}"]  # not names hx makes
    stale = [tmp_path / f".photo.png.0123456789ab{TEMP_MARK}", tmp_path / "sub" / f".a.png.ba9876543210{TEMP_MARK}"]
    for path in keep + stale:
        path.write_bytes(b"x")
    assert clean_temporaries(tmp_path, min_age_s=3600) == 0  # all fresh: another run may own them
    assert clean_temporaries(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


# ---- listing -------------------------------------------------------------------------------

def test_iter_photos_sorted_filtered_recursive(tmp_path):
    names = ["b.jpg", "a/z.PNG", "a/y.txt", "a-c/x.webp", "a/b/c.tiff", "C.JPEG", ".hidden.jpg",
             "._fork.jpg", ".cache/d.jpg", f".e.jpg.123{TEMP_MARK}", "notes.md", "f.bmp", "g.tif", "h.gif"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_photos(tmp_path)]
    expected = ["C.JPEG", "a/b/c.tiff", "a/z.PNG", "a-c/x.webp", "b.jpg", "f.bmp", "g.tif"]
    assert got == sorted(expected, key=lambda p: Path(p).parts)
    assert got == expected
    assert [p.name for p in iter_photos(tmp_path, glob="*.jpg")] == ["b.jpg"]
    assert [p.name for p in iter_photos(tmp_path, glob="*.JPG")] == ["b.jpg"]
    assert [p.name for p in iter_photos(tmp_path, glob="a/*")] == ["c.tiff", "z.PNG"]
    hidden = [p.name for p in iter_photos(tmp_path, include_hidden=True)]
    assert {".hidden.jpg", "._fork.jpg", "d.jpg"} <= set(hidden)


def test_iter_photos_survives_symlink_loops(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "p.jpg").write_bytes(b"x")
    try:
        os.symlink(tmp_path, tmp_path / "a" / "loop")
        os.symlink(tmp_path / "a", tmp_path / "alias")
    except OSError:
        pytest.skip("no symlinks here")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_photos(tmp_path)]
    assert got == ["a/p.jpg", "alias/p.jpg"]  # the loop back to the root is not entered


def test_iter_photos_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        list(iter_photos(tmp_path / "absent"))


def test_iter_photos_reports_unreadable_folders(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "p.jpg").write_bytes(b"x")
    (tmp_path / "q.jpg").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path):  # chmod 000 would not stop root, so refuse the listing here instead
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(PermissionError):
        list(iter_photos(tmp_path))
    seen = []
    got = [p.name for p in iter_photos(tmp_path, on_error=lambda folder, e: seen.append(folder))]
    assert got == ["q.jpg"] and seen == [locked]
