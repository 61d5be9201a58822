"""`hx-infer run`: exit codes, one-line errors, stdin, and resuming after kill -9 (a real process)."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hx_infer.cli import main
from hx_infer_asserts import assert_one_line_error

REPO = Path(__file__).resolve().parents[2]


def hx(*args: str, stdin: str | None = None):
    """Run `hx-infer ARGS` in this process -> click Result (exit_code, stdout, stderr, output)."""
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


def photos(folder: Path, make_disc_photo, n: int, height: int = 30, width: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"p{i:03d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(make_disc_photo(height, width, seed=i)[0]).save(path)
        paths.append(path)
    return paths


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("hx-report.json", "hx-index.sqlite")}


@pytest.fixture
def small_tree(tmp_path, make_disc_photo) -> Path:
    photos(tmp_path / "in", make_disc_photo, 4)
    photos(tmp_path / "in" / "sub", make_disc_photo, 2)
    return tmp_path / "in"


def test_run_writes_outputs_and_a_summary(tmp_path, tiny_model_dir, small_tree):
    r = hx("run", small_tree, tmp_path / "out", "--model", tiny_model_dir, "--backend", "ort",
           "--outputs", "alpha,composite", "--background", "#102030", "--quiet", "--workers", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("hx-infer: 6 processed, 0 skipped, 0 failed in ")
    assert line.endswith(f"; report: {tmp_path / 'out' / 'hx-report.json'}")
    assert (tmp_path / "out/alpha/sub/p001.png").is_file()
    assert (tmp_path / "out/composite/p000.jpg").is_file()
    assert not (tmp_path / "out/rgba").exists()

    again = hx("run", small_tree, tmp_path / "out", "--model", tiny_model_dir, "--outputs", "alpha,composite",
               "--background", "#102030", "--quiet", "--report", tmp_path / "second.json")
    assert again.exit_code == 0 and "0 processed, 6 skipped" in again.stderr
    assert (tmp_path / "second.json").is_file()


def test_bad_photo_exits_1_naming_it(tmp_path, tiny_model_dir, small_tree):
    (small_tree / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    r = hx("run", small_tree, tmp_path / "out", "--model", tiny_model_dir, "--quiet")
    assert r.exit_code == 1
    assert f"hx-infer: {small_tree / 'sub' / 'broken.jpg'}: " in r.stderr
    assert "6 processed, 0 skipped, 1 failed" in r.stderr
    assert "Traceback" not in r.output


def test_paths_from_stdin_and_glob(tmp_path, tiny_model_dir, small_tree, monkeypatch):
    monkeypatch.chdir(small_tree)
    r = hx("run", "-", tmp_path / "out", "--model", tiny_model_dir, "--outputs", "alpha", "--quiet",
           stdin="p000.png\nsub/p001.jpg\n")
    assert r.exit_code == 0, r.output
    assert sorted(p.relative_to(tmp_path / "out/alpha").as_posix()
                  for p in (tmp_path / "out/alpha").rglob("*.png")) == ["p000.png", "sub/p001.png"]

    r = hx("run", small_tree, tmp_path / "globbed", "--model", tiny_model_dir, "--outputs", "alpha",
           "--glob", "*.jpg", "--quiet")
    assert r.exit_code == 0 and "3 processed" in r.stderr
    assert all(p.name.startswith(("p001", "p003")) for p in (tmp_path / "globbed/alpha").rglob("*.png"))


def test_usage_errors_exit_2_with_one_line(tmp_path, tiny_model_dir, tiny_rgb_model_dir, small_tree, monkeypatch):
    out = tmp_path / "out"
    model = ("--model", tiny_model_dir)
    assert_one_line_error(hx("run", small_tree, small_tree / "out", *model), "inside INPUT")
    assert_one_line_error(hx("run", small_tree, small_tree, *model), "inside INPUT")
    assert_one_line_error(hx("run", tmp_path / "absent", out, *model), "INPUT", "absent")
    assert_one_line_error(hx("run", small_tree, out, *model, "--backend", "onnx"), "--backend")
    assert_one_line_error(hx("run", small_tree, out, *model, "--background", "not-a-colour"), "--background")
    assert_one_line_error(hx("run", small_tree, out, *model, "--batch-size", "0"), "--batch-size")
    assert_one_line_error(hx("run", small_tree, out, *model, "--outputs", "alpha,mask"), "--outputs")
    assert_one_line_error(hx("run", small_tree, out, *model, "--device", "tpu"), "--device")
    assert_one_line_error(hx("run", small_tree, out, *model, "--frobnicate"), "--frobnicate")
    assert_one_line_error(hx("run", small_tree, out, "--model", tmp_path), "--model")
    assert_one_line_error(hx("run", small_tree, out, "--model", tiny_rgb_model_dir, "--outputs", "rgba"),
                          "--outputs", "target rgb")
    assert_one_line_error(hx("run", small_tree), "OUTPUT")
    monkeypatch.setattr("hx_infer.model.default_model_dir", lambda: tmp_path / "no-bundled-model")
    assert_one_line_error(hx("run", small_tree, out), "--model default", "hx-train export")
    assert not out.exists()  # nothing written by a refused run


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_trt_without_tensorrt_is_a_usage_error(tmp_path, tiny_model_dir, small_tree):
    assert_one_line_error(hx("run", small_tree, tmp_path / "out", "--model", tiny_model_dir,
                             "--backend", "trt", "--device", "cpu"), "trt")


def test_help_needs_no_runtime():
    assert hx("--help").exit_code == 0
    r = hx("run", "--help")
    assert r.exit_code == 0 and "--outputs" in r.stdout and "--resume / --overwrite" in r.stdout
    probe = ("import sys, hx_infer, hx_infer.cli; "
             "print(sorted({'onnxruntime', 'torch', 'tensorrt', 'av', 'ray'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_resume_after_kill_9_gives_the_same_files(tmp_path, tiny_model_dir, make_disc_photo):
    """A run killed mid-way and rerun ends with the bytes of an uninterrupted run, no temporaries."""
    src = tmp_path / "in"
    photos(src, make_disc_photo, 150, height=72, width=96)
    args = ["run", str(src), None, "--model", str(tiny_model_dir), "--backend", "ort", "--device", "cpu",
            "--batch-size", "2", "--workers", "2", "--outputs", "alpha,rgba,composite", "--quiet"]

    reference = tmp_path / "reference"
    assert hx(*[a if a is not None else reference for a in args]).exit_code == 0

    out = tmp_path / "out"
    command = [sys.executable, "-m", "hx_infer.cli"] + [a if a is not None else str(out) for a in args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # Kill once some photos are complete, with more in flight in the decode and write pools.
    while (len(list((out / "composite").glob("*.jpg"))) < 20 and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    proc.stderr.close()
    done_before = len(list((out / "composite").glob("*.jpg")))
    assert 20 <= done_before < 150
    assert not (out / "hx-report.json").exists()

    rerun = hx(*[a if a is not None else out for a in args])
    assert rerun.exit_code == 0, rerun.output
    assert digest(out) == digest(reference)
    assert not [p for p in out.rglob("*") if p.name.endswith(".hx-tmp")]
    # composite is written last, so the photos with one before the kill were complete: skipped now.
    assert f"{150 - done_before} processed, {done_before} skipped, 0 failed" in rerun.stderr


def test_module_entry_point_runs_without_traceback(tmp_path, tiny_model_dir):
    """The real process, bad usage: one line on stderr, exit 2."""
    r = subprocess.run([sys.executable, "-m", "hx_infer.cli", "run", str(tmp_path / "absent"), str(tmp_path / "o"),
                        "--model", str(tiny_model_dir)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "absent" in r.stderr


def test_several_inputs_are_each_laid_out_as_alone(tmp_path, tiny_model_dir, small_tree, make_disc_photo):
    [single] = photos(tmp_path / "loose", make_disc_photo, 1)  # loose/p000.png: collides with in/p000.png
    [other] = photos(tmp_path / "other", make_disc_photo, 1, height=20)
    renamed = other.with_name("q.png")
    other.rename(renamed)
    r = hx("run", small_tree, renamed, single, tmp_path / "out", "--model", tiny_model_dir, "--outputs", "alpha",
           "--quiet")
    assert r.exit_code == 1, r.output  # the collision is a failure, never an overwrite
    assert f"{single}: output name collides with {small_tree / 'p000.png'}" in r.stderr
    assert "7 processed, 0 skipped, 1 failed" in r.stderr
    written = sorted(p.relative_to(tmp_path / "out/alpha").as_posix() for p in (tmp_path / "out/alpha").rglob("*.png"))
    assert written == ["p000.png", "p001.png", "p002.png", "p003.png", "q.png", "sub/p000.png", "sub/p001.png"]
    assert Image.open(tmp_path / "out/alpha/q.png").size == (40, 20)
    assert_one_line_error(hx("run", small_tree, "-", tmp_path / "x", "--model", tiny_model_dir), "'-'")
    assert_one_line_error(hx("run", small_tree, tmp_path / "absent.jpg", tmp_path / "x", "--model", tiny_model_dir),
                          "absent.jpg")


def test_image_bytes_on_stdin_are_refused_with_one_line(tmp_path, tiny_model_dir, make_disc_photo):
    import io

    buf = io.BytesIO()
    Image.fromarray(make_disc_photo(20, 20)[0]).save(buf, "JPEG")
    r = CliRunner().invoke(main, ["run", "-", str(tmp_path / "out"), "--model", str(tiny_model_dir)],
                           input=buf.getvalue())
    assert_one_line_error(r, "stdin holds JPEG image bytes", "hx-infer cut")
    assert not (tmp_path / "out").exists()



def test_stdin_sniffing_tells_photo_bytes_from_lists_of_names():
    """Lists whose first name starts like a signature ("BM": BMW_M3.jpg) or is not UTF-8 are
    lists; real BMP and GIF headers and binary data are not."""
    import io
    import os

    from hx_infer.io.images import sniff_media

    bmp, gif = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (4, 4)).save(bmp, "BMP")
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    assert sniff_media(bmp.getvalue()[:64]) == "BMP image" and sniff_media(gif.getvalue()[:64]) == "GIF image"
    assert sniff_media(b"BMW_M3.jpg\nGIF8_party.jpg\n") is None
    assert sniff_media(os.fsencode(os.fsdecode(b"caf\xe9.jpg\n")) + b"tab\there.jpg\r\n") is None
    assert sniff_media(bytes(range(150, 214))) is None and sniff_media(b"\x01\x02" + bytes(range(150, 212))) == "binary data"
    assert sniff_media(b"name.jpg\x00more") == "binary data"


def test_a_run_that_matches_nothing_warns_and_exits_0(tmp_path, tiny_model_dir, small_tree):
    r = hx("run", small_tree, tmp_path / "out", "--model", tiny_model_dir, "--glob", "*.tiff", "--quiet")
    assert r.exit_code == 0, r.output
    warning, summary = r.stderr.strip().splitlines()
    assert warning == "hx-infer: warning: INPUT holds no photo or video matching --glob '*.tiff'"
    assert summary.startswith("hx-infer: 0 processed, 0 skipped, 0 failed")


def test_progress_lines_without_a_terminal(tmp_path, tiny_model_dir, small_tree):
    """CliRunner's stderr is no terminal: tqdm would hide itself; the run logs lines instead."""
    import re

    r = hx("run", small_tree, tmp_path / "out", "--model", tiny_model_dir, "--outputs", "alpha",
           "--log-every", "0.000001", "--batch-size", "1", "--workers", "1")
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    progress = [line for line in lines if "files/s" in line and "processed" not in line]
    assert progress, lines
    for line in progress:
        assert re.fullmatch(r"hx-infer: \d+(/6 files \(\d+%\)| files), \d+\.\d files/s(, ETA \d+ s)?", line), line
    assert lines[-1].startswith("hx-infer: 6 processed")
    quiet = hx("run", small_tree, tmp_path / "quiet", "--model", tiny_model_dir, "--outputs", "alpha",
               "--log-every", "0.000001", "--quiet")
    assert len(quiet.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("compression", ["fast", "balanced", "small"])
def test_png_compression_reaches_every_png(tmp_path, tiny_model_dir, small_tree, compression):
    from hx_infer.io.images import encode_png

    r = hx("run", small_tree, tmp_path / "out", "--model", tiny_model_dir, "--outputs", "alpha,rgba",
           "--png-compression", compression, "--quiet")
    assert r.exit_code == 0, r.output
    for kind in ("alpha", "rgba"):
        data = (tmp_path / "out" / kind / "p000.png").read_bytes()
        assert encode_png(np.asarray(Image.open(tmp_path / "out" / kind / "p000.png")), compression) == data


@pytest.mark.parametrize("option", ["--log-every", "--temporal-strength", "--gpus-per-actor", "--cpus-per-actor"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_run_float_options_refuse_nan_and_inf_in_one_line(tmp_path, tiny_model_dir, option, value):
    """nan passes every bound of a click.FloatRange (no comparison holds for it): --temporal-strength
    nan was a traceback from deep inside, --log-every nan a run that never logs."""
    (tmp_path / "in").mkdir()
    r = hx("run", tmp_path / "in", tmp_path / "out", "--model", tiny_model_dir, option, value)
    assert_one_line_error(r, option)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_build_workspace_refuses_nan_and_inf_in_one_line(tiny_model_dir, value):
    assert_one_line_error(hx("build", tiny_model_dir, "--workspace", value), "--workspace", "finite")
