"""Hostile inputs met by the leaf modules (issue 13): a tampered or contradictory model folder,
RGBA cutouts that must not keep the removed background, JPEGs damaged midway, files that are
not regular files, huge non-images, Matroska/WebM videos cut short or damaged, and the words
of --background and --max-pixels errors. Every fixture is made here, tiny, on the CPU."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from hx_infer import model as model_module
from hx_infer.io.images import (DecodeError, atomic_write, clean_temporaries, decode_photo, iter_photos,
                                read_photo, read_photo_and_view)
from hx_infer.model import ModelError, load_model_dir, sha256_file
from hx_infer_asserts import assert_one_line_error, hx

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("own_hash_cache")


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    root = tmp_path / "model"
    shutil.copytree(tiny_model_dir, root)
    return root


@pytest.fixture
def photo_dir(tmp_path, make_disc_photo) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(make_disc_photo(48, 64)[0]).save(folder / "a.png")
    return folder


def flip_a_byte(path: Path, where: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 1
    path.write_bytes(bytes(data))


# --- the model folder ------------------------------------------------------------------------


def test_a_tampered_graph_stops_the_run_with_one_line(model_copy, photo_dir, tmp_path):
    flip_a_byte(model_copy / "model.onnx")  # same size, still a loadable graph
    real = sha256_file(model_copy / "model.onnx")
    result = hx("run", photo_dir, tmp_path / "out", "--model", model_copy, "--backend", "ort", "--quiet")
    assert_one_line_error(result, str(model_copy / "model.onnx"), "sha256", real[:16])
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_a_file_rewritten_under_its_old_mtime_is_still_found(model_copy):
    load_model_dir(model_copy, verify=True)  # hashed and cached
    weights = model_copy / "generator.pt"
    before = weights.stat()
    flip_a_byte(weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime as they were
    with pytest.raises(ModelError, match="generator.pt: sha256"):
        load_model_dir(model_copy, verify=True)


def test_hashes_are_cached_across_opens_and_processes(model_copy, monkeypatch):
    calls = []
    real_hash = model_module.sha256_file
    monkeypatch.setattr(model_module, "sha256_file", lambda path: calls.append(path) or real_hash(path))
    first = load_model_dir(model_copy, verify=True)
    assert len(calls) == 3  # model.onnx, model.fp16.onnx, generator.pt
    monkeypatch.setattr(model_module, "_hashes_seen", {})  # a new process: only the file cache is left
    again = load_model_dir(model_copy, verify=True)
    assert len(calls) == 3 and again.hashes == first.hashes
    assert first.sha256 == sha256_file(model_copy / "model.onnx")


def test_the_report_quotes_the_files_own_hash(model_copy, photo_dir, tmp_path):
    result = hx("run", photo_dir, tmp_path / "out", "--model", model_copy, "--backend", "ort", "--quiet",
                "--outputs", "alpha")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out/hx-report.json").read_text())
    assert report["model"]["sha256"] == sha256_file(model_copy / "model.onnx")


@pytest.mark.parametrize("field, value, outputs, needle", [
    ("size", 128, "alpha", "the card says size 128"),
    ("target", "rgb", "composite", "the card says target rgb"),
])
def test_a_card_that_contradicts_its_graph_is_one_line(model_copy, photo_dir, tmp_path, field, value,
                                                       outputs, needle):
    card = json.loads((model_copy / "model.json").read_text())
    card[field] = value
    (model_copy / "model.json").write_text(json.dumps(card))
    result = hx("run", photo_dir, tmp_path / "out", "--model", model_copy, "--backend", "ort", "--quiet",
                "--outputs", outputs)
    assert_one_line_error(result, "model.json contradicts model.onnx", needle)


@pytest.mark.parametrize("card, needle", [
    ([1, 2], "not a model card"),
    ("CARD with sha256 a list", "records no sha256"),
    ("CARD with a hash that is a number", "not a file name and a hash"),
    ("CARD with a hash of a file outside the folder", "not a file name and a hash"),
])
def test_a_card_of_the_wrong_shape_is_one_line(model_copy, photo_dir, tmp_path, card, needle):
    """A hand-edited or damaged model.json: one line naming it, exit 2, not an internal error."""
    if isinstance(card, str):
        real = json.loads((model_copy / "model.json").read_text())
        if "a list" in card:
            real["sha256"] = list(real["sha256"].values())
        elif "a number" in card:
            real["sha256"]["model.onnx"] = 12
        else:
            real["sha256"]["../model.onnx"] = real["sha256"]["model.onnx"]
        card = real
    (model_copy / "model.json").write_text(json.dumps(card))
    result = hx("run", photo_dir, tmp_path / "out", "--model", model_copy, "--backend", "ort", "--quiet",
                "--outputs", "alpha")
    assert_one_line_error(result, "model.json", needle)


# --- cutouts and the words of option errors ---------------------------------------------------


def test_rgba_cutouts_hold_nothing_of_the_removed_background(photo_dir, tmp_path, tiny_model_dir, monkeypatch):
    from hx_infer.backends.ort import OrtBackend

    def left_half_background(self, batch):  # [n, 1, S, S]: alpha 0 on the left, 1 on the right
        out = np.ones((len(batch), 1) + batch.shape[2:], np.float32)
        out[..., : batch.shape[3] // 2] = 0
        return out

    monkeypatch.setattr(OrtBackend, "_run", left_half_background)
    result = hx("run", photo_dir, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet",
                "--outputs", "rgba")
    assert result.exit_code == 0, result.output
    rgba = np.asarray(Image.open(tmp_path / "out/rgba/a.png"))
    transparent = rgba[..., 3] == 0
    assert transparent.any() and not rgba[transparent][:, :3].any()


@pytest.mark.parametrize("spec, needle", [
    ("reddish", "use white, black, a CSS colour name"),
    ("nowhere/bg.jpg", "no such file"),
])
def test_background_errors_name_the_option_once(photo_dir, tmp_path, tiny_model_dir, spec, needle):
    result = hx("run", photo_dir, tmp_path / "out", "--model", tiny_model_dir, "--background", spec)
    assert_one_line_error(result, f"--background {spec!r}: ", needle)
    assert result.stderr.count("--background") == 1


def test_a_css_colour_name_is_a_background(photo_dir, tmp_path, tiny_model_dir):
    result = hx("run", photo_dir, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet",
                "--outputs", "composite", "--background", "teal")
    assert result.exit_code == 0, result.output


def test_max_pixels_of_one_counts_pixels_not_zero_megapixels(photo_dir, tmp_path, tiny_model_dir):
    result = hx("run", photo_dir, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet",
                "--max-pixels", "1")
    assert result.exit_code == 1
    reason = json.loads((tmp_path / "out/hx-report.json").read_text())["failures"][0]["reason"]
    assert reason == "64x48 = 3072 pixels over --max-pixels 1"


# --- JPEGs damaged midway ---------------------------------------------------------------------


def _jpeg(make_disc_photo, height: int = 96, width: int = 128, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_disc_photo(height, width)[0]).save(buf, "JPEG", quality=90, **options)
    return buf.getvalue()


def _cut_midway(data: bytes) -> bytes:
    """Bytes dropped from the middle of the entropy-coded data: libjpeg only warns ("Corrupt JPEG
    data: premature end of data segment") and Pillow returns a photo with a grey bottom half."""
    middle = len(data) // 2
    return data[:middle] + data[middle + len(data) // 8:]


def _overwritten_midway(data: bytes, seed: int) -> bytes:
    """Random bytes, none 0xFF, over an eighth of the middle: decoded as pixels, then left over."""
    middle, length = len(data) // 2, len(data) // 8
    noise = np.random.default_rng(seed).integers(0, 255, length, np.uint8).tobytes()
    return data[:middle] + noise + data[middle + length:]


@pytest.mark.parametrize("damage, reason", [
    (_cut_midway, "premature end of data segment"),
    (lambda data: _overwritten_midway(data, 0), "bad Huffman code"),
    (lambda data: _overwritten_midway(data, 1), "998 extraneous bytes before marker 0xd9"),
])
@pytest.mark.parametrize("reduce_to", [None, 32])
def test_a_jpeg_damaged_midway_is_a_decode_error(tmp_path, make_disc_photo, damage, reason, reduce_to):
    path = tmp_path / "damaged.jpg"
    path.write_bytes(damage(_jpeg(make_disc_photo)))
    with Image.open(path) as pillow:
        pillow.load()  # what hx relied on so far: no error at all
    with pytest.raises(DecodeError) as info:
        read_photo(path, reduce_to=reduce_to)
    assert str(info.value) == f"corrupt JPEG data ({reason})"


def test_a_few_padding_bytes_before_the_end_are_not_damage(tmp_path, make_disc_photo):
    data = _jpeg(make_disc_photo)
    assert data.endswith(b"\xff\xd9")
    plain, padded = tmp_path / "plain.jpg", tmp_path / "padded.jpg"
    plain.write_bytes(data)
    padded.write_bytes(data[:-2] + b"\x00\x00" + data[-2:])  # libjpeg: "2 extraneous bytes before marker 0xd9"
    assert np.array_equal(read_photo(padded), read_photo(plain))


def _padded(data: bytes, stray: int = 12) -> bytes:
    """Stray bytes spliced in before the end marker: what padding cameras write looks like, and all
    that libjpeg says of some damage midway ("N extraneous bytes before marker 0xd9"; the entropy
    decoder may have taken a few of them in as data already, so N can be fewer)."""
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + b"\x00" * stray + data[-2:]


@pytest.mark.parametrize("reduce_to", [None, 32])
def test_stray_bytes_before_the_end_are_decoded_and_named(tmp_path, make_disc_photo, reduce_to):
    plain, padded = tmp_path / "plain.jpg", tmp_path / "padded.jpg"
    plain.write_bytes(_jpeg(make_disc_photo))
    padded.write_bytes(_padded(plain.read_bytes()))
    photo = decode_photo(padded, reduce_to=reduce_to)
    assert np.array_equal(photo.rgb, decode_photo(plain, reduce_to=reduce_to).rgb)
    assert re.fullmatch(r"\d+ stray bytes before the JPEG end marker: padding, or damage midway .*", photo.warning)
    assert decode_photo(plain, reduce_to=reduce_to).warning is None


@pytest.mark.parametrize("outputs", ["alpha", "alpha,rgba"])  # the reduced decode alone; full and reduced
def test_a_jpeg_with_stray_bytes_is_processed_and_listed_as_a_warning(tmp_path, make_disc_photo, tiny_model_dir,
                                                                      outputs):
    src = tmp_path / "in"
    src.mkdir()
    (src / "clean.jpg").write_bytes(_jpeg(make_disc_photo))
    (src / "padded.jpg").write_bytes(_padded(_jpeg(make_disc_photo)))
    result = hx("run", src, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet",
                "--outputs", outputs)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out/hx-report.json").read_text())
    assert report["counts"] == {"processed": 2, "skipped": 0, "failed": 0} and report["failures"] == []
    [warning] = report["warnings"]  # the clean photo has none
    assert warning["path"] == str(src / "padded.jpg")
    assert re.match(r"\d+ stray bytes before the JPEG end marker", warning["reason"])  # libjpeg counts them
    for kind in outputs.split(","):
        assert (tmp_path / f"out/{kind}/padded.png").is_file() and (tmp_path / f"out/{kind}/clean.png").is_file()
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("hx-infer: 2 processed, 0 skipped, 0 failed in ") and "; 1 photo with a warning;" in summary


def test_a_clean_run_has_no_warnings(tmp_path, make_disc_photo, tiny_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    (src / "clean.jpg").write_bytes(_jpeg(make_disc_photo))
    result = hx("run", src, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out/hx-report.json").read_text())["warnings"] == []
    assert "warning" not in result.stderr


def _clean_and_padded(tmp_path, make_disc_photo) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    (src / "clean.jpg").write_bytes(_jpeg(make_disc_photo))
    (src / "padded.jpg").write_bytes(_padded(_jpeg(make_disc_photo)))
    return src


def _run_alpha(src, out, model, *more) -> tuple[dict, str]:
    """-> (report, summary line) of a run that exits 0."""
    result = hx("run", src, out, "--model", model, "--backend", "ort", "--quiet", "--outputs", "alpha", *more)
    assert result.exit_code == 0, result.output
    return json.loads((out / "hx-report.json").read_text()), result.stderr.strip().splitlines()[-1]


def test_a_rerun_lists_the_warnings_of_the_photos_it_skips(tmp_path, make_disc_photo, tiny_model_dir):
    """A run killed before its report is resumed by rerunning it, which skips the photos done: their
    warnings come from OUTPUT/hx-index.sqlite, kept with each photo's record (before: the rerun's
    report listed none, and the archive's final report missed them). A photo redone takes its new
    decode's warning, or none."""
    src, out = _clean_and_padded(tmp_path, make_disc_photo), tmp_path / "out"
    first, _ = _run_alpha(src, out, tiny_model_dir)
    assert [w["path"] for w in first["warnings"]] == [str(src / "padded.jpg")]
    (out / "hx-report.json").unlink()  # as a run killed before its end leaves OUTPUT
    report, summary = _run_alpha(src, out, tiny_model_dir)
    assert report["counts"] == {"processed": 0, "skipped": 2, "failed": 0}
    assert report["warnings"] == first["warnings"]
    assert "; 1 photo with a warning;" in summary

    (src / "padded.jpg").write_bytes(_jpeg(make_disc_photo, 90, 120))  # replaced by a clean photo
    report, summary = _run_alpha(src, out, tiny_model_dir)
    assert report["counts"] == {"processed": 1, "skipped": 1, "failed": 0}
    assert report["warnings"] == [] and "with a warning" not in summary
    report, _ = _run_alpha(src, out, tiny_model_dir)
    assert report["counts"]["skipped"] == 2 and report["warnings"] == []

    (src / "padded.jpg").write_bytes(_padded(_jpeg(make_disc_photo)))
    report, _ = _run_alpha(src, out, tiny_model_dir, "--overwrite")
    assert report["counts"]["processed"] == 2 and report["warnings"] == first["warnings"]
    report, _ = _run_alpha(src, out, tiny_model_dir)
    assert report["counts"]["skipped"] == 2 and report["warnings"] == first["warnings"]


def test_an_index_from_before_warnings_still_resumes(tmp_path, make_disc_photo, tiny_model_dir):
    """OUTPUT/hx-index.sqlite of an hx that kept no warnings: opened, it gains the column; its
    records still decide what is skipped, and hold no warning."""
    src, out = _clean_and_padded(tmp_path, make_disc_photo), tmp_path / "out"
    first, _ = _run_alpha(src, out, tiny_model_dir)
    with contextlib.closing(sqlite3.connect(out / "hx-index.sqlite")) as db:  # the schema before warnings
        rows = db.execute("SELECT name, source, size, mtime_ns FROM made").fetchall()
        db.execute("DROP TABLE made")
        db.execute("CREATE TABLE made (name BLOB PRIMARY KEY, source BLOB NOT NULL, "
                   "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL)")
        db.executemany("INSERT INTO made VALUES (?, ?, ?, ?)", rows)
        db.commit()
    assert len(rows) == 2
    report, _ = _run_alpha(src, out, tiny_model_dir)
    assert report["counts"] == {"processed": 0, "skipped": 2, "failed": 0} and report["warnings"] == []

    other = tmp_path / "s2" / "clean.jpg"  # another photo under a recorded name: still refused
    other.parent.mkdir()
    other.write_bytes(_jpeg(make_disc_photo, 90, 120))
    result = hx("run", other.parent, out, "--model", tiny_model_dir, "--backend", "ort", "--quiet", "--outputs", "alpha")
    assert result.exit_code == 1, result.output
    [failure] = json.loads((out / "hx-report.json").read_text())["failures"]
    assert failure["path"] == str(other) and str(src / "clean.jpg") in failure["reason"]

    st = (src / "padded.jpg").stat()
    os.utime(src / "padded.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: redone
    report, _ = _run_alpha(src, out, tiny_model_dir)
    assert report["counts"] == {"processed": 1, "skipped": 1, "failed": 0}
    report, _ = _run_alpha(src, out, tiny_model_dir)
    assert report["counts"]["skipped"] == 2 and report["warnings"] == first["warnings"]


def test_a_painting_model_lists_stray_bytes_as_a_warning(tmp_path, make_disc_photo, tiny_rgb_model_dir):
    from hx_infer import Extractor

    src = tmp_path / "in"
    src.mkdir()
    (src / "padded.jpg").write_bytes(_padded(_jpeg(make_disc_photo)))
    with Extractor(tiny_rgb_model_dir, backend="ort", device="cpu") as ex:
        report = ex.run(src, tmp_path / "out", outputs="composite", progress=False)
    assert report["counts"]["processed"] == 1
    assert [w["path"] for w in report["warnings"]] == [str(src / "padded.jpg")]


@pytest.mark.parametrize("outputs", ["alpha", "alpha,rgba"])
def test_a_damaged_jpeg_is_reported_not_processed(tmp_path, make_disc_photo, tiny_model_dir, outputs):
    src = tmp_path / "in"
    src.mkdir()
    (src / "damaged.jpg").write_bytes(_cut_midway(_jpeg(make_disc_photo)))
    (src / "good.jpg").write_bytes(_jpeg(make_disc_photo))
    result = hx("run", src, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet",
                "--outputs", outputs)
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out/hx-report.json").read_text())
    assert report["counts"] == {"processed": 1, "skipped": 0, "failed": 1}
    assert report["failures"][0]["reason"].startswith("corrupt JPEG data")
    assert not (tmp_path / "out/alpha/damaged.png").exists()


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_strict_decoding_gives_pillows_pixels(tmp_path, make_disc_photo, mode, orientation):
    """The strict decoder must not move a pixel: same photo, same scale, same array as Pillow."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(make_disc_photo(90, 130, seed=orientation)[0]).convert(mode).save(path, quality=90, exif=exif)
    for reduce_to in (None, 40, 20):
        with Image.open(path) as pillow:
            if reduce_to is not None:
                w, h = pillow.size
                pillow.draft("RGB", (w * reduce_to // max(w, h), h * reduce_to // max(w, h)))
            expected = np.asarray(ImageOps.exif_transpose(pillow).convert("RGB"))
        got, size, _ = decode_photo(path, reduce_to=reduce_to)
        assert np.array_equal(got, expected), (orientation, reduce_to)
        assert size == (90, 130) if orientation >= 5 else (130, 90)


# --- files that are not regular files, and files far too large to be photos ------------------


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


@needs_fifo
def test_fifos_and_broken_links_in_a_folder_are_reported(photo_dir, tmp_path, tiny_model_dir):
    os.mkfifo(photo_dir / "pipe.jpg")
    (photo_dir / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert [p.name for p in iter_photos(photo_dir)] == ["a.png", "gone.png", "pipe.jpg"]
    result = hx("run", photo_dir, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet",
                "--outputs", "alpha")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out/hx-report.json").read_text())
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failures"]}
    assert reasons == {"pipe.jpg": "not a regular file (a named pipe)", "gone.png": "broken symlink"}
    assert report["counts"]["processed"] == 1


@needs_fifo
def test_a_fifo_as_input_or_on_stdin_never_blocks(photo_dir, tmp_path, tiny_model_dir):
    """A real process with a deadline: opening a FIFO for reading blocks until a writer comes."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "hx_infer.cli", "run"]
    options = ["--model", str(tiny_model_dir), "--backend", "ort", "--quiet", "--outputs", "alpha"]
    as_input = subprocess.run([*base, str(fifo), str(tmp_path / "out1"), *options], env=env,
                              capture_output=True, text=True, timeout=120)
    listed = subprocess.run([*base, "-", str(tmp_path / "out2"), *options], env=env, capture_output=True,
                            text=True, timeout=120, input=f"{fifo}\n{photo_dir / 'a.png'}\n")
    for result in (as_input, listed):
        assert result.returncode == 1, result.stderr
        assert f"hx-infer: {fifo}: not a regular file (a named pipe)" in result.stderr


def test_devices_are_never_read(tmp_path):
    with pytest.raises(DecodeError, match=r"^not a regular file \(a device\)$"):
        read_photo(Path("/dev/zero"))
    with pytest.raises(DecodeError, match="not a regular file"):
        read_photo(tmp_path)


def test_a_huge_non_image_costs_no_memory(tmp_path):
    """matte_input (the --outputs alpha decode) used to read the whole file before its header."""
    import tracemalloc

    from hx_infer.run.photos import matte_input

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.truncate(400 << 20)  # sparse: 400 MiB of zeros, no disk
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="^not an image$"):
            matte_input(huge, 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB held to look at a header"


# --- Matroska / WebM cut short or damaged midway ----------------------------------------------


def _clip(path: Path, codec: str, n: int = 60, width: int = 64, height: int = 48) -> bytes:
    av = pytest.importorskip("av")
    from video_clips import disc_frames

    frames, _ = disc_frames(n, width, height)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


def test_matroska_and_webm_cut_short_or_damaged_are_failed(tmp_path, tiny_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    for name, codec in (("mkv", "libx264"), ("webm", "libvpx-vp9")):
        data = _clip(tmp_path / f"whole.{name}", codec)
        (src / f"good_{name}.{name}").write_bytes(data)
        (src / f"cut_{name}.{name}").write_bytes(data[: int(len(data) * 0.4)])
        start, length = int(len(data) * 0.3), len(data) // 10
        (src / f"zeroed_{name}.{name}").write_bytes(data[:start] + bytes(length) + data[start + length:])
    result = hx("run", src, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort", "--quiet",
                "--outputs", "alpha")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out/hx-report.json").read_text())
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failures"]}
    assert report["counts"] == {"processed": 2, "skipped": 0, "failed": 4}, reasons
    assert reasons["cut_mkv.mkv"].startswith("truncated video (")
    assert reasons["cut_webm.webm"].startswith("truncated video (")
    for name in ("zeroed_mkv.mkv", "zeroed_webm.webm"):
        assert reasons[name].startswith(("corrupt video (", "corrupt or truncated video (")), reasons[name]
    assert sorted(p.name for p in (tmp_path / "out/alpha").iterdir()) == ["good_mkv.mp4", "good_webm.mp4"]


# --- names, temporaries, and the same matte whatever is written ------------------------------


def test_a_name_that_is_not_utf8_is_written(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: legal on Linux, not UTF-8
    atomic_write(tmp_path / name, b"x")
    assert os.listdir(os.fsencode(tmp_path)) == [b"caf\xe9.png"]


def test_cleanup_removes_only_names_hx_makes_and_never_inside_input(tmp_path):
    out = tmp_path / "out"
    photos = out / "photos"  # an INPUT that lies inside OUTPUT
    (out / "alpha").mkdir(parents=True)
    photos.mkdir()
    ours = [out / "alpha" / ".a.png.0123456789ab.hx-tmp"]
    theirs = [out / "alpha" / "draft.hx-tmp", out / "alpha" / ".x.hx-tmp",
              photos / ".b.png.0123456789ab.hx-tmp"]  # the last one is hx-shaped, but the user's
    for path in ours + theirs:
        path.write_bytes(b"x")
    assert clean_temporaries(out, keep_out=(photos,)) == 1
    assert [p.exists() for p in ours + theirs] == [False, True, True, True]


def test_the_model_sees_the_same_view_whatever_is_written(tmp_path, make_disc_photo):
    from hx_infer.run.photos import matte_input
    from hx_infer.transforms import letterbox

    exif = Image.Exif()
    exif[0x0112] = 6  # turned on its side: the case where the two paths differed most
    path = tmp_path / "photo.jpg"
    Image.fromarray(make_disc_photo(300, 420)[0]).save(path, quality=90, exif=exif)
    rgb, view, size, _ = read_photo_and_view(path, 10**8, 64)
    assert rgb.shape == (420, 300, 3) and size == (300, 420) and view.shape[0] < rgb.shape[0]
    assert np.array_equal(rgb, read_photo(path))
    x, box = letterbox(view, 64, src_size=size)
    expected_x, expected_box, _ = matte_input(path, 64)
    assert np.array_equal(x, expected_x) and box == expected_box
