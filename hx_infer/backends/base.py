"""The contract every backend keeps, and the one factory that picks a backend by name.

A backend runs the raw generator and nothing else: letterboxing, un-letterboxing and
composition live in hx_infer.transforms / hx_infer.compose.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from abc import ABC, abstractmethod

import numpy as np

from ..extras import require
from ..model import ModelDir

BACKENDS = ("auto", "trt", "ort", "torch")


class BackendError(Exception):
    """The chosen backend cannot run here (runtime not installed, no GPU, bad input)."""


class Backend(ABC):
    """Context manager that turns batches of letterboxed photos into model outputs.

    infer(batch): [N, 3, S, S] float32 RGB in [-1, 1] (numpy on CPU; a numpy array or a torch
    tensor on CUDA backends) -> [N, C, S, S] float32 in [0, 1] of the same kind, C = 1 (alpha)
    or 3 (rgb). N may be anything from 1 up; backends split or pad internally.
    """

    name: str = "?"

    def __init__(self, model: ModelDir, device: str = "cpu"):
        self.model = model
        self.device = device

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release sessions, engines and device memory. Idempotent."""

    def infer(self, batch):
        """Check the batch against the model, then run it."""
        shape = tuple(batch.shape)
        s = self.model.size
        if len(shape) != 4 or shape[1:] != (3, s, s) or shape[0] < 1:
            raise BackendError(f"{self.name}: expected a [N, 3, {s}, {s}] batch, got {list(shape)}")
        if isinstance(batch, np.ndarray) and batch.dtype != np.float32:
            raise BackendError(f"{self.name}: expected float32, got {batch.dtype}")
        return self._infer(batch)

    @abstractmethod
    def _infer(self, batch):
        ...

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


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


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. Checks 'cuda:N' exists."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not cuda_available():
            raise BackendError(f"--device {device}: no CUDA device is visible")
        import torch

        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise BackendError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise BackendError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")


def resolve_backend(name: str, device: str) -> str:
    """'auto' -> the fastest available here: trt > ort with CUDA > torch on CUDA > ort on CPU."""
    if name != "auto":
        if name not in _IMPLEMENTATIONS:
            raise BackendError(f"--backend {name!r}: choose from {', '.join(BACKENDS)}")
        return name
    if device.startswith("cuda"):
        if trt_installed():
            return "trt"
        if ort_has_cuda():
            return "ort"
        return "torch"
    return "ort"


def open_backend(name: str, model: ModelDir, device: str = "auto", **options) -> Backend:
    """Make the backend `name` ('auto' included) for `model` on `device` ('auto', 'cpu', 'cuda[:N]').

    options: precision ('fp32', 'fp16', 'bf16'; default fp16 on CUDA, fp32 on CPU), batch_size
    (the batch the caller will mostly send, for graph capture and engine profiles), and
    backend-specific keywords (engine_cache for trt, threads for ort).
    """
    device = resolve_device(device)
    name = resolve_backend(name, device)
    if name in _EXTRAS:
        extra, modules = _EXTRAS[name]
        problem = require(f"--backend {name}", extra, *modules)
        if problem:
            raise BackendError(problem)
    module_name, class_name = _IMPLEMENTATIONS[name]
    cls = getattr(importlib.import_module(module_name, __package__), class_name)
    # Callers pass one set of options for every backend; each backend takes the ones it knows.
    accepted = inspect.signature(cls.__init__).parameters
    return cls(model, device, **{k: v for k, v in options.items() if k in accepted})
