"""Every backend through one contract test, the factory, and the CUDA-side decisions made on CPU."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from hx_infer.backends import BackendError, BackendSpec, open_backend
from hx_infer.backends.base import ort_has_cuda, resolve_precision, trt_installed
from hx_infer.backends.ort import (CUDA_PROVIDER, TRT_PROVIDER, OrtBackend, cpu_threads, cuda_providers,
                                   default_engine_cache)
from hx_infer.backends.torch import TorchBackend
from hx_infer.backends.trt import NEEDS_CUDA, NOT_INSTALLED, TrtBackend
from hx_infer.model import load_model_dir

TOLERANCE = 2 / 255  # two 8-bit grey levels
REPO = Path(__file__).resolve().parents[3]

cuda = pytest.mark.gpu
needs_ort_cuda = pytest.mark.skipif(not ort_has_cuda(), reason="needs onnxruntime-gpu")
needs_trt = pytest.mark.skipif(not trt_installed(), reason="needs tensorrt")

# (backend, device, options): every backend that may exist; unavailable ones are skipped
CASES = [
    pytest.param("ort", "cpu", {"threads": 1}, id="ort-cpu"),
    pytest.param("torch", "cpu", {}, id="torch-cpu"),
    pytest.param("trt", "cuda", {}, id="trt-cuda", marks=[cuda, needs_trt]),
    pytest.param("ort", "cuda", {}, id="ort-cuda", marks=[cuda, needs_ort_cuda]),
    pytest.param("torch", "cuda", {}, id="torch-cuda", marks=cuda),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.torch_on_one_thread


@pytest.fixture(scope="module", params=["alpha", "rgb"])
def model(request, tiny_model_dir, tiny_rgb_model_dir):
    return load_model_dir(tiny_model_dir if request.param == "alpha" else tiny_rgb_model_dir)


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """[n, 3, S, S] float32 in [-1, 1]: half bright-disc scenes, half noise."""
    from conftest import disc_scene

    rng = np.random.default_rng(seed)
    out = rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32)
    for i in range(0, n, 2):
        out[i] = disc_scene(rng, size, size)[0].transpose(2, 0, 1) * 2 - 1
    return out


def _reference(model, images: np.ndarray) -> np.ndarray:
    with OrtBackend(model, BackendSpec(device="cpu", threads=1)) as backend:
        return backend.infer(images)


@pytest.mark.parametrize("name,device,options", CASES)
def test_contract(name, device, options, model):
    images = _images(5, model.size)
    expected = _reference(model, images)
    c, s = model.out_channels, model.size
    with open_backend(model, BackendSpec(name, device, batch_size=2, **options)) as backend:  # 5 = 2 + 2 + 1
        got = backend.infer(images)
        single = backend.infer(images[3:4])
        with pytest.raises(BackendError, match=r"\[N, 3, 64, 64\]"):
            backend.infer(images[0])  # no batch axis
        for bad in (np.zeros((1, 3, s + 1, s + 1), np.float32), np.zeros((1, 4, s, s), np.float32),
                    np.zeros((0, 3, s, s), np.float32)):
            with pytest.raises(BackendError):
                backend.infer(bad)
        with pytest.raises(BackendError, match="float32"):
            backend.infer(images.astype(np.float64))
    with pytest.raises(BackendError, match="after close"):
        backend.infer(images)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == (5, c, s, s)
    assert 0.0 <= got.min() and got.max() <= 1.0
    assert np.abs(got - expected).max() <= TOLERANCE
    assert np.abs(single - expected[3:4]).max() <= TOLERANCE
    assert got.std() > 1e-3  # not a constant image


@pytest.mark.parametrize("name,device,options", CASES)
def test_torch_tensors_come_back_as_torch_tensors_on_their_device(name, device, options, tiny_model_dir):
    model = load_model_dir(tiny_model_dir)
    images = _images(3, model.size, seed=1)
    expected = _reference(model, images)
    tensor = torch.from_numpy(images).to(device)
    with open_backend(model, BackendSpec(name, device, **options)) as backend:
        got = backend.infer(tensor)
    assert isinstance(got, torch.Tensor) and got.device == tensor.device and got.dtype == torch.float32
    assert np.abs(got.cpu().numpy() - expected).max() <= TOLERANCE


def test_fitted_fixture_model_finds_the_disc(tiny_model_dir, make_disc_photo):
    """The shared fixture is meant to give pipeline tests real mattes: check that it does."""
    import cv2

    model = load_model_dir(tiny_model_dir)
    rgb, mask = make_disc_photo(model.size, model.size, seed=5)
    image = (rgb.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]
    with OrtBackend(model, BackendSpec(device="cpu", threads=1)) as backend:
        alpha = backend.infer(np.ascontiguousarray(image))[0, 0]
    inside, predicted = mask > 127, alpha > 0.5
    iou = (inside & predicted).sum() / (inside | predicted).sum()
    assert iou > 0.8, iou
    assert cv2.mean(alpha, mask=(~inside).astype(np.uint8))[0] < 0.2


# --- factory -----------------------------------------------------------------------------


def test_a_misspelt_backend_option_fails_where_the_spec_is_made():
    """One spec for every backend: no backend can silently drop an option it does not know."""
    with pytest.raises(TypeError, match="engine_cahce"):
        BackendSpec("trt", "cuda", engine_cahce="engines/")
    with pytest.raises(BackendError, match="--device 'gpu'"):
        BackendSpec(device="gpu")


def test_unknown_backend_name(tiny_model_dir):
    with pytest.raises(BackendError, match="--backend 'onnx'"):
        open_backend(load_model_dir(tiny_model_dir), BackendSpec("onnx", "cpu"))


def test_auto_on_cpu_is_ort(tiny_model_dir):
    with open_backend(load_model_dir(tiny_model_dir), BackendSpec("auto", "cpu")) as backend:
        assert isinstance(backend, OrtBackend)
        assert "CPU" in backend.describe()


@pytest.mark.skipif(trt_installed(), reason="tensorrt is installed here")
def test_trt_without_tensorrt_says_how_to_get_it(tiny_model_dir):
    with pytest.raises(BackendError) as info:
        open_backend(load_model_dir(tiny_model_dir), BackendSpec("trt", "cpu"))
    assert str(info.value) == NOT_INSTALLED


def test_trt_on_cpu_needs_cuda(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(BackendError) as info:
        TrtBackend(load_model_dir(tiny_model_dir), BackendSpec(device="cpu"))
    assert str(info.value) == NEEDS_CUDA


def test_importing_backends_does_not_import_tensorrt():
    code = "import sys, hx_infer.backends; print('tensorrt' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- ORT: options and the CUDA decisions, checked without a GPU ----------------------------


def test_ort_cpu_threads(tiny_model_dir):
    assert cpu_threads(3) == 3
    assert cpu_threads(None) >= 1
    with pytest.raises(BackendError, match="--threads"):
        cpu_threads(0)
    with OrtBackend(load_model_dir(tiny_model_dir), BackendSpec(device="cpu", threads=1)) as backend:
        assert backend._session.get_session_options().intra_op_num_threads == 1
        assert backend._session.get_providers() == ["CPUExecutionProvider"]


def test_ort_precision_choices():
    assert resolve_precision(OrtBackend, None, "cpu") == "fp32"
    assert resolve_precision(OrtBackend, None, "cuda:1") == "fp16"
    assert resolve_precision(OrtBackend, "fp32", "cuda") == "fp32"
    for precision, device in (("fp16", "cpu"), ("bf16", "cuda"), ("int8", "cuda")):
        with pytest.raises(BackendError, match="--precision"):
            resolve_precision(OrtBackend, precision, device)


@pytest.mark.skipif(ort_has_cuda(), reason="onnxruntime-gpu is installed here")
def test_ort_cuda_without_onnxruntime_gpu(tiny_model_dir):
    with pytest.raises(BackendError, match="has no CUDA provider") as info:
        OrtBackend(load_model_dir(tiny_model_dir), BackendSpec(device="cuda"))
    assert "\n" not in str(info.value)
    # onnxruntime (CPU) and onnxruntime-gpu share one module: the line says how to keep the GPU one
    assert "'hx[gpu]'" in str(info.value) and "pip uninstall -y onnxruntime onnxruntime-gpu" in str(info.value)


def test_ort_cuda_provider_lists(tiny_model_dir, tmp_path):
    model = load_model_dir(tiny_model_dir)
    (only_cuda,) = cuda_providers(model, 1, "fp16", 16, None, with_tensorrt=False)
    assert only_cuda == (CUDA_PROVIDER, {"device_id": 1, "cudnn_conv_algo_search": "EXHAUSTIVE"})

    (trt_name, trt), (cuda_name, _) = cuda_providers(model, 0, "fp16", 16, tmp_path, with_tensorrt=True)
    assert (trt_name, cuda_name) == (TRT_PROVIDER, CUDA_PROVIDER)
    assert trt["trt_fp16_enable"] is True and trt["device_id"] == 0
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_profile_min_shapes"] == "image:1x3x64x64"
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"] == "image:16x3x64x64"
    (_, trt32), _ = cuda_providers(model, 0, "fp32", 4, tmp_path, with_tensorrt=True)
    assert trt32["trt_fp16_enable"] is False and trt32["trt_profile_max_shapes"] == "image:4x3x64x64"


def test_ort_cuda_keeps_its_own_cuda_options_when_tensorrt_ep_fails(tiny_model_dir, tmp_path, monkeypatch):
    """When the TensorRT EP fails (TensorRT 11 beside an EP built for 10, an engine that will not
    build), onnxruntime's InferenceSession retries by itself with a bare ["CUDAExecutionProvider",
    "CPUExecutionProvider"]: device 0 and no options. The backend must open its own CUDA entry instead,
    or --device cuda:1 runs on GPU 0 with inputs bound on GPU 1."""
    import importlib.machinery

    import onnxruntime as ort

    real_session, opened = ort.InferenceSession, []

    class FallingBackSession:  # the session onnxruntime hands back after its fallback
        def __init__(self, path, options, providers):
            opened.append(providers)
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            self._providers = [CUDA_PROVIDER, "CPUExecutionProvider"] if TRT_PROVIDER in names else names
            self._cpu = real_session(path, providers=["CPUExecutionProvider"])  # for the graph's inputs/outputs

        def get_providers(self):
            return self._providers

        def get_inputs(self):
            return self._cpu.get_inputs()

        def get_outputs(self):
            return self._cpu.get_outputs()

    tensorrt = types.ModuleType("tensorrt")
    tensorrt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_PROVIDER, CUDA_PROVIDER, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallingBackSession)
    backend = OrtBackend(load_model_dir(tiny_model_dir), BackendSpec(device="cuda:1", engine_cache=tmp_path))
    assert opened[0][0][0] == TRT_PROVIDER
    assert opened[-1] == [(CUDA_PROVIDER, {"device_id": 1, "cudnn_conv_algo_search": "EXHAUSTIVE"})]
    assert backend.describe() == "ort fp16 on cuda:1 (CUDA)"


def test_default_engine_cache_is_per_model(tiny_model_dir, tiny_rgb_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    alpha, rgb = load_model_dir(tiny_model_dir), load_model_dir(tiny_rgb_model_dir)
    assert default_engine_cache(alpha).parent == tmp_path / "hx" / "ort-trt"
    assert default_engine_cache(alpha) != default_engine_cache(rgb)


# --- bad model folders and options ---------------------------------------------------------


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    root = tmp_path / "model"
    shutil.copytree(tiny_model_dir, root)
    return root


def test_corrupt_weights_name_the_file(model_copy):
    (model_copy / "generator.pt").write_bytes(b"not a state dict")
    with pytest.raises(BackendError, match="generator.pt") as info:
        TorchBackend(load_model_dir(model_copy), BackendSpec(device="cpu"))
    assert "\n" not in str(info.value)


def test_missing_or_corrupt_graph_names_the_file(model_copy):
    (model_copy / "model.onnx").write_bytes(b"\x08garbage")
    with pytest.raises(BackendError, match="model.onnx"):
        OrtBackend(load_model_dir(model_copy), BackendSpec(device="cpu"))
    (model_copy / "model.onnx").unlink()
    with pytest.raises(BackendError, match="missing"):
        OrtBackend(load_model_dir(model_copy), BackendSpec(device="cpu"))


def test_reduced_precision_on_cpu_is_refused(tiny_model_dir):
    model = load_model_dir(tiny_model_dir)
    with pytest.raises(BackendError, match="--precision fp16"):
        OrtBackend(model, BackendSpec(device="cpu", precision="fp16"))
    with pytest.raises(BackendError, match="--precision bf16"):
        TorchBackend(model, BackendSpec(device="cpu", precision="bf16"))
    with pytest.raises(BackendError, match="--batch-size"):
        TorchBackend(model, BackendSpec(device="cpu", batch_size=0))


# --- CUDA only -----------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("precision,tolerance", [("fp16", TOLERANCE), ("bf16", 6 / 255)])
def test_torch_cuda_graphs_pad_the_short_batch(tiny_model_dir, precision, tolerance):
    model = load_model_dir(tiny_model_dir)
    images = _images(6, model.size, seed=2)
    expected = _reference(model, images)
    with TorchBackend(model, BackendSpec(device="cuda", precision=precision, batch_size=4)) as backend:
        got = backend.infer(images)  # 6 = 4 + 2 padded to 4
        again = backend.infer(torch.from_numpy(images[:3]).cuda())
        assert sorted(backend._graphs) == [4]
    assert np.abs(got - expected).max() <= tolerance
    assert again.is_cuda and np.abs(again.cpu().numpy() - got[:3]).max() <= 1e-3


@cuda
def test_torch_cuda_graph_per_batch_size_without_hint(tiny_model_dir):
    model = load_model_dir(tiny_model_dir)
    images = _images(5, model.size, seed=3)
    with TorchBackend(model, BackendSpec(device="cuda")) as backend:
        first = backend.infer(images[:3])
        backend.infer(images)
        repeat = backend.infer(images[:3])
        assert sorted(backend._graphs) == [3, 5]
    np.testing.assert_allclose(first, repeat, atol=0, rtol=0)  # same graph, same input


@cuda
def test_torch_cuda_without_graphs_matches(tiny_model_dir):
    model = load_model_dir(tiny_model_dir)
    images = _images(3, model.size, seed=4)
    with TorchBackend(model, BackendSpec(device="cuda", cuda_graphs=False)) as backend:
        got = backend.infer(images)
        assert backend._graphs == {}
    assert np.abs(got - _reference(model, images)).max() <= TOLERANCE


@cuda
@needs_ort_cuda
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_ort_cuda_io_binding(tiny_model_dir, precision):
    model = load_model_dir(tiny_model_dir)
    images = _images(5, model.size, seed=5)
    with OrtBackend(model, BackendSpec(device="cuda", precision=precision, batch_size=2)) as backend:
        got = backend.infer(torch.from_numpy(images).cuda())
    assert got.is_cuda and got.shape == (5, 1, model.size, model.size)
    assert np.abs(got.cpu().numpy() - _reference(model, images)).max() <= TOLERANCE
