"""TensorRT backend. The engine itself (build from model.fp16.onnx, cache, run) is a later issue;
until then this backend only says clearly why it cannot run, and never pretends to."""
from __future__ import annotations

from ..model import ModelDir
from .base import Backend, BackendError

NOT_INSTALLED = "--backend trt: tensorrt is not installed (pip install 'hx[trt]'); use --backend ort or torch"
NEEDS_CUDA = "--backend trt: TensorRT needs a CUDA device (--device cuda); use --backend ort on the CPU"
NOT_BUILT_YET = ("--backend trt: the TensorRT engine is not implemented yet; "
                 "use --backend ort (TensorRT execution provider) or torch")


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, model: ModelDir, device: str = "cuda", precision: str | None = None,
                 batch_size: int | None = None, engine_cache=None):
        super().__init__(model, device)
        try:
            import tensorrt  # noqa: F401  (imported here only: hx must import without it)
        except ImportError:
            raise BackendError(NOT_INSTALLED) from None
        if not device.startswith("cuda"):
            raise BackendError(NEEDS_CUDA)
        raise BackendError(NOT_BUILT_YET)

    def _infer(self, batch):
        raise BackendError(NOT_BUILT_YET)
