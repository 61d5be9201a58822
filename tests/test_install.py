"""The wheel as a user installs it: built from this checkout, installed without extras into a clean
venv (pip fetches onnxruntime, numpy, OpenCV, Pillow, fpng, click and tqdm), then `hx-infer run`
and `hx_infer.remove` run outside the tree with no torch, onnx or onnxscript anywhere on its path.

Slow (a minute or more: the wheel carries the bundled model, and pip may download the base
dependencies) and needs the package index, so it is marked `slow`; CI runs it.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TRAIN_ONLY = ("torch", "onnx", "onnxscript")

pytestmark = pytest.mark.slow


def _run(*command: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} -> {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


# Not part of the source a wheel is built from (and a stale build/ would leak old files into it).
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "runs", "out", ".tmp",
                                     "__pycache__", ".pytest_cache", "results")


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """A clean venv holding the wheel built from this checkout and the base dependencies only."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    # Without build isolation when setuptools is here (no download); with it otherwise.
    flags = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *flags, "-w", root / "dist", source, cwd=root)
    wheel = next((root / "dist").glob("hx-*.whl"))
    venv.create(root / "venv", with_pip=True)  # no system site-packages: nothing from the dev venv leaks in
    python = root / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "install", "--disable-pip-version-check", wheel, cwd=root)
    if not (root / "venv" / "bin" / "hx-infer").is_file():
        pytest.fail(f"pip installed no hx-infer from {wheel.name}")
    return root / "venv"


def test_base_install_has_no_training_runtime(base_venv):
    code = "import importlib.util as u; print(' '.join(m for m in %r if u.find_spec(m)))" % (TRAIN_ONLY,)
    found = _run(base_venv / "bin" / "python", "-c", code, cwd=base_venv).stdout.split()
    assert found == []


def test_installed_hx_infer_runs_outside_the_tree_without_torch(base_venv, tmp_path, make_disc_photo):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(make_disc_photo(90 + 10 * i, 120, seed=i)[0]).save(photos / f"p{i}.jpg", quality=95)
    proc = _run(base_venv / "bin" / "hx-infer", "run", photos, tmp_path / "out", "--outputs", "alpha,rgba",
                cwd=tmp_path)
    assert "3 processed" in proc.stderr + proc.stdout
    for i in range(3):
        rgba = np.asarray(Image.open(tmp_path / "out" / "rgba" / f"p{i}.png"))
        alpha = np.asarray(Image.open(tmp_path / "out" / "alpha" / f"p{i}.png"))
        assert rgba.shape == (90 + 10 * i, 120, 4) and np.array_equal(rgba[..., 3], alpha)


def test_installed_remove_takes_pil_arrays_and_bytes_without_torch(base_venv, tmp_path, make_disc_photo):
    photo = tmp_path / "p.jpg"
    Image.fromarray(make_disc_photo(50, 70)[0]).save(photo, quality=95)
    code = """
import io, sys
import numpy as np
from PIL import Image
import hx_infer
data = open(sys.argv[1], "rb").read()
pil = hx_infer.remove(Image.open(io.BytesIO(data)))
array = hx_infer.remove(np.asarray(pil.convert("RGB")), output="alpha")
png = hx_infer.remove(data, output="alpha")
assert "torch" not in sys.modules and "onnx" not in sys.modules and "onnxscript" not in sys.modules
print(pil.mode, pil.size, array.shape, Image.open(io.BytesIO(png)).mode)
"""
    out = _run(base_venv / "bin" / "python", "-c", code, photo, cwd=tmp_path).stdout.split("\n")[0]
    assert out == "RGBA (70, 50) (50, 70) L"


def test_torch_backend_and_training_say_what_to_install(base_venv, tmp_path):
    bin_ = base_venv / "bin"
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (32, 32)).save(photo)
    for command in ([bin_ / "hx-infer", "run", photo, tmp_path / "out", "--backend", "torch"],
                    [bin_ / "hx-train", "fit", tmp_path, "--out", tmp_path / "run"],
                    [bin_ / "hx-train", "export", tmp_path / "x.pt", "--out", tmp_path / "model"]):
        proc = _run(*command, cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'hx[train]'" in lines[0] and "'.[train]'" in lines[0], lines
    assert _run(bin_ / "hx-train", "--version", cwd=tmp_path).stdout.startswith("hx-train ")
    assert _run(bin_ / "python", "-m", "hx_infer", "--version", cwd=tmp_path).stdout.startswith("hx-infer ")
