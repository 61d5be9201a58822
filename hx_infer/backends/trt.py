"""TensorRT backend: a cached engine (hx_infer.backends.trt_build) run on torch's CUDA streams.

Device buffers are torch CUDA tensors (set_tensor_address), and execute_async_v3 runs on the
caller's current torch stream, so the engine orders with everything else torch queues there.
An execution context holds per-inference state, so each stream gets its own. Batches larger
than the engine's profile are run in pieces. Optional CUDA graphs: one capture per batch size
(up to MAX_GRAPHS), each with its own context and static buffers.

Nothing here has run on a GPU with TensorRT yet (see README, "GPU and TensorRT"); its decisions
are tested on the CPU in tests/hx_infer/backends/test_trt.py.
"""
from __future__ import annotations

from ..model import ModelDir
from .base import Backend, BackendError, BackendSpec, Device
from .trt_build import (NEEDS_CUDA, NOT_INSTALLED, PRECISIONS, current_gpu, default_cache_dir, ensure_engine,
                        import_tensorrt, on_device, profile_for_batch)

__all__ = ["TrtBackend", "NOT_INSTALLED", "NEEDS_CUDA"]

MAX_GRAPHS = 4


class TrtBackend(Backend):
    name = "trt"
    precisions = PRECISIONS
    works_on = "torch"

    def __init__(self, model: ModelDir, spec: BackendSpec, log=None):
        trt = import_tensorrt()  # imported here only: hx must import without it
        if spec.device == "auto" or not Device.parse(spec.device).cuda:
            raise BackendError(NEEDS_CUDA)
        import torch

        if not torch.cuda.is_available():
            raise BackendError(NEEDS_CUDA)
        super().__init__(model, spec)
        self.profile = profile_for_batch(spec.batch_size)
        self._torch = torch
        self._device = torch.device(str(self.device))
        cache = spec.engine_cache or default_cache_dir()
        logger = trt.Logger(trt.Logger.WARNING)
        with on_device(str(self.device)):
            self.engine_path = ensure_engine(trt, model, self.precision, self.profile, cache,
                                             current_gpu(str(self.device)), log=log or (lambda line: None))
            self._engine = trt.Runtime(logger).deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{self.engine_path}: TensorRT cannot load this engine; delete it to rebuild")
        self._input, self._output = _io_names(trt, self._engine)
        self._in_dtype = _torch_dtype(trt, torch, self._engine.get_tensor_dtype(self._input))
        self._out_dtype = _torch_dtype(trt, torch, self._engine.get_tensor_dtype(self._output))
        self._max_batch = int(self._engine.get_tensor_profile_shape(self._input, 0)[2][0])
        self._contexts: dict[int, object] = {}  # stream handle -> execution context
        self._use_graphs = bool(spec.cuda_graphs)  # off unless asked for
        self._graphs: dict[int, tuple] = {}  # batch size -> (graph, context, static in, static out)

    def _release(self) -> None:
        self._graphs.clear()
        self._contexts.clear()
        self._engine = None

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self._use_graphs else ""
        return f"trt {self.precision} on {self.device} (batch {self.profile.min}..{self._max_batch}{graphs})"

    def _chunk_size(self) -> int:
        return self._max_batch  # batches over the profile's maximum are run in pieces

    def _run(self, chunk):
        with on_device(str(self.device)):  # execution contexts are made and enqueued on the current device
            x = chunk.to(self._device, self._in_dtype, non_blocking=True).contiguous()
            return self._enqueued(x, self._torch.cuda.current_stream(self._device)).float()

    def _context(self, stream):
        context = self._contexts.get(stream.cuda_stream)
        if context is None:
            context = self._contexts[stream.cuda_stream] = self._engine.create_execution_context()
        return context

    def _enqueue(self, context, x, out, stream) -> None:
        if not context.set_input_shape(self._input, tuple(x.shape)):
            raise BackendError(f"trt: the engine refuses input shape {list(x.shape)}")
        context.set_tensor_address(self._input, x.data_ptr())
        context.set_tensor_address(self._output, out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise BackendError("trt: TensorRT could not run the engine (see its messages above)")

    def _enqueued(self, x, stream):
        """x [n, 3, S, S] engine dtype on the device, n <= the profile's max -> [n, C, S, S]."""
        n = len(x)
        if self._use_graphs and (n in self._graphs or len(self._graphs) < MAX_GRAPHS):
            graph, _, static_in, static_out = self._graphs.get(n) or self._capture(n, stream)
            static_in.copy_(x)
            graph.replay()
            return static_out.clone()  # the next replay overwrites static_out
        out = self._torch.empty((n, self.model.out_channels, self.model.size, self.model.size),
                                dtype=self._out_dtype, device=self._device)
        self._enqueue(self._context(stream), x, out, stream)
        return out

    def _capture(self, n: int, stream):
        torch = self._torch
        s, c = self.model.size, self.model.out_channels
        static_in = torch.zeros((n, 3, s, s), dtype=self._in_dtype, device=self._device)
        static_out = torch.empty((n, c, s, s), dtype=self._out_dtype, device=self._device)
        context = self._engine.create_execution_context()
        side = torch.cuda.Stream(self._device)
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            # TensorRT does its lazy allocations on the first enqueue after a shape change,
            # which must not happen inside the capture
            self._enqueue(context, static_in, static_out, side)
        stream.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._enqueue(context, static_in, static_out, torch.cuda.current_stream(self._device))
        self._graphs[n] = (graph, context, static_in, static_out)
        return self._graphs[n]


def _io_names(trt, engine) -> tuple[str, str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or len(outputs) != 1:
        raise BackendError(f"trt: expected one input and one output, the engine has {inputs} and {outputs}")
    return inputs[0], outputs[0]


def _torch_dtype(trt, torch, dtype):
    table = {trt.DataType.HALF: torch.float16, trt.DataType.FLOAT: torch.float32}
    if dtype not in table:
        raise BackendError(f"trt: engine tensor type {dtype} is neither float16 nor float32")
    return table[dtype]
