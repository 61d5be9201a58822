"""ONNX Runtime backend: the fp32 graph on the CPU everywhere; on CUDA (needs onnxruntime-gpu)
TensorRT EP -> CUDA EP, with the fp16 graph for fp16 and device buffers bound directly (IO binding).

The CUDA half cannot run on the machines the tests run on, so everything it decides (precision,
provider list, option dicts) lives in small functions the tests call directly.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from ..extras import install_hint
from ..model import ModelDir
from .base import DEFAULT_BATCH, Backend, BackendError, BackendSpec

CUDA_PROVIDER = "CUDAExecutionProvider"
TRT_PROVIDER = "TensorrtExecutionProvider"
# onnxruntime and onnxruntime-gpu install the same module: the CPU one, installed after, hides the GPU one.
NO_GPU_ORT = ("--backend ort --device {device}: this ONNX Runtime has no CUDA provider; " + install_hint("gpu")
              + ", then keep the GPU build alone: pip uninstall -y onnxruntime onnxruntime-gpu && "
              "pip install onnxruntime-gpu; or use --backend torch, or --device cpu")


def cpu_threads(threads: int | None) -> int:
    """`threads`, or every core this process may run on (affinity and cgroup cpusets included)."""
    if threads is not None:
        if threads < 1:
            raise BackendError(f"--threads must be at least 1, got {threads}")
        return threads
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_engine_cache(model: ModelDir) -> Path:
    """~/.cache/hx/ort-trt/<model sha256 prefix>: engines are tied to one graph and one GPU."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "hx" / "ort-trt" / model.sha256[:16]


def cuda_providers(model: ModelDir, device_id: int, precision: str, batch_size: int,
                   engine_cache: Path | None, with_tensorrt: bool) -> list[tuple[str, dict]]:
    """The provider list for a CUDA session, highest priority first.

    TensorRT EP takes the whole graph when it can (our graph is plain convolutions), CUDA EP takes
    whatever it refuses. The explicit profile (batch 1..batch_size) stops TensorRT rebuilding its
    engine for every new batch size; cached engines and timings make the second start fast.
    """
    cuda = (CUDA_PROVIDER, {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE"})
    if not with_tensorrt:
        return [cuda]
    cache = str(engine_cache or default_engine_cache(model))
    name, s = model.card.get("input_name", "image"), model.size

    def shape(n: int) -> str:
        return f"{name}:{n}x3x{s}x{s}"

    trt = {
        "device_id": device_id,
        # the fp16 graph already carries its precision; the flag lets TensorRT pick fp16 kernels
        # for any layer the parser leaves in fp32
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(batch_size),
        "trt_profile_max_shapes": shape(batch_size),
    }
    return [(TRT_PROVIDER, trt), cuda]


def _open_session(ort, path: Path, options, providers: list):
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendError(f"{path}: onnxruntime cannot open it ({first})") from None


class OrtBackend(Backend):
    name = "ort"
    precisions = ("fp32", "fp16")  # the two graphs a model folder holds

    def __init__(self, model: ModelDir, spec: BackendSpec):
        super().__init__(model, spec)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; the Cast/fallback warnings are expected
        with_trt = False
        if not self.device.cuda:
            options.intra_op_num_threads = cpu_threads(spec.threads)
            if not spec.spin:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            path, providers = model.onnx_path, [("CPUExecutionProvider", {})]
        else:
            self.works_on = "torch"  # IO binding on torch's CUDA buffers
            available = ort.get_available_providers()
            if CUDA_PROVIDER not in available:
                raise BackendError(NO_GPU_ORT.format(device=self.device))
            self._device_id = self.device.index or 0
            with_trt = TRT_PROVIDER in available and importlib.util.find_spec("tensorrt") is not None
            self.batch_size = spec.batch_size or DEFAULT_BATCH["cuda"]  # also TensorRT EP's profile
            path = model.onnx_fp16_path if self.precision == "fp16" else model.onnx_path
            providers = cuda_providers(model, self._device_id, self.precision, self.batch_size, spec.engine_cache,
                                       with_trt)
            if with_trt:
                Path(spec.engine_cache or default_engine_cache(model)).mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            raise BackendError(f"{path}: missing from the model folder")
        self._session = _open_session(ort, path, options, providers)
        if with_trt and TRT_PROVIDER not in self._session.get_providers():
            # The TensorRT EP failed and onnxruntime retried by itself with a bare CUDA EP (device 0,
            # default options): open our own CUDA entry, on our device, instead.
            self._session = _open_session(ort, path, options, providers[1:])
        model.check_graph(self._session.get_inputs()[0].shape,  # a card edited by hand: one line, not ORT's error
                          {o.name: o.shape for o in self._session.get_outputs()})
        self._input = self._session.get_inputs()[0].name
        self._output = model.output_name

    def _release(self) -> None:
        self._session = None

    def describe(self) -> str:
        used = self._session.get_providers() if self._session is not None else []
        return f"ort {self.precision} on {self.device} ({', '.join(p.replace('ExecutionProvider', '') for p in used)})"

    def _run(self, chunk):
        if self.device.cuda:
            return self._run_cuda(chunk)
        return self._session.run([self._output], {self._input: chunk})[0]  # [n, C, S, S] float32

    def _run_cuda(self, chunk):
        """IO binding: ONNX Runtime reads and writes torch's CUDA buffers, no host round trip."""
        import torch

        device = torch.device("cuda", self._device_id)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        element = np.float16 if self.precision == "fp16" else np.float32
        chunk = chunk.to(device, dtype).contiguous()
        c, s = self.model.out_channels, self.model.size
        out = torch.empty((len(chunk), c, s, s), dtype=dtype, device=device)
        binding = self._session.io_binding()
        binding.bind_input(self._input, "cuda", self._device_id, element, tuple(chunk.shape), chunk.data_ptr())
        binding.bind_output(self._output, "cuda", self._device_id, element, tuple(out.shape), out.data_ptr())
        # sync point: ORT works on its own CUDA stream, so torch's copy into `chunk` must be done
        torch.cuda.current_stream(device).synchronize()
        self._session.run_with_iobinding(binding)  # returns once `out` is written
        return out.float()  # [n, C, S, S] float32 on the GPU
