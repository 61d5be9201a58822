"""A random-weight model folder for benchmarks: the network's speed does not depend on its weights.

    PYTHONPATH=. python3 -c "import sys; sys.path.insert(0, 'benchmarks'); \
        from random_model import write_random_model as w; w('/tmp/base256', 'base', 256, log=print)"

The folder is written by hx-train's own export (hx_train.export.export_generator: both graphs,
the parity check, the model card), so a benchmark model is a model folder like any other. Where
torch's ONNX exporter cannot run (no onnxscript, as on the GPU check machine) the same export
runs with torch's TorchScript exporter in its place, and the card says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hx_infer.model import ModelDir
from hx_train import export
from hx_train.models import build_generator, init_weights

Log = Callable[[str], None]


def write_random_model(out: Path, preset: str, size: int, target: str = "alpha", seed: int = 0,
                       log: Log = lambda line: None) -> ModelDir:
    """Export a freshly initialised generator to `out` (replacing it)."""
    torch.manual_seed(seed)
    generator = init_weights(build_generator(preset, size, target)).eval()
    source = f"random weights (seed {seed}), for benchmarks"
    try:
        return _export(generator, out, preset, size, target, source, log)
    except export.ExportError as e:
        if "onnxscript" not in str(e):
            raise
        log(f"{e}; exporting with torch's TorchScript exporter instead")
    return _export(generator, out, preset, size, target, f"{source}; TorchScript ONNX export", log,
                   exporter="torchscript")


def _export(generator, out: Path, preset: str, size: int, target: str, source: str, log: Log,
            exporter: str = "dynamo") -> ModelDir:
    return export.export_generator(generator, out, preset=preset, size=size, target=target, overwrite=True,
                                   card_extra={"data": {"source": source}}, log=log, exporter=exporter)
