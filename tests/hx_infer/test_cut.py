"""`hx-infer cut IN OUT`: one photo, either side a pipe, as a real process (stdin and stdout bytes)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import hx_infer
from hx_infer.cli import main
from hx_infer_asserts import assert_one_line_error

REPO = Path(__file__).resolve().parents[2]


def hx(*args, stdin: bytes | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


@pytest.fixture
def photo(tmp_path, make_disc_photo) -> Path:
    path = tmp_path / "me.jpg"
    Image.fromarray(make_disc_photo(60, 80, seed=5)[0]).save(path, quality=92)
    return path


def test_stdin_to_stdout_in_a_pipe(photo, tiny_model_dir):
    """`cat me.jpg | hx-infer cut - - > out.png`: RGBA PNG bytes, the cutout remove() makes."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "hx_infer", "cut", "-", "-", "--model", str(tiny_model_dir),
                           "--backend", "ort", "--device", "cpu"], input=photo.read_bytes(), capture_output=True,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    cutout = Image.open(io.BytesIO(proc.stdout))
    assert cutout.mode == "RGBA" and cutout.size == (80, 60)
    assert proc.stdout == hx_infer.remove(photo.read_bytes(), model=tiny_model_dir, backend="ort", device="cpu")


def test_output_kind_from_the_extension_or_the_option(tmp_path, photo, tiny_model_dir):
    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    for out, extra, mode in [("a.png", (), "RGBA"), ("b.png", ("--output", "alpha"), "L"),
                             ("c.jpg", (), "RGB"), ("d.png", ("--output", "composite"), "RGB")]:
        r = hx("cut", photo, tmp_path / out, *model, *extra)
        assert r.exit_code == 0, r.output
        with Image.open(tmp_path / out) as im:
            assert (im.format, im.mode) == (("JPEG" if out.endswith(".jpg") else "PNG"), mode), out
    r = hx("cut", "-", "-", *model, "--output", "composite", stdin=photo.read_bytes())
    assert r.exit_code == 0 and r.stdout_bytes[:3] == b"\xff\xd8\xff"
    r = hx("cut", photo, "-", *model, "--output", "alpha")
    assert r.exit_code == 0 and Image.open(io.BytesIO(r.stdout_bytes)).mode == "L"


def test_bad_usage_and_bad_photos(tmp_path, photo, tiny_model_dir):
    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    assert_one_line_error(hx("cut", photo, tmp_path / "x.webp", *model), "OUT", ".png")
    assert_one_line_error(hx("cut", photo, tmp_path / "x.jpg", *model, "--output", "rgba"), "JPEG has no alpha")
    assert_one_line_error(hx("cut", tmp_path / "absent.jpg", tmp_path / "x.png", *model), "IN", "absent.jpg")
    assert_one_line_error(hx("cut", tmp_path, tmp_path / "x.png", *model), "folder")
    copy = tmp_path / "same.png"
    Image.open(photo).save(copy)
    before = copy.read_bytes()
    assert_one_line_error(hx("cut", copy, copy, *model), "is IN")
    assert copy.read_bytes() == before
    assert_one_line_error(hx("cut", photo, tmp_path / "x.png", *model, "--background", "nope"), "--background")
    r = hx("cut", "-", tmp_path / "x.png", *model, stdin=b"not a photo at all")
    assert r.exit_code == 1 and r.stderr.strip() == "hx-infer: error: stdin: not an image"
    assert not (tmp_path / "x.png").exists()
    r = hx("cut", "-", "-", *model, stdin=b"")
    assert r.exit_code == 1 and "stdin: zero bytes" in r.stderr
