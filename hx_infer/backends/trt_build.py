"""TensorRT engines from a model folder: build, describe in a sidecar, cache, and find again.

    ENGINE         the serialized engine (TensorRT's plan), written atomically
    ENGINE.json    its sidecar: what it was built from and for (the cache key's fields), and
                   the engine file's own sha256, so a truncated or swapped file is never run

An engine only runs on the TensorRT version and GPU model it was built with, for the batch
sizes of its optimisation profile. The cache key is therefore (ONNX sha256, TensorRT version,
GPU name + compute capability, precision, profile); `hx-infer run --backend trt` builds once per
key into the engine cache and reuses it; an engine whose sidecar does not match is rebuilt,
never run.

TensorRT 10.8+ and 11.x: 11 removed weak typing (BuilderFlag.FP16 and friends), so networks are
built strongly typed and the precision comes from the ONNX graph itself: model.fp16.onnx for
fp16, model.onnx for fp32. One optimisation profile over the batch axis. The timing cache
(layer timings, the slow part of a build) is kept beside the engines and reused by every build
on the same TensorRT version and GPU.

Everything that decides (keys, sidecars, profiles) is plain Python tested on the
CPU; the tensorrt module is imported only by import_tensorrt() and passed in from there.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from .base import DEFAULT_BATCH, BackendError, Device
from ..extras import install_hint
from ..io.images import atomic_write
from ..model import ModelDir, sha256_file

SIDECAR_FORMAT = "hx-trt-engine/1"
NOT_INSTALLED = f"--backend trt: tensorrt is not installed ({install_hint('trt')}); use --backend ort or torch"
NEEDS_CUDA = "--backend trt: TensorRT needs a CUDA device (--device cuda); use --backend ort on the CPU"
PRECISIONS = ("fp16", "fp32")  # the two graphs a model folder holds

Log = Callable[[str], None]


def import_tensorrt() -> ModuleType:
    """The tensorrt module, or BackendError saying how to get it. Import it only through here."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError(NOT_INSTALLED) from None
    return tensorrt


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/hx/trt, else ~/.cache/hx/trt."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hx" / "trt"


@dataclass(frozen=True)
class Profile:
    """The batch sizes an engine accepts (min..max) and the one it is tuned for (opt)."""

    min: int
    opt: int
    max: int

    def check(self) -> "Profile":
        if self.min < 1:
            raise BackendError(f"--min-batch must be at least 1, got {self.min}")
        if not self.min <= self.opt <= self.max:
            raise BackendError(f"--min-batch {self.min}, --opt-batch {self.opt}, --max-batch {self.max}: "
                               "need min <= opt <= max")
        return self


DEFAULT_PROFILE = Profile(1, DEFAULT_BATCH["cuda"], 128)  # hx-infer build's defaults: tuned for run's batch


def profile_for_batch(batch_size: int | None) -> Profile:
    """The profile of `hx-infer run --backend trt --batch-size N`: build's defaults tuned for N, so
    `hx-infer build MODEL` builds exactly the engine a default run looks for."""
    opt = batch_size or DEFAULT_PROFILE.opt
    return Profile(DEFAULT_PROFILE.min, opt, max(opt, DEFAULT_PROFILE.max))


@dataclass(frozen=True)
class Gpu:
    name: str  # "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "9.0"


def current_gpu(device: str = "cuda") -> Gpu:
    import torch

    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return Gpu(torch.cuda.get_device_name(index), f"{major}.{minor}")


def on_device(device: str):
    """A context in which `device` ('cuda:N') is the current CUDA device; plain 'cuda' keeps the
    current one. TensorRT builds, deserializes, creates contexts and enqueues on the current device."""
    import torch

    chosen = torch.device(device)
    return contextlib.nullcontext() if chosen.index is None else torch.cuda.device(chosen)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Any field changed -> another engine."""

    onnx_sha256: str
    tensorrt: str
    gpu: Gpu
    precision: str
    profile: Profile

    def fields(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """A short, stable name for the key (the engine's file name in the cache)."""
        text = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def onnx_for(model: ModelDir, precision: str) -> Path:
    """The graph that carries `precision`: strongly typed engines take their types from it."""
    if precision not in PRECISIONS:
        raise BackendError(f"--precision {precision!r}: TensorRT engines are built fp16 or fp32 "
                           "(the model folder's two graphs); use --backend torch for bf16")
    path = model.onnx_fp16_path if precision == "fp16" else model.onnx_path
    if not path.is_file():
        raise BackendError(f"{path}: missing from the model folder; re-export it with hx-train export")
    return path


def engine_key(model: ModelDir, precision: str, profile: Profile, tensorrt_version: str, gpu: Gpu) -> EngineKey:
    return EngineKey(sha256_file(onnx_for(model, precision)), tensorrt_version, gpu, precision, profile.check())


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def cached_engine_path(cache_dir: Path, key: EngineKey) -> Path:
    return Path(cache_dir) / f"{key.precision}-b{key.profile.max}-{key.digest()}.engine"


def timing_cache_path(cache_dir: Path, tensorrt_version: str, gpu: Gpu) -> Path:
    """Timings hold for one TensorRT version on one GPU model, whatever the network."""
    return Path(cache_dir) / f"timing-trt{tensorrt_version}-sm{gpu.compute_capability.replace('.', '')}.cache"


def make_sidecar(key: EngineKey, engine_sha256: str, model: ModelDir, onnx_path: Path) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        **key.fields(),
        "engine_sha256": engine_sha256,
        "onnx": onnx_path.name,
        "model": {"path": str(model.root), "sha256": model.sha256, "preset": model.preset, "size": model.size,
                  "target": model.target, "input_name": model.card.get("input_name", "image"),
                  "output_name": model.output_name},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def read_sidecar(engine: Path) -> dict | None:
    """The sidecar of `engine`, or None when it is missing or unreadable."""
    try:
        sidecar = json.loads(sidecar_path(engine).read_text())
    except (OSError, ValueError):
        return None
    return sidecar if isinstance(sidecar, dict) and sidecar.get("format") == SIDECAR_FORMAT else None


def mismatches(sidecar: dict | None, key: EngineKey) -> list[str]:
    """The key fields on which an engine's sidecar differs from `key` (all of them when there is none)."""
    wanted = key.fields()
    if sidecar is None:
        return list(wanted)
    return [name for name, value in wanted.items() if sidecar.get(name) != value]


def stale_reason(engine: Path, key: EngineKey) -> str | None:
    """Why `engine` must not run for `key` (one line), or None when it may."""
    if not engine.is_file():
        return "not built yet"
    sidecar = read_sidecar(engine)
    if sidecar is None:
        return f"{sidecar_path(engine).name} is missing or unreadable"
    differ = mismatches(sidecar, key)
    if differ:
        return f"built for another {', '.join(differ)}"
    if sidecar.get("engine_sha256") != sha256_file(engine):
        return "engine file does not match its sidecar's sha256"
    return None


# ---------------------------------------------------------------------------------------------
# Building (needs tensorrt and a GPU)


def build_engine(trt: ModuleType, model: ModelDir, key: EngineKey, engine: Path, *,
                 timing_cache: Path | None = None, workspace_gib: float | None = None,
                 log: Log = lambda line: None) -> dict:
    """Build `key`'s engine from `model` and write it and its sidecar (atomically); return the sidecar."""
    if workspace_gib is not None and workspace_gib <= 0:
        raise BackendError(f"--workspace must be more than 0 GiB, got {workspace_gib}")
    onnx_path = onnx_for(model, key.precision)
    log(f"building a TensorRT {trt.__version__} {key.precision} engine for {key.gpu.name} "
        f"(batch {key.profile.min}..{key.profile.max}, tuned for {key.profile.opt}); this takes minutes once")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: required for our fp16 graph on 10.x, the only mode on 11.x (flag accepted, ignored).
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):  # our ONNX files are self-contained (no external data)
        first = str(parser.get_error(0)) if parser.num_errors else "unknown error"
        raise BackendError(f"{onnx_path}: TensorRT cannot parse it ({first.splitlines()[0]})")
    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    input_name, s = model.card.get("input_name", "image"), model.size
    profile = builder.create_optimization_profile()
    p = key.profile
    profile.set_shape(input_name, (p.min, 3, s, s), (p.opt, 3, s, s), (p.max, 3, s, s))
    config.add_optimization_profile(profile)
    cache = _attach_timing_cache(config, timing_cache, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT could not build an engine (see its messages above)")
    data = bytes(serialized)
    if timing_cache is not None:
        atomic_write(timing_cache, bytes(cache.serialize()))
    sidecar = make_sidecar(key, hashlib.sha256(data).hexdigest(), model, onnx_path)
    # engine first, sidecar last: a sidecar always describes a complete engine file
    atomic_write(engine, data)
    atomic_write(sidecar_path(engine), (json.dumps(sidecar, indent=2) + "\n").encode())
    log(f"wrote {engine} ({len(data) / 2**20:.1f} MiB)")
    return sidecar


def _attach_timing_cache(config, path: Path | None, log: Log):
    """Load the timing cache at `path` into `config` (a fresh one when absent or from elsewhere)."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)  # None when TensorRT cannot read the blob
    if cache is None or not config.set_timing_cache(cache, False):  # False: refuse another GPU's timings
        log(f"{path}: timing cache unreadable or from another TensorRT version or GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def ensure_engine(trt: ModuleType, model: ModelDir, precision: str, profile: Profile, cache_dir: Path,
                  gpu: Gpu, *, workspace_gib: float | None = None, timing_cache: Path | None = None,
                  log: Log = lambda line: None) -> Path:
    """The cached engine for (model, precision, profile) on this TensorRT and GPU: reused when its
    sidecar matches, otherwise (re)built. Returns the engine's path."""
    cache_dir = Path(cache_dir)
    key = engine_key(model, precision, profile, trt.__version__, gpu)
    engine = cached_engine_path(cache_dir, key)
    reason = stale_reason(engine, key)
    if reason is None:
        return engine
    if engine.is_file():
        log(f"{engine}: {reason}; rebuilding")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendError(f"--engine-cache {cache_dir}: cannot create ({e.strerror})") from None
    build_engine(trt, model, key, engine, timing_cache=timing_cache or timing_cache_path(cache_dir, trt.__version__, gpu),
                 workspace_gib=workspace_gib, log=log)
    return engine


def build_for_model(model: ModelDir, *, precision: str = "fp16", profile: Profile = DEFAULT_PROFILE,
                    out: Path | None = None, timing_cache: Path | None = None, workspace_gib: float | None = None,
                    cache_dir: Path | None = None, device: str = "cuda", log: Log = lambda line: None) -> Path:
    """`hx-infer build`: the engine for `model` at `out` (always built), or in the engine cache
    where `hx-infer run --backend trt` looks for it (built unless an up-to-date one is there).

    Checks the options and the model folder first, then that tensorrt and a GPU are here: each
    failure is a BackendError naming what is wrong or missing.
    """
    from .base import resolve_device

    profile.check()
    onnx_for(model, precision)
    if workspace_gib is not None and workspace_gib <= 0:
        raise BackendError(f"--workspace must be more than 0 GiB, got {workspace_gib}")
    trt = import_tensorrt()
    if not Device.parse(device).cuda:
        raise BackendError(f"--device {device}: TensorRT builds on the GPU the engine will run on; use --device cuda")
    resolve_device(device)  # BackendError when no CUDA device is visible
    gpu = current_gpu(device)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    with on_device(device):
        if out is None:
            return ensure_engine(trt, model, precision, profile, cache_dir, gpu, workspace_gib=workspace_gib,
                                 timing_cache=timing_cache, log=log)
        key = engine_key(model, precision, profile, trt.__version__, gpu)
        if timing_cache is None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            timing_cache = timing_cache_path(cache_dir, trt.__version__, gpu)
        build_engine(trt, model, key, Path(out), timing_cache=timing_cache, workspace_gib=workspace_gib, log=log)
    return Path(out)
