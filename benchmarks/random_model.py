"""A random-weight model folder for benchmarks: the network's speed does not depend on its weights.

    PYTHONPATH=. python3 -c "import sys; sys.path.insert(0, 'benchmarks'); \
        from random_model import write_random_model as w; w('/tmp/base256', 'base', 256, log=print)"

The folder is written by hx-train's own export (hx_train.export.export_generator: both graphs,
the parity check, the model card), so a benchmark model is a model folder like any other. Where
torch's ONNX exporter cannot run (no onnxscript, as on the GPU check machine) the same export
runs with torch's TorchScript exporter in its place, and the card says so.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable
from unittest import mock

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
    with mock.patch.object(export, "_to_onnx", _torchscript_onnx):
        return _export(generator, out, preset, size, target, f"{source}; TorchScript ONNX export", log)


def _export(generator, out: Path, preset: str, size: int, target: str, source: str, log: Log) -> ModelDir:
    return export.export_generator(generator, out, preset=preset, size=size, target=target, overwrite=True,
                                   card_extra={"data": {"source": source}}, log=log)


def _torchscript_onnx(shipped: torch.nn.Module, size: int, target: str, out: Path):
    """hx_train.export._to_onnx's contract (an fp32 onnx.ModelProto, dynamic batch axis) without onnxscript."""
    import io

    import onnx

    buffer = io.BytesIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            torch.onnx.export(shipped, (torch.zeros(export.PARITY_BATCH, 3, size, size),), buffer, dynamo=False,
                              input_names=[export.INPUT_NAME], output_names=[target],
                              dynamic_axes={export.INPUT_NAME: {0: "batch"}}, opset_version=export.OPSET)
    finally:
        quiet.setLevel(level)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)
    return model
