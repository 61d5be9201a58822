"""Shared fixtures: tiny exported models and synthetic "person" photos (a bright disc on a dark,
textured background), plus the `gpu` marker skip.

    tiny_model_dir      lite, 64 px, alpha; fitted for a few seconds so bright pixels -> alpha ~1
    tiny_rgb_model_dir  lite, 64 px, rgb; random weights (for shapes and plumbing only)
    make_disc_photo     (height, width, seed=0) -> (rgb uint8 [H, W, 3], mask uint8 [H, W] 0/255)
"""
from __future__ import annotations

import contextlib

from pathlib import Path

import numpy as np
import pytest
import torch

TINY_SIZE = 64
FIT_STEPS = 40  # ~2 s on one core; the matte reaches IoU ~0.95 against the disc


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def disc_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One photo: float RGB [H, W, 3] in [0, 1], and its matte: bool [H, W], True on the disc."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = rng.uniform(0.15, 0.35) * min(height, width)
    cy = rng.uniform(radius, height - radius)
    cx = rng.uniform(radius, width - radius)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    background = rng.uniform(0.0, 0.3, 3) + rng.uniform(-0.1, 0.1, (height, width, 3))
    person = rng.uniform(0.7, 0.95, 3) + rng.uniform(-0.05, 0.05, (height, width, 3))
    rgb = np.clip(np.where(inside[..., None], person, background), 0, 1).astype(np.float32)
    return rgb, inside


def _training_batch(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 3, S, S] in [-1, 1] and targets [n, 1, S, S] in {-1, 1} (tanh space).

    Half the images carry letterbox bands of the pad value 0.0 (mid-grey) with alpha 0, as
    non-square photos will reach the model at inference.
    """
    images = np.empty((n, size, size, 3), np.float32)
    alphas = np.empty((n, size, size), np.float32)
    for i in range(n):
        rgb, inside = disc_scene(rng, size, size)
        image = rgb * 2 - 1
        if rng.random() < 0.5:
            keep = int(rng.integers(size // 2, size))
            lo, hi = (size - keep) // 2, (size - keep) // 2 + keep
            band = np.ones((size, size), bool)
            band[lo:hi, :] = False
            if rng.random() < 0.5:
                band = band.T
            image[band] = 0.0
            inside = inside & ~band
        images[i], alphas[i] = image, inside
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(alphas)[:, None] * 2 - 1
    return x, y


def _fit_bright_disc(generator: torch.nn.Module, steps: int = FIT_STEPS, size: int = TINY_SIZE) -> None:
    """A few L1 steps (train mode, so batch-norm running statistics are real) towards the disc matte."""
    rng = np.random.default_rng(0)
    optimiser = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    generator.train()
    for _ in range(steps):
        x, y = _training_batch(rng, 8, size)
        loss = (generator(x) - y).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    generator.eval()


@contextlib.contextmanager
def torch_on_one_thread():
    """torch on several threads crawls on a shared 2-core machine (spin-waits); one is 10x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread():
    """For modules that run torch: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    with torch_on_one_thread():
        yield


def _export_tiny(out: Path, target: str, fit: bool, card_extra: dict | None = None) -> Path:
    """A seeded lite generator at TINY_SIZE, optionally fitted to bright discs, exported to out."""
    from hx_train.export import export_generator
    from hx_train.models import build_generator

    with torch_on_one_thread():
        torch.manual_seed(0)
        generator = build_generator("lite", TINY_SIZE, target)
        if fit:
            _fit_bright_disc(generator)
        export_generator(generator, out, preset="lite", size=TINY_SIZE, target=target, card_extra=card_extra)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return _export_tiny(tmp_path_factory.mktemp("models") / "tiny-alpha", "alpha", fit=True,
                        card_extra={"data": {"source": "synthetic bright discs (tests/conftest.py)"}})


@pytest.fixture(scope="session")
def tiny_rgb_model_dir(tmp_path_factory) -> Path:
    return _export_tiny(tmp_path_factory.mktemp("models") / "tiny-rgb", "rgb", fit=False)


@pytest.fixture(scope="session")
def make_disc_photo():
    """(height, width, seed=0) -> (rgb uint8 [H, W, 3], mask uint8 [H, W] with 0/255)."""

    def make(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rgb, inside = disc_scene(np.random.default_rng(seed), height, width)
        return (rgb * 255).round().astype(np.uint8), inside.astype(np.uint8) * 255

    return make


@pytest.fixture
def own_hash_cache(tmp_path, monkeypatch):
    """An empty sha256 cache of model files (hx_infer.model), in the test's folder and in this
    process: `pytestmark = pytest.mark.usefixtures("own_hash_cache")`."""
    from hx_infer import model as model_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(model_module, "_hashes_seen", {}, raising=False)
