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

from ..model import ModelDir
from .base import Backend, BackendError

CUDA_PROVIDER = "CUDAExecutionProvider"
TRT_PROVIDER = "TensorrtExecutionProvider"
DEFAULT_CUDA_BATCH = 32  # TensorRT profile's largest batch when the caller names none
NO_GPU_ORT = ("--backend ort --device {device}: onnxruntime-gpu is not installed (pip install 'hx[gpu]'); "
              "use --backend torch, or --device cpu")


def resolve_precision(precision: str | None, device: str) -> str:
    """None -> fp32 on CPU, fp16 on CUDA. ORT ships only the two graphs the model folder holds."""
    on_cuda = device.startswith("cuda")
    if precision is None:
        return "fp16" if on_cuda else "fp32"
    if precision not in ("fp32", "fp16", "bf16"):
        raise BackendError(f"--precision {precision!r}: choose fp32, fp16 or bf16")
    if precision == "bf16":
        raise BackendError("--precision bf16: the ort backend has fp32 and fp16 graphs; use --backend torch for bf16")
    if precision == "fp16" and not on_cuda:
        raise BackendError("--precision fp16: the ort backend runs fp32 on the CPU; use --device cuda for fp16")
    return precision


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


def _device_id(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def _is_torch(batch) -> bool:
    return type(batch).__module__.split(".")[0] == "torch"


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, model: ModelDir, device: str = "cpu", precision: str | None = None,
                 batch_size: int | None = None, threads: int | None = None,
                 engine_cache: Path | str | None = None, spin: bool = True):
        """spin (CPU): ONNX Runtime's threads spin-wait for the next call, fastest back to back;
        hx-infer serve turns it off, since between requests the spinning takes the cores that
        decode and encode (measured: 49 -> 11 CPU ms per request at concurrency 1)."""
        super().__init__(model, device)
        import onnxruntime as ort

        if batch_size is not None and batch_size < 1:
            raise BackendError(f"--batch-size must be at least 1, got {batch_size}")
        self.precision = resolve_precision(precision, device)
        self.batch_size = batch_size
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; the Cast/fallback warnings are expected
        self._cuda = device.startswith("cuda")
        if not self._cuda:
            options.intra_op_num_threads = cpu_threads(threads)
            if not spin:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            path, providers = model.onnx_path, [("CPUExecutionProvider", {})]
        else:
            available = ort.get_available_providers()
            if CUDA_PROVIDER not in available:
                raise BackendError(NO_GPU_ORT.format(device=device))
            self._device_id = _device_id(device)
            with_trt = TRT_PROVIDER in available and importlib.util.find_spec("tensorrt") is not None
            self.batch_size = batch_size or DEFAULT_CUDA_BATCH
            path = model.onnx_fp16_path if self.precision == "fp16" else model.onnx_path
            cache = Path(engine_cache) if engine_cache else None
            providers = cuda_providers(model, self._device_id, self.precision, self.batch_size, cache, with_trt)
            if with_trt:
                Path(cache or default_engine_cache(model)).mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            raise BackendError(f"{path}: missing from the model folder")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendError(f"{path}: onnxruntime cannot open it ({first})") from None
        self._input = self._session.get_inputs()[0].name
        self._output = model.output_name

    def close(self) -> None:
        self._session = None

    def describe(self) -> str:
        used = self._session.get_providers() if self._session is not None else []
        return f"ort {self.precision} on {self.device} ({', '.join(p.replace('ExecutionProvider', '') for p in used)})"

    def _infer(self, batch):
        if self._session is None:
            raise BackendError("ort: backend used after close()")
        if self._cuda:
            return self._infer_cuda(batch)
        as_torch = _is_torch(batch)
        images = batch.detach().cpu().float().numpy() if as_torch else batch
        step = self.batch_size or len(images)
        outputs = [self._session.run([self._output], {self._input: images[i:i + step]})[0]
                   for i in range(0, len(images), step)]
        result = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)  # [N, C, S, S] float32
        if as_torch:
            import torch

            return torch.from_numpy(result).to(batch.device)
        return result

    def _infer_cuda(self, batch):
        """IO binding: ONNX Runtime reads and writes torch's CUDA buffers, no host round trip."""
        import torch

        device = torch.device("cuda", self._device_id)
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        element = np.float16 if self.precision == "fp16" else np.float32
        as_torch = _is_torch(batch)
        images = (batch if as_torch else torch.from_numpy(batch)).to(device, dtype).contiguous()
        c, s = self.model.out_channels, self.model.size
        outputs = []
        for chunk in images.split(self.batch_size):
            out = torch.empty((len(chunk), c, s, s), dtype=dtype, device=device)
            binding = self._session.io_binding()
            binding.bind_input(self._input, "cuda", self._device_id, element, tuple(chunk.shape), chunk.data_ptr())
            binding.bind_output(self._output, "cuda", self._device_id, element, tuple(out.shape), out.data_ptr())
            # sync point: ORT works on its own CUDA stream, so torch's copy into `chunk` must be done
            torch.cuda.current_stream(device).synchronize()
            self._session.run_with_iobinding(binding)  # returns once `out` is written
            outputs.append(out)
        result = torch.cat(outputs).float()  # [N, C, S, S] float32 on the GPU
        if as_torch:
            return result.to(batch.device)
        return result.cpu().numpy()
