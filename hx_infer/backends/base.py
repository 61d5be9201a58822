"""The contract every backend keeps, and the one factory that picks a backend by name.

A backend runs the raw generator and nothing else: letterboxing, un-letterboxing and
composition live in hx_infer.transforms / hx_infer.compose. Every backend is opened from one
BackendSpec (name, device, precision, batch size, engine cache, ...): a misspelt option is an
error where the spec is made, never an option some backend silently ignores.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..extras import require
from ..model import ModelDir

BACKENDS = ("auto", "trt", "ort", "torch")
PRECISIONS = ("fp32", "fp16", "bf16")
# Photos per inference call when the caller names none: a CPU gains nothing from larger
# batches; a GPU needs them to be busy (and TensorRT engines are tuned for this size).
DEFAULT_BATCH = {"cpu": 8, "cuda": 32}


class BackendError(ConfigError):
    """The chosen backend cannot run here (runtime not installed, no GPU, bad input)."""


@dataclass(frozen=True)
class Device:
    """Where the model runs, parsed once: `cpu`, or CUDA device `index` (None: the current one)."""

    type: str  # "cpu" or "cuda"
    index: int | None = None

    @classmethod
    def parse(cls, text: "str | Device") -> "Device":
        """'cpu', 'cuda' or 'cuda:N' -> Device (the words only; resolve_device checks the machine)."""
        if isinstance(text, Device):
            return text
        if text == "cpu":
            return cls("cpu")
        if text == "cuda":
            return cls("cuda")
        if text.startswith("cuda:") and text[5:].isdigit():
            return cls("cuda", int(text[5:]))
        raise BackendError(f"--device {text!r}: use auto, cpu, cuda or cuda:N")

    @property
    def cuda(self) -> bool:
        return self.type == "cuda"

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def default_batch_size(device: Device) -> int:
    return DEFAULT_BATCH["cuda" if device.cuda else "cpu"]


@dataclass(frozen=True)
class BackendSpec:
    """Which backend runs the model, where and how: the one value every backend is opened from.

    name: auto, trt, ort or torch. device: 'auto' (settled where the model runs) or a Device
    (text is parsed). precision: fp32, fp16, bf16, or None for the backend's own (fp16 on CUDA,
    fp32 on the CPU). batch_size: the batch the caller will mostly send (graph capture, engine
    profiles, the ort CUDA split), None for the default. engine_cache: the trt backend's folder
    of built engines. threads: ort's CPU threads (None: every core). cuda_graphs: torch and trt
    on CUDA replay captured graphs (None: torch yes, trt no). spin: ort's CPU threads spin-wait
    for the next call, fastest back to back; hx-infer serve turns it off, since between requests
    the spinning takes the cores that decode and encode (49 -> 11 CPU ms a request at concurrency 1).
    """

    name: str = "auto"
    device: "str | Device" = "auto"
    precision: str | None = None
    batch_size: int | None = None
    engine_cache: Path | None = None
    threads: int | None = None
    cuda_graphs: bool | None = None
    spin: bool = True

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise BackendError(f"--backend {self.name!r}: choose from {', '.join(BACKENDS)}")
        if self.device != "auto":
            object.__setattr__(self, "device", Device.parse(self.device))
        if self.precision is not None and self.precision not in PRECISIONS:
            raise BackendError(f"--precision {self.precision!r}: choose {', '.join(PRECISIONS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise BackendError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise BackendError(f"--threads must be at least 1, got {self.threads}")
        if self.engine_cache is not None:
            object.__setattr__(self, "engine_cache", Path(self.engine_cache))

    def resolved(self) -> "BackendSpec":
        """The spec as it runs on this machine: a device that exists, a backend by name, a batch size."""
        device = resolve_device("auto" if self.device == "auto" else str(self.device))
        return replace(self, device=device, name=resolve_backend(self.name, device),
                       batch_size=self.batch_size or default_batch_size(device))


class Backend(ABC):
    """Context manager that turns batches of letterboxed photos into model outputs.

    infer(batch): [N, 3, S, S] float32 RGB in [-1, 1] (numpy on CPU; a numpy array or a torch
    tensor on CUDA backends) -> [N, C, S, S] float32 in [0, 1] of the same kind, C = 1 (alpha)
    or 3 (rgb). N may be anything from 1 up.

    The chores every backend shares live here: the shape and dtype checks, refusing a closed
    backend, converting between numpy and torch (a subclass names the kind its `_run` takes in
    `works_on`), splitting a batch into pieces of at most `_chunk_size()`, settling the
    precision from what the subclass's model files offer (`precisions`), and running one infer()
    at a time when several threads share the backend (close() waits for the one under way).
    """

    name: str = "?"
    precisions: tuple[str, ...] = ("fp32",)
    works_on: str = "numpy"  # or "torch": what _run takes and returns

    def __init__(self, model: ModelDir, spec: BackendSpec):
        if spec.device == "auto":  # a caller's mistake: open_backend settles it on this machine
            raise BackendError(f"{self.name}: give a device (open_backend settles --device auto)")
        self.model = model
        self.spec = spec
        self.device: Device = spec.device
        self.batch_size = spec.batch_size
        self.precision = resolve_precision(type(self), spec.precision, self.device)
        self._closed = False
        # One infer() at a time, whichever threads call it: the torch and trt backends' CUDA graphs
        # replay static buffers, a trt execution context holds the addresses bound to it, and
        # close() must not free what a call under way runs on.
        self._lock = threading.Lock()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release sessions, engines and device memory, once a call under way has ended. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def _release(self) -> None:
        """What close() frees; the subclass's own."""

    def infer(self, batch):
        """Check the batch against the model, then run it in pieces."""
        shape = tuple(batch.shape)
        s = self.model.size
        if len(shape) != 4 or shape[1:] != (3, s, s) or shape[0] < 1:
            raise BackendError(f"{self.name}: expected a [N, 3, {s}, {s}] batch, got {list(shape)}")
        if isinstance(batch, np.ndarray) and batch.dtype != np.float32:
            raise BackendError(f"{self.name}: expected float32, got {batch.dtype}")
        x = _as_numpy(batch) if self.works_on == "numpy" else _as_torch(batch)
        with self._lock:
            if self._closed:
                raise BackendError(f"{self.name}: backend used after close()")
            step = self._chunk_size() or len(x)
            outputs = [self._run(x[start:stop]) for start, stop in split_batches(len(x), step)]
        if len(outputs) == 1:
            out = outputs[0]
        elif self.works_on == "numpy":
            out = np.concatenate(outputs)
        else:
            import torch

            out = torch.cat(outputs)
        return _like(out, batch)  # [N, C, S, S] float32, numpy or torch as the batch was

    def _chunk_size(self) -> int | None:
        """The largest piece _run takes; None: the whole batch."""
        return self.batch_size

    @abstractmethod
    def _run(self, chunk):
        """chunk: [n, 3, S, S] float32 (numpy or torch, as works_on says) -> [n, C, S, S] float32."""

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


def _is_torch(batch) -> bool:
    return type(batch).__module__.split(".")[0] == "torch"


def _as_numpy(batch) -> np.ndarray:
    return batch.detach().cpu().float().numpy() if _is_torch(batch) else batch


def _as_torch(batch):
    import torch

    return torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch


def _like(out, batch):
    """A result back in the caller's kind: numpy for numpy, a tensor on the batch's device for a tensor."""
    if isinstance(batch, np.ndarray):
        return out if isinstance(out, np.ndarray) else out.cpu().numpy()
    if isinstance(out, np.ndarray):
        import torch

        return torch.from_numpy(out).to(batch.device)
    return out.to(batch.device)


def split_batches(n: int, max_batch: int) -> list[tuple[int, int]]:
    """[start, stop) slices of at most max_batch covering 0..n: a batch over what a backend takes
    at once is run in pieces, never refused."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    return [(start, min(start + max_batch, n)) for start in range(0, n, max_batch)]


def resolve_precision(backend: "type[Backend]", precision: str | None, device: "Device | str") -> str:
    """None -> fp16 on CUDA, fp32 on the CPU; otherwise one the backend offers, reduced ones on CUDA only."""
    device = Device.parse(device)
    if precision is None:
        return "fp16" if device.cuda else "fp32"
    if precision not in PRECISIONS:
        raise BackendError(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision not in backend.precisions:
        raise BackendError(f"--precision {precision}: the {backend.name} backend has "
                           f"{' and '.join(backend.precisions)}; use --backend torch for {precision}")
    if precision != "fp32" and not device.cuda:
        raise BackendError(f"--precision {precision}: the {backend.name} backend runs fp32 on the CPU; "
                           "use --device cuda")
    return precision


# name -> (module, class); modules are imported only when their backend is chosen, so
# `import hx_infer` works without tensorrt or onnxruntime-gpu.
_IMPLEMENTATIONS = {
    "ort": (".ort", "OrtBackend"),
    "torch": (".torch", "TorchBackend"),
    "trt": (".trt", "TrtBackend"),
}
# Backends whose runtime is an extra: name -> (extra, modules). (trt says what it lacks itself.)
_EXTRAS = {"torch": ("train", ("torch",))}


def _no_nvidia_driver() -> bool:
    """True when this is Linux and no NVIDIA driver is loaded: CUDA cannot be there.

    Lets `--device auto` settle on the CPU without importing torch, which costs a second or more
    of start-up in every `hx-infer run`.
    """
    return sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version")


def cuda_available() -> bool:
    if _no_nvidia_driver():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def trt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def resolve_device(device: "str | Device") -> Device:
    """'auto' -> CUDA when a GPU is visible, else the CPU. Checks that a CUDA device exists."""
    if device == "auto":
        return Device("cuda") if cuda_available() else Device("cpu")
    parsed = Device.parse(device)
    if parsed.cuda:
        if not cuda_available():
            raise BackendError(f"--device {parsed}: no CUDA device is visible")
        import torch

        if (parsed.index or 0) >= torch.cuda.device_count():
            raise BackendError(f"--device {parsed}: only {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def resolve_backend(name: str, device: "Device | str") -> str:
    """'auto' -> the fastest available here: trt > ort with CUDA > torch on CUDA > ort on CPU.
    A backend whose extra is not installed (torch without `hx[train]`) is one line naming it."""
    chosen = _choose_backend(name, device)
    if chosen in _EXTRAS:
        extra, modules = _EXTRAS[chosen]
        problem = require(f"--backend {chosen}", extra, *modules)
        if problem:
            raise BackendError(problem)
    return chosen


def _choose_backend(name: str, device: "Device | str") -> str:
    if name != "auto":
        if name not in _IMPLEMENTATIONS:
            raise BackendError(f"--backend {name!r}: choose from {', '.join(BACKENDS)}")
        return name
    if Device.parse(device).cuda:
        if trt_installed():
            return "trt"
        if ort_has_cuda():
            return "ort"
        return "torch"
    return "ort"


def open_backend(model: ModelDir, spec: BackendSpec) -> Backend:
    """The backend `spec` names ('auto' included) for `model`, on the device it names, opened here."""
    spec = spec.resolved()
    module_name, class_name = _IMPLEMENTATIONS[spec.name]
    cls = getattr(importlib.import_module(module_name, __package__), class_name)
    return cls(model, spec)


class BackendHandle:
    """A model and the spec of the backend to run it with. The backend opens on this machine at
    the first use of `backend` and stays open until close(); an engine that runs the model
    elsewhere (Ray's actors) reads only `model` and `spec`. Safe from several threads: their first
    uses at once open one backend, not one each."""

    def __init__(self, model: ModelDir, spec: BackendSpec):
        self.model = model
        self.spec = spec
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                self._backend = open_backend(self.model, self.spec)
            return self._backend

    def close(self) -> None:
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
