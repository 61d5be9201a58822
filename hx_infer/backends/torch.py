"""PyTorch backend: generator.pt in eager PyTorch. CPU fp32; CUDA fp16 (default), bf16 or fp32,
channels_last, and CUDA-graph replay of a fixed batch shape.

CUDA graphs: the whole U-Net is ~40 small kernels per image batch, so at small sizes the GPU
waits on Python launching them; one graph replay launches them all. A graph is captured once per
batch size (the caller's batch_size when given; otherwise each size seen, up to MAX_GRAPHS) and
a short batch is padded up to the captured size. The padding rows hold whatever the last batch
left there: harmless, since in eval mode no row influences another.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model import ModelDir
from .base import Backend, BackendError, BackendSpec

MAX_GRAPHS = 4  # without a batch_size hint, sizes beyond this many run eagerly
WARMUP_RUNS = 3  # before capture: cuDNN autotuning and allocator growth must happen outside it
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_generator(model: ModelDir) -> torch.nn.Module:
    """generator.pt -> UnetGenerator of the card's preset, size and target, in eval mode on the CPU."""
    from hx_train.models import build_generator

    path: Path = model.weights_path
    if not path.is_file():
        raise BackendError(f"{path}: missing from the model folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = build_generator(model.preset, model.size, model.target)
        net.load_state_dict(state)
    except Exception as e:  # unpickling, zip and shape errors all mean the same to the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendError(f"{path}: cannot load the generator weights ({first})") from None
    return net.eval()


class TorchBackend(Backend):
    name = "torch"
    precisions = tuple(DTYPES)
    works_on = "torch"

    def __init__(self, model: ModelDir, spec: BackendSpec):
        super().__init__(model, spec)
        self._device = torch.device(str(self.device))
        self._dtype = DTYPES[self.precision]
        net = load_generator(model)
        if self.device.cuda:
            net = net.to(self._device, self._dtype).to(memory_format=torch.channels_last)
            # fixed input shapes: let cuDNN time its algorithms once and keep the fastest
            torch.backends.cudnn.benchmark = True
        self._net = net
        self._use_graphs = spec.cuda_graphs is not False and self.device.cuda
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def _release(self) -> None:
        self._graphs.clear()
        self._net = None
        if self.device.cuda:
            torch.cuda.empty_cache()

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self._use_graphs else ""
        return f"torch {self.precision} on {self.device}{graphs}"

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, S, S] in [-1, 1], backend dtype -> [B, C, S, S] in [0, 1], same dtype."""
        return (self._net(images) + 1) / 2

    @torch.inference_mode()
    def _run(self, chunk: torch.Tensor) -> torch.Tensor:
        if not self.device.cuda:
            return self._forward(chunk.float())
        x = chunk.to(self._device, self._dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        size = self._graph_size(len(x)) if self._use_graphs else None
        if size is None:
            return self._forward(x).float()
        graph, static_in, static_out = self._graphs.get(size) or self._capture(size)
        static_in[:len(x)].copy_(x)
        graph.replay()
        # a copy: the next replay overwrites static_out
        return static_out[:len(x)].to(torch.float32, copy=True)

    def _graph_size(self, n: int) -> int | None:
        """The captured batch size that serves a batch of n, or None to run it eagerly."""
        if self.batch_size is not None:
            return self.batch_size  # Backend.infer never sends more than batch_size
        if n in self._graphs or len(self._graphs) < MAX_GRAPHS:
            return n
        return None

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        s = self.model.size
        with torch.cuda.device(self._device):
            static_in = torch.zeros((size, 3, s, s), dtype=self._dtype, device=self._device)
            static_in = static_in.contiguous(memory_format=torch.channels_last)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
        self._graphs[size] = (graph, static_in, static_out)
        return self._graphs[size]
