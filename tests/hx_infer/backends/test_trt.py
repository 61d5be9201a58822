"""TensorRT engines on the CPU: cache keys, sidecars, profiles, batch splitting and every error
path. Building is checked against a fake `tensorrt` module object that records what the build
asks of it (this tests hx's logic only; the real library runs in benchmarks/gpu_check.sh)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from hx_infer.backends import BackendError, BackendSpec
from hx_infer.backends.base import resolve_backend, split_batches
from hx_infer.cli import main
from hx_infer.model import load_model_dir
from hx_infer.backends.trt_build import (DEFAULT_PROFILE, NEEDS_CUDA, NOT_INSTALLED, EngineKey, Gpu, Profile,
                                build_engine, build_for_model, cached_engine_path, default_cache_dir,
                                engine_key, ensure_engine, import_tensorrt, make_sidecar, mismatches,
                                onnx_for, profile_for_batch, read_sidecar, sidecar_path,
                                stale_reason, timing_cache_path)

REPO = Path(__file__).resolve().parents[3]
H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0")


class FakeTensorRT(types.ModuleType):
    """The parts of the tensorrt 10.8+/11 Python API a build touches, recording each call.

    Like TensorRT 11 it has no BuilderFlag (weak typing is gone): a build that reached for
    BuilderFlag.FP16 fails here too.
    """

    def __init__(self, version: str = "10.9.0", parse_ok: bool = True, build_ok: bool = True):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        self.current_device = lambda: None  # a test sets it to see which CUDA device a build ran on
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        class MemoryPoolType:
            WORKSPACE = 0

        class TimingCache:
            def __init__(self, data: bytes):
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+timings"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", pool, size))

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile", dict(profile.shapes)))

            def create_timing_cache(self, data):
                fake.calls.append(("timing cache in", bytes(data)))
                # like createTimingCache, None (nullptr) for a blob it cannot read
                return None if bytes(data).startswith(b"corrupt") else TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                return not cache.data.startswith(b"other-gpu")

        class OptimizationProfile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class Error:
            def __str__(self):
                return "In node 3 (Conv): unsupported\nmore detail"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse(self, data: bytes) -> bool:
                fake.calls.append(("parse", len(data)))
                return parse_ok

            def get_error(self, i):
                return Error()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network flags", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return OptimizationProfile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", fake.current_device()))
                return b"plan:" + fake.__version__.encode() if build_ok else None

        # the runtime half: an engine with one input "image" and one output "out", fp16, batch 1..128
        class TensorIOMode:
            INPUT, OUTPUT = 1, 2

        class DataType:
            FLOAT, HALF = 0, 1

        class Context:
            def set_input_shape(self, name, shape):
                return True

            def set_tensor_address(self, name, address):
                pass

            def execute_async_v3(self, stream_handle):
                fake.calls.append(("enqueue", fake.current_device()))
                return True

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i):
                return ("image", "out")[i]

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return DataType.HALF

            def get_tensor_profile_shape(self, name, profile_index):
                return [(1, 3, 64, 64), (32, 3, 64, 64), (128, 3, 64, 64)]

            def create_execution_context(self):
                fake.calls.append(("context", fake.current_device()))
                return Context()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize", fake.current_device()))
                return Engine()

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.Runtime, self.TensorIOMode, self.DataType = Runtime, TensorIOMode, DataType
        self.NetworkDefinitionCreationFlag, self.MemoryPoolType = NetworkDefinitionCreationFlag, MemoryPoolType

    def builds(self) -> int:
        return sum(1 for call in self.calls if call[0] == "build")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model_dir(tiny_model_dir)


@pytest.fixture
def key(model) -> EngineKey:
    return engine_key(model, "fp16", Profile(1, 8, 16), "10.9.0", H100)


# --- keys, sidecars, profiles -------------------------------------------------------------------


def test_every_key_field_changes_the_key(key):
    changed = [
        dataclasses.replace(key, onnx_sha256="0" * 64),
        dataclasses.replace(key, tensorrt="11.0.0"),
        dataclasses.replace(key, gpu=Gpu("NVIDIA H200", "9.0")),
        dataclasses.replace(key, gpu=Gpu(H100.name, "8.9")),
        dataclasses.replace(key, precision="fp32"),
        dataclasses.replace(key, profile=Profile(1, 8, 32)),
        dataclasses.replace(key, profile=Profile(2, 8, 16)),
        dataclasses.replace(key, profile=Profile(1, 4, 16)),
    ]
    digests = {key.digest()} | {k.digest() for k in changed}
    assert len(digests) == len(changed) + 1
    assert dataclasses.replace(key).digest() == key.digest()  # stable for equal fields
    paths = {cached_engine_path(Path("/c"), k) for k in [key, *changed]}
    assert len(paths) == len(changed) + 1


def test_key_hashes_the_graph_of_its_precision(model):
    fp16 = engine_key(model, "fp16", DEFAULT_PROFILE, "10.9.0", H100)
    fp32 = engine_key(model, "fp32", DEFAULT_PROFILE, "10.9.0", H100)
    assert fp16.onnx_sha256 == model.card["sha256"]["model.fp16.onnx"]
    assert fp32.onnx_sha256 == model.card["sha256"]["model.onnx"]


def test_sidecar_round_trip_and_mismatch_detection(tmp_path, key, model):
    engine = tmp_path / "a.engine"
    sidecar = make_sidecar(key, "ab" * 32, model, model.onnx_fp16_path)
    sidecar_path(engine).write_text(json.dumps(sidecar))
    back = read_sidecar(engine)
    assert back == sidecar and mismatches(back, key) == []
    assert back["tensorrt"] == "10.9.0" and back["gpu"] == {"name": H100.name, "compute_capability": "9.0"}
    assert back["profile"] == {"min": 1, "opt": 8, "max": 16} and back["precision"] == "fp16"
    assert mismatches(back, dataclasses.replace(key, tensorrt="11.1.0")) == ["tensorrt"]
    assert mismatches(back, dataclasses.replace(key, gpu=Gpu("NVIDIA A100", "8.0"))) == ["gpu"]
    assert mismatches(back, dataclasses.replace(key, precision="fp32", profile=Profile(1, 8, 8))) == [
        "precision", "profile"]
    assert set(mismatches(None, key)) == set(key.fields())
    sidecar_path(engine).write_text("{not json")
    assert read_sidecar(engine) is None


@pytest.mark.parametrize("profile,option", [(Profile(0, 1, 1), "--min-batch"), (Profile(2, 1, 4), "min <= opt"),
                                            (Profile(1, 8, 4), "min <= opt <= max")])
def test_profile_validation(profile, option):
    with pytest.raises(BackendError, match=option):
        profile.check()


def test_valid_profiles_and_the_run_profile():
    assert Profile(1, 1, 1).check() == Profile(1, 1, 1)
    assert profile_for_batch(None) == DEFAULT_PROFILE == Profile(1, 32, 128)
    assert profile_for_batch(8) == Profile(1, 8, 128)
    assert profile_for_batch(256) == Profile(1, 256, 256)


@pytest.mark.parametrize("n,max_batch,expected", [
    (5, 2, [(0, 2), (2, 4), (4, 5)]), (4, 4, [(0, 4)]), (3, 128, [(0, 3)]), (256, 128, [(0, 128), (128, 256)]),
    (0, 8, []),
])
def test_batches_over_the_profile_max_are_split(n, max_batch, expected):
    assert split_batches(n, max_batch) == expected
    assert sum(stop - start for start, stop in expected) == n


def test_split_refuses_an_empty_profile():
    with pytest.raises(ValueError):
        split_batches(4, 0)


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "hx" / "trt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "hx" / "trt"


# --- building against the fake --------------------------------------------------------------------


def test_build_is_strongly_typed_with_one_profile_and_writes_engine_and_sidecar(tmp_path, model, key):
    trt = FakeTensorRT()
    engine = tmp_path / "out" / "tiny.engine"
    timing = tmp_path / "timing.cache"
    sidecar = build_engine(trt, model, key, engine, timing_cache=timing, workspace_gib=1.5)
    assert ("network flags", 1 << 1) in trt.calls  # STRONGLY_TYPED; no BuilderFlag anywhere
    assert ("profile", {"image": ((1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64))}) in trt.calls
    assert ("workspace", 0, int(1.5 * 2**30)) in trt.calls
    assert ("parse", model.onnx_fp16_path.stat().st_size) in trt.calls  # the fp16 graph for fp16
    assert engine.read_bytes() == b"plan:10.9.0"
    assert read_sidecar(engine) == sidecar and stale_reason(engine, key) is None
    assert timing.read_bytes() == b"+timings"
    assert not list(engine.parent.glob("*.hx-tmp"))


def test_timing_cache_is_reused_across_builds_and_a_foreign_one_replaced(tmp_path, model, key):
    trt = FakeTensorRT()
    timing = tmp_path / "timing.cache"
    build_engine(trt, model, key, tmp_path / "a.engine", timing_cache=timing)
    other = dataclasses.replace(key, profile=Profile(1, 4, 4))
    build_engine(trt, model, other, tmp_path / "b.engine", timing_cache=timing)
    loaded = [call[1] for call in trt.calls if call[0] == "timing cache in"]
    assert loaded == [b"", b"+timings"]  # the second build starts from the first one's timings
    timing.write_bytes(b"other-gpu timings")
    logged = []
    build_engine(trt, model, key, tmp_path / "c.engine", timing_cache=timing, log=logged.append)
    assert any("another TensorRT version or GPU" in line for line in logged)
    assert timing.read_bytes() == b"+timings"


def test_a_timing_cache_tensorrt_cannot_read_is_replaced(tmp_path, model, key):
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"corrupt: written by another TensorRT")
    logged = []
    build_engine(FakeTensorRT(), model, key, tmp_path / "a.engine", timing_cache=timing, log=logged.append)
    assert any("starting a new one" in line for line in logged)
    assert timing.read_bytes() == b"+timings" and read_sidecar(tmp_path / "a.engine") is not None


@pytest.fixture
def cuda_device(monkeypatch):
    """torch.cuda.device as a recorder; returns a probe: the index of the CUDA device made current
    (None when none was chosen, as when the process's current device is used)."""
    import contextlib

    import torch

    current = [None]

    @contextlib.contextmanager
    def device(d):
        before, current[0] = current[0], torch.device(d).index
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "device", device)
    return lambda: current[0]


def test_build_runs_on_the_chosen_gpu(tmp_path, model, monkeypatch, cuda_device):
    """TensorRT builds on the current CUDA device: --device cuda:1 must make GPU 1 current, or the
    engine is built on GPU 0 and its sidecar names GPU 1."""
    trt = FakeTensorRT()
    trt.current_device = cuda_device
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("hx_infer.backends.base.resolve_device", lambda device: device)
    monkeypatch.setattr("hx_infer.backends.trt_build.current_gpu", lambda device: H100)
    build_for_model(model, device="cuda:1", cache_dir=tmp_path, profile=Profile(1, 2, 4))
    build_for_model(model, device="cuda:1", out=tmp_path / "out.engine", timing_cache=tmp_path / "t.cache")
    assert [call for call in trt.calls if call[0] == "build"] == [("build", 1), ("build", 1)]


class _FakeCudaTensor:
    """Just enough of a torch CUDA tensor for TrtBackend._run: shape, to, contiguous, data_ptr, float."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __len__(self):
        return self.shape[0]

    def to(self, *args, **kwargs):
        return self

    contiguous = float = lambda self: self

    def data_ptr(self):
        return 4096


def test_trt_backend_builds_loads_and_runs_on_the_chosen_gpu(tmp_path, model, monkeypatch, cuda_device):
    import torch

    from hx_infer.backends.trt import TrtBackend

    trt = FakeTensorRT()
    trt.current_device = cuda_device
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("hx_infer.backends.trt.current_gpu", lambda device: H100)
    backend = TrtBackend(model, BackendSpec(device="cuda:1", batch_size=2, engine_cache=tmp_path))
    # torch's CUDA side faked for the run: streams and buffers
    backend._torch = types.SimpleNamespace(
        cuda=types.SimpleNamespace(current_stream=lambda device: types.SimpleNamespace(cuda_stream=7)),
        empty=lambda shape, dtype, device: _FakeCudaTensor(shape), float16=torch.float16)
    assert backend._run(_FakeCudaTensor((2, 3, 64, 64))).shape == (2, 1, 64, 64)
    assert trt.calls[-4:] == [("build", 1), ("deserialize", 1), ("context", 1), ("enqueue", 1)]


def test_ensure_engine_builds_once_then_reuses(tmp_path, model):
    trt = FakeTensorRT()
    profile = Profile(1, 8, 16)
    first = ensure_engine(trt, model, "fp16", profile, tmp_path, H100)
    second = ensure_engine(trt, model, "fp16", profile, tmp_path, H100)
    assert first == second and trt.builds() == 1
    assert timing_cache_path(tmp_path, "10.9.0", H100).is_file()
    ensure_engine(trt, model, "fp32", profile, tmp_path, H100)  # another key: another engine
    assert trt.builds() == 2 and len(list(tmp_path.glob("*.engine"))) == 2


@pytest.mark.parametrize("spoil", ["sidecar says another gpu", "sidecar gone", "engine truncated",
                                   "engine swapped"])
def test_an_engine_that_does_not_match_its_sidecar_is_rebuilt_not_run(tmp_path, model, spoil):
    trt = FakeTensorRT()
    engine = ensure_engine(trt, model, "fp16", Profile(1, 8, 16), tmp_path, H100)
    sidecar = read_sidecar(engine)
    if spoil == "sidecar says another gpu":
        sidecar["gpu"]["compute_capability"] = "8.0"
        sidecar_path(engine).write_text(json.dumps(sidecar))
    elif spoil == "sidecar gone":
        sidecar_path(engine).unlink()
    elif spoil == "engine truncated":
        engine.write_bytes(engine.read_bytes()[:3])
    else:
        engine.write_bytes(b"plan:something else")
    key = engine_key(model, "fp16", Profile(1, 8, 16), "10.9.0", H100)
    assert stale_reason(engine, key) is not None
    logged = []
    assert ensure_engine(trt, model, "fp16", Profile(1, 8, 16), tmp_path, H100, log=logged.append) == engine
    assert trt.builds() == 2 and stale_reason(engine, key) is None
    assert any("rebuilding" in line for line in logged)


def test_a_new_tensorrt_version_gets_its_own_engine(tmp_path, model):
    old, new = FakeTensorRT("10.9.0"), FakeTensorRT("11.1.0")
    a = ensure_engine(old, model, "fp16", DEFAULT_PROFILE, tmp_path, H100)
    b = ensure_engine(new, model, "fp16", DEFAULT_PROFILE, tmp_path, H100)
    assert a != b and new.builds() == 1 and b.read_bytes() == b"plan:11.1.0"


# --- error paths ----------------------------------------------------------------------------------


def test_parse_and_build_failures_name_the_graph(tmp_path, model, key):
    with pytest.raises(BackendError, match=r"model\.fp16\.onnx: TensorRT cannot parse it \(In node 3 \(Conv\): unsupported\)$"):
        build_engine(FakeTensorRT(parse_ok=False), model, key, tmp_path / "a.engine")
    with pytest.raises(BackendError, match="could not build"):
        build_engine(FakeTensorRT(build_ok=False), model, key, tmp_path / "a.engine")
    assert not (tmp_path / "a.engine").exists() and not sidecar_path(tmp_path / "a.engine").exists()


def test_missing_onnx_and_unknown_precision(tmp_path, model):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model.root, copy)
    (copy / "model.fp16.onnx").unlink()
    broken = load_model_dir(copy)
    with pytest.raises(BackendError, match=r"model\.fp16\.onnx: missing from the model folder"):
        onnx_for(broken, "fp16")
    with pytest.raises(BackendError, match="missing"):
        build_for_model(broken, precision="fp16")  # the folder is checked before tensorrt is looked for
    with pytest.raises(BackendError, match="--precision 'bf16'"):
        onnx_for(model, "bf16")


def test_no_tensorrt(monkeypatch, model):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendError) as info:
        import_tensorrt()
    assert str(info.value) == NOT_INSTALLED
    with pytest.raises(BackendError, match="tensorrt is not installed"):
        build_for_model(model)


def test_no_gpu(monkeypatch, model):
    from hx_infer.backends.trt import TrtBackend

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    with pytest.raises(BackendError) as info:
        TrtBackend(model, BackendSpec(device="cpu"))
    assert str(info.value) == NEEDS_CUDA
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(BackendError) as info:
        TrtBackend(model, BackendSpec(device="cuda"))
    assert str(info.value) == NEEDS_CUDA
    monkeypatch.setattr("hx_infer.backends.base.cuda_available", lambda: False)
    with pytest.raises(BackendError, match="--device cuda: no CUDA device"):
        build_for_model(model, device="cuda")
    with pytest.raises(BackendError, match="--device cpu: TensorRT builds on the GPU"):
        build_for_model(model, device="cpu")


def test_trt_backend_refuses_bf16(monkeypatch, model):
    from hx_infer.backends.base import resolve_precision
    from hx_infer.backends.trt import TrtBackend

    assert resolve_precision(TrtBackend, None, "cuda") == "fp16" and resolve_precision(TrtBackend, "fp32", "cuda") == "fp32"
    with pytest.raises(BackendError, match="bf16"):
        resolve_precision(TrtBackend, "bf16", "cuda")


def test_auto_prefers_trt_on_cuda_when_installed(monkeypatch):
    monkeypatch.setattr("hx_infer.backends.base.trt_installed", lambda: True)
    assert resolve_backend("auto", "cuda") == "trt"
    assert resolve_backend("auto", "cpu") == "ort"
    monkeypatch.setattr("hx_infer.backends.base.trt_installed", lambda: False)
    monkeypatch.setattr("hx_infer.backends.base.ort_has_cuda", lambda: False)
    assert resolve_backend("auto", "cuda") == "torch"


# --- hx-infer build ---------------------------------------------------------------------------------


def _build(*args):
    return CliRunner().invoke(main, ["build", *map(str, args)])


def _one_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hx-infer: error:"), result.output
    for needle in needles:
        assert needle in lines[0]


def test_build_cli_errors(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    _one_line(_build(tiny_model_dir, "--min-batch", "0"), "--min-batch")
    _one_line(_build(tiny_model_dir, "--opt-batch", "256"), "--opt-batch 256", "min <= opt <= max")
    _one_line(_build(tiny_model_dir, "--precision", "bf16"), "bf16")
    _one_line(_build(tiny_model_dir, "--workspace", "0"), "--workspace")
    _one_line(_build(tmp_path / "nowhere"), "not a model folder")
    _one_line(_build(tiny_model_dir), "tensorrt is not installed")
    assert not list(tmp_path.glob("**/*.engine"))


def test_build_cli_writes_engine_and_sidecar(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr("hx_infer.backends.base.resolve_device", lambda device: device)
    monkeypatch.setattr("hx_infer.backends.trt_build.current_gpu", lambda device: H100)
    out = tmp_path / "tiny.engine"
    result = _build(tiny_model_dir, "--out", out, "--max-batch", "64", "--timing-cache", tmp_path / "t.cache",
                    "--precision", "fp32")
    assert result.exit_code == 0, result.output
    sidecar = read_sidecar(out)
    assert sidecar["profile"] == {"min": 1, "opt": 32, "max": 64} and sidecar["precision"] == "fp32"
    assert sidecar["onnx"] == "model.onnx" and (tmp_path / "t.cache").is_file()
    assert str(out) in result.output


def test_importing_the_trt_modules_does_not_import_tensorrt():
    code = ("import sys, hx_infer.backends.trt_build, hx_infer.backends.trt, hx_infer.bench, hx_infer.run.device; "
            "print('tensorrt' in sys.modules, 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"
