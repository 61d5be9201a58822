"""`hx-infer cut IN OUT`: one photo, either side a pipe, as a real process (stdin and stdout bytes)."""
from __future__ import annotations

import io
import os
import shutil
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


def hx_process(command: str, *args, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`hx-infer cut ARGS` as a real process through the shell, for redirections CliRunner cannot make
    (a closed stdin or stdout, /dev/zero, a file root cannot read). command: '{hx} ...' in sh.

    Address space is capped at 4 GB, so a read without bound fails in seconds instead of filling
    the machine, and on a timeout the whole process group goes (sh, cat and hx-infer alike)."""
    import shlex
    import signal

    hx_cmd = " ".join(shlex.quote(str(a)) for a in (sys.executable, "-m", "hx_infer", "cut", *args))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(["sh", "-c", "ulimit -v 4000000; " + command.format(hx=hx_cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("hx-infer: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_in_that_is_missing_or_unreadable_is_one_line(tmp_path, photo, tiny_model_dir):
    """IN missing while OUT exists (os.path.samefile raised), or IN unreadable: one line, never a traceback."""
    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    out = tmp_path / "x.png"
    out.write_bytes(b"kept")
    assert_one_line_error(hx("cut", tmp_path / "nothere.jpg", out, *model), "IN", "nothere.jpg", "no such file")
    assert out.read_bytes() == b"kept"
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(photo.read_bytes())
    locked.chmod(0)
    # root reads any file; without these capabilities it is refused as anyone else is
    drop = "setpriv --bounding-set=-dac_override,-dac_read_search,-fowner " if os.geteuid() == 0 else ""
    if drop and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: no file is unreadable")
    proc = hx_process(drop + "{hx}", locked, tmp_path / "y.png", *model, cwd=tmp_path)
    assert_one_line(proc, 1, str(locked), "Permission denied")
    assert not (tmp_path / "y.png").exists()


def test_endless_in_is_read_only_as_far_as_a_photo_goes(tmp_path, photo, tiny_model_dir):
    """/dev/zero as IN or on stdin, and a photo followed by endless bytes: read no further than a
    photo of --max-pixels can hold, then one line, exit 1 (it read until MemoryError)."""
    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    assert_one_line(hx_process("{hx}", "/dev/zero", "z.png", *model, cwd=tmp_path), 1, "/dev/zero", "not an image")
    assert_one_line(hx_process("{hx} < /dev/zero", "-", "z.png", *model, cwd=tmp_path), 1, "stdin", "not an image")
    proc = hx_process(f"cat {photo} /dev/zero | {{hx}}", "-", "z.png", *model, "--max-pixels", "10000",
                      cwd=tmp_path)
    assert_one_line(proc, 1, "stdin", "--max-pixels 10000")
    assert not (tmp_path / "z.png").exists()
    # a pipe that ends is read whole, as before
    proc = hx_process(f"cat {photo} | {{hx}}", "-", "piped.png", *model, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "piped.png").read_bytes() == hx_infer.remove(photo.read_bytes(), model=tiny_model_dir,
                                                                    backend="ort", device="cpu")


def test_closed_stdin_or_stdout_is_one_line(tmp_path, photo, tiny_model_dir):
    """`cut - x.png <&-` and `cut a.jpg - >&-`: sys.stdin / sys.stdout are None (AttributeError before)."""
    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    assert_one_line(hx_process("{hx} <&-", "-", "x.png", *model, cwd=tmp_path), 2, "IN '-'", "stdin is closed")
    assert not (tmp_path / "x.png").exists()
    assert_one_line(hx_process("{hx} >&-", photo, "-", *model, cwd=tmp_path), 2, "OUT '-'", "stdout is closed")


def test_an_existing_out_is_replaced_only_with_overwrite(tmp_path, photo, tiny_model_dir):
    """OUT there already (the user's file, or a link) is refused in one line naming it, before the
    photo is read; --overwrite replaces it. stdout is unaffected."""
    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    out = tmp_path / "mine.png"
    out.write_bytes(b"the user's own picture")
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "nowhere.png")
    for existing in (out, link):
        assert_one_line_error(hx("cut", photo, existing, *model), f"OUT {existing}", "exists", "--overwrite")
        assert_one_line_error(hx("cut", "-", existing, *model, stdin=photo.read_bytes()), f"OUT {existing}")
    assert out.read_bytes() == b"the user's own picture" and link.is_symlink() and not link.exists()
    r = hx("cut", photo, out, *model, "--overwrite")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == hx_infer.remove(photo.read_bytes(), model=tiny_model_dir, backend="ort", device="cpu")
    r = hx("cut", photo, "-", *model)  # stdout: nothing of the user's to keep
    assert r.exit_code == 0 and r.stdout_bytes == out.read_bytes()
    assert "--overwrite" in hx("cut", "--help").stdout


def test_an_out_made_by_another_process_meanwhile_is_refused_as_an_existing_one(tmp_path, photo, tiny_model_dir,
                                                                                monkeypatch):
    """OUT is checked before the photo is read and the model runs; one that another process made
    in between was kept (the write is a no-clobber link) but answered exit 1, "OUT: already
    exists", not the usage error (exit 2) an OUT there from the start gets."""
    import hx_infer.api

    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    out = tmp_path / "raced.png"
    real = hx_infer.api.cut

    def cut_then_another_process_writes_out(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_bytes(b"the other process's")
        return result

    monkeypatch.setattr(hx_infer.api, "cut", cut_then_another_process_writes_out)
    raced = hx("cut", photo, out, *model)
    monkeypatch.undo()
    plain = hx("cut", photo, out, *model)
    assert_one_line_error(raced, f"OUT {out}", "exists", "--overwrite")
    assert raced.stderr == plain.stderr
    assert out.read_bytes() == b"the other process's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.jpg", "raced.png"]  # no temporary left


def test_out_in_a_missing_folder_is_refused_and_no_folder_is_made(tmp_path, photo, tiny_model_dir, monkeypatch):
    """OUT's missing folders were made silently, so a typo in the path (me/out.png for
    mine/out.png) wrote the cutout somewhere new. Like cp, cut now names the missing folder
    (exit 2) and makes none, before the photo is read; a file where the folder goes is refused too."""
    model = ("--model", tiny_model_dir, "--backend", "ort", "--device", "cpu")
    before = sorted(tmp_path.rglob("*"))
    assert_one_line_error(hx("cut", photo, tmp_path / "absent" / "deeper" / "x.png", *model),
                          f"OUT {tmp_path / 'absent' / 'deeper' / 'x.png'}", f"{tmp_path / 'absent' / 'deeper'}",
                          "no such folder")
    assert_one_line_error(hx("cut", photo, tmp_path / "me.jpg" / "x.png", *model), f"{photo}", "not a folder")
    assert sorted(tmp_path.rglob("*")) == before
    monkeypatch.chdir(tmp_path)  # a bare name is in the current folder
    r = hx("cut", photo, "here.png", *model)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "here.png").is_file()
