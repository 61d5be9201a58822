"""Training checkpoint -> model folder (see hx_infer/model.py for the layout).

    export(ckpt, out)                      reads an hx-ckpt/1 checkpoint, then does what follows
    export_generator(generator, out, ...)  ONNX fp32 + fp16 graphs, weights, parity check, model.json

Exporter: torch.onnx.export with dynamo=True (the default since torch 2.9; needs onnxscript;
`exporter="torchscript"` is the old one, for machines without onnxscript; the card names which). We
chose it over the TorchScript exporter because that one is deprecated and warns on every call, and
because the dynamo path folds eval-mode batch-norm into the convolutions, so the graph cannot carry
training-mode statistics at all. It costs ~4 s per export on a laptop CPU; the TorchScript one 0.2 s.

fp16 graph: the fp32 graph with every float tensor (initializers, inputs, outputs, value_info,
Constant/Cast attributes) turned into float16, so both graphs share one structure. ONNX Runtime's
CPU provider runs it by wrapping its fp32 kernels in Cast nodes where it has no fp16 kernel:
weights and the tensors between nodes are float16, arithmetic inside a kernel is float32 (which is
also how GPU fp16 convolutions accumulate). That is the fp16 parity check we record.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import pickle
import shutil
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from hx_infer.extras import install_hint
from hx_infer.io.images import fsync_path
from hx_infer.model import CARD, FORMAT, ONNX_FP16, ONNX_FP32, WEIGHTS, ModelDir, load_model_dir, sha256_file
from hx_train.models import (UnetGenerator, build_generator, check_size, conv_gflops, count_parameters,
                             get_preset, out_channels_for)

CHECKPOINT_FORMAT = "hx-ckpt/1"
OPSET = 18
INPUT_NAME = "image"
EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export's two paths; see the module docstring
# Max |ONNX - PyTorch| on [0, 1] outputs that export accepts; 1/255 is one 8-bit grey level.
FP32_TOLERANCE = 1e-4
# fp16 end to end through ~16 layers, on random-noise images (harder than photos): the worst pixel
# of a well-trained lite model lands near 1e-2, so the bound is 5 grey levels, not 2.5.
FP16_TOLERANCE = 2e-2
PARITY_BATCH = 2  # > 1, so the check also runs the dynamic batch axis
NORMALISATION = {"input": "RGB, x/127.5-1, letterboxed to SxS centred, pad 0.0", "output": "[0,1]"}
# Keys export_generator computes itself; card_extra may add keys but not replace these.
_RESERVED = {"format", "preset", "size", "target", "normalisation", "input_name", "output_name", "opset",
             "onnx_exporter", "parameters", "gflops_per_image", "parity", "sha256", "versions", "created"}

Log = Callable[[str], None]


class ExportError(Exception):
    """A checkpoint or generator that cannot become a model folder; the message names the file."""


class ZeroOneOutput(nn.Module):
    """The generator as shipped: image [N, 3, S, S] in [-1, 1] -> [N, C, S, S] in [0, 1]."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (self.generator(image) + 1) / 2


def export(ckpt: Path, out: Path, log: Log = lambda s: None, *, overwrite: bool = False,
           trust: bool = False) -> ModelDir:
    """Read an hx-ckpt/1 training checkpoint and write its generator as a model folder at `out`.
    trust: unpickle a checkpoint that holds Python objects (load_checkpoint)."""
    ckpt, out = Path(ckpt), Path(out)
    # --overwrite replaces `out` whole: were the checkpoint inside it (its own run folder, or a
    # folder of runs), the run it came from would go with it. Links resolved: a link to the run
    # is the run.
    real_out, real_ckpt = out.resolve(), ckpt.resolve()
    if real_out in real_ckpt.parents:
        raise ExportError(f"--out {out}: holds the checkpoint {ckpt}; export into another folder")
    state = load_checkpoint(ckpt, log, trust=trust)
    config = state["config"]
    try:
        generator = build_generator(config["preset"], int(config["size"]), config["target"])
    except (ValueError, TypeError) as e:
        raise ExportError(f"{ckpt}: bad config in checkpoint ({e})") from None
    try:
        generator.load_state_dict(state["generator"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ExportError(f"{ckpt}: generator weights do not fit preset {config['preset']!r} size "
                          f"{config['size']} target {config['target']!r} ({_first_line(e)})") from None
    extra = {
        "source_checkpoint": ckpt.name,
        # sessions: each hx-train fit invocation behind the weights (command, machine, epochs, seconds).
        # init_from: with fit --init-from, the checkpoint it started from and the sessions behind that.
        "training": {"config": config, "epoch": state.get("epoch"), "sessions": state.get("sessions", []),
                     "init_from": state.get("init_from")},
        "data": state.get("data", {}),
        "val_metrics": state.get("val_metrics", {}),
        "val_sources": state.get("val_sources", {}),
    }
    return export_generator(generator, out, preset=config["preset"], size=int(config["size"]),
                            target=config["target"], card_extra=extra, log=log, overwrite=overwrite)


def load_checkpoint(path: Path, log: Log = lambda s: None, *, trust: bool = False) -> dict:
    """Load and validate an hx-ckpt/1 checkpoint on the CPU; ExportError names the file on any fault.

    fit's checkpoints hold only tensors and plain data and load with weights_only=True. One that
    holds other Python objects (a Path in the config, say) needs full unpickling, which runs any
    code the file carries: only with trust (export --trust-checkpoint), else ExportError.
    """
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if not trust and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
                raise ExportError(f"{path}: not a readable checkpoint (not a torch.save archive)") from None
            if not trust:
                raise ExportError(f"{path}: holds Python objects beyond tensors and plain data, and loading "
                                  "it would run any code it carries; if you made it yourself, export it "
                                  "with --trust-checkpoint") from None
            log(f"note: {path.name} needs full unpickling (weights_only=False), as --trust-checkpoint allows")
            state = torch.load(path, map_location="cpu", weights_only=False)
    except ExportError:
        raise
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise ExportError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    check_checkpoint(path, state)
    return state


def check_checkpoint(path: Path, state: object) -> None:
    """ExportError naming `path` unless `state` (what torch.load gave) is an hx-ckpt/1 checkpoint
    with a generator state_dict and the config (preset, size, target) that builds it."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ExportError(f"{path}: not an {CHECKPOINT_FORMAT} checkpoint (format {found!r})")
    config = state.get("config")
    if not isinstance(config, dict) or not {"preset", "size", "target"} <= config.keys():
        raise ExportError(f"{path}: checkpoint config lacks preset, size or target")
    if not isinstance(state.get("generator"), dict):
        raise ExportError(f"{path}: checkpoint has no generator state_dict")


def export_generator(generator: UnetGenerator, out: Path, *, preset: str, size: int, target: str,
                     card_extra: dict | None = None, log: Log = lambda s: None,
                     overwrite: bool = False, exporter: str = "dynamo") -> ModelDir:
    """Write `generator` (any device, any mode; left untouched) as a model folder at `out`.

    The folder is built beside `out` and renamed into place only after the parity check passes, so
    `out` is either absent, the old folder, or complete. A non-empty `out` is refused unless
    `overwrite`, and even then unless it is a model folder (its model.json of hx-model/1).
    """
    out = Path(out)
    try:
        check_size(size)
        get_preset(preset)
        out_channels_for(target)
    except ValueError as e:
        raise ExportError(f"{out}: {e}") from None
    if exporter not in EXPORTERS:
        raise ExportError(f"{out}: exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    extra = dict(card_extra or {})
    if clash := _RESERVED & extra.keys():
        raise ExportError(f"card_extra may not set {', '.join(sorted(clash))}")
    _check_destination(out, overwrite)

    # A fresh eval-mode CPU fp32 copy with the strict layout of (preset, size, target), which is
    # also what the PyTorch backend will rebuild from generator.pt.
    net = build_generator(preset, size, target)
    generator = getattr(generator, "_orig_mod", generator)  # torch.compile wrapper -> the module
    try:
        net.load_state_dict(copy.deepcopy(generator.state_dict()))
    except RuntimeError as e:
        raise ExportError(f"{out}: generator does not fit preset {preset!r} size {size} target "
                          f"{target!r} ({_first_line(e)})") from None
    net = net.cpu().float().eval()
    shipped = ZeroOneOutput(net).eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"  # same filesystem: rename is atomic
    tmp.mkdir()
    try:
        log(f"exporting {preset} {size}px {target} generator (ONNX opset {OPSET})")
        fp32 = _to_onnx(shipped, size, target, out, exporter)
        fp16 = _to_fp16(fp32, out)
        _save_onnx(fp32, tmp / ONNX_FP32)
        _save_onnx(fp16, tmp / ONNX_FP16)
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, tmp / WEIGHTS)
        parity = check_parity(shipped, tmp, size, target)
        log(f"parity vs PyTorch: fp32 max |err| {parity['fp32_max_abs']:.2e} (tol {FP32_TOLERANCE:g}), "
            f"fp16 {parity['fp16_max_abs']:.2e} (tol {FP16_TOLERANCE:g})")
        if not parity["fp32_max_abs"] <= FP32_TOLERANCE or not parity["fp16_max_abs"] <= FP16_TOLERANCE:
            raise ExportError(f"{out}: ONNX output differs from PyTorch beyond tolerance (fp32 "
                              f"{parity['fp32_max_abs']:.2e}, fp16 {parity['fp16_max_abs']:.2e}); nothing written")
        card = _card(out.name, preset, size, target, net, parity, tmp, exporter)
        card.update(extra)
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
        for name in (ONNX_FP32, ONNX_FP16, WEIGHTS, CARD):
            fsync_path(tmp / name)  # durable, as hx_infer.io.images.atomic_write states
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return load_model_dir(out, verify=True)


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ExportError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise ExportError(f"{out}: folder exists and is not empty; choose another or pass --overwrite")
            # --overwrite swaps in a new model for an old one; a folder of anything else (a run,
            # a parent of models, a typo for one's photos) is the user's and stays.
            if not _is_model_folder(out):
                raise ExportError(f"{out}: not a model folder (no {CARD} of format {FORMAT}); --overwrite "
                                  "only replaces a model folder or an empty one")


def _is_model_folder(folder: Path) -> bool:
    """Whether `folder` holds a readable model.json of hx-model/1: an earlier export."""
    try:
        card = json.loads((folder / CARD).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and card.get("format") == FORMAT


def _to_onnx(shipped: nn.Module, size: int, target: str, out: Path, exporter: str):
    """Trace `shipped` into an fp32 onnx.ModelProto with a dynamic batch axis named "batch".

    exporter "torchscript" is torch's deprecated exporter: it needs no onnxscript, which some
    machines lack (the GPU check machine), and its graph keeps batch-norm as separate nodes."""
    import io

    import onnx

    example = torch.zeros(PARITY_BATCH, 3, size, size)  # batch > 1 so it is not specialised away
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # one warning per missing optional op library (torchvision) otherwise
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter also announces its deprecation
            if exporter == "dynamo":
                program = torch.onnx.export(shipped, (example,), None, input_names=[INPUT_NAME],
                                            output_names=[target],
                                            dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1)}},
                                            opset_version=OPSET, dynamo=True, verbose=False)
                model = program.model_proto
            else:
                buffer = io.BytesIO()
                torch.onnx.export(shipped, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[target], dynamic_axes={INPUT_NAME: {0: "batch"}},
                                  opset_version=OPSET)
                model = onnx.load_from_string(buffer.getvalue())
    except ImportError as e:
        raise ExportError(f"{out}: the ONNX exporter needs onnxscript ({e}); {install_hint('train')}") from None
    except Exception as e:
        raise ExportError(f"{out}: torch.onnx.export failed ({type(e).__name__}: {_first_line(e)})") from None
    finally:
        quiet.setLevel(level)
    model.doc_string = "hx generator: image [N,3,S,S] RGB in [-1,1] -> [N,C,S,S] in [0,1]"
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"{out}: exported graph fails onnx.checker ({_first_line(e)})") from None
    return model


def _to_fp16(model, out: Path):
    """The same graph with every float32 tensor, type and cast made float16 (a new ModelProto)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    half = onnx.ModelProto()
    half.CopyFrom(model)
    graph = half.graph
    fp16_max = float(np.finfo(np.float16).max)

    def convert(tensor: onnx.TensorProto) -> None:
        if tensor.data_type != TensorProto.FLOAT:
            return
        values = numpy_helper.to_array(tensor)
        if values.size and np.abs(values).max() > fp16_max:
            raise ExportError(f"{out}: weight {tensor.name!r} exceeds the float16 range; no fp16 graph possible")
        tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float16), tensor.name))

    for tensor in graph.initializer:
        convert(tensor)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                convert(attr.t)
            elif attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ExportError(f"{out}: graph has a sub-graph ({node.op_type}); fp16 conversion does not handle it")
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    try:
        onnx.checker.check_model(half, full_check=True)  # strict type inference catches a missed tensor
    except Exception as e:
        raise ExportError(f"{out}: fp16 graph fails onnx.checker ({_first_line(e)})") from None
    return half


def _save_onnx(model, path: Path) -> None:
    import onnx

    # One self-contained file: inference copies model folders around, and external data would
    # silently stay behind. Protobuf caps this at 2 GB; base at 512 px is ~220 MB.
    onnx.save_model(model, str(path), save_as_external_data=False)


def check_parity(shipped: nn.Module, folder: Path, size: int, target: str) -> dict:
    """Max |ONNX Runtime (CPU) - PyTorch| over fresh random images, for the files as saved in `folder`."""
    import onnxruntime as ort

    seed = int.from_bytes(os.urandom(4), "little")
    image = np.random.default_rng(seed).uniform(-1, 1, (PARITY_BATCH, 3, size, size)).astype(np.float32)
    with torch.inference_mode():
        expected = shipped(torch.from_numpy(image)).numpy()  # [B, C, S, S] in [0, 1]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the fp16 graph logs a warning per inserted Cast otherwise
    errors = {}
    for key, name, dtype in (("fp32_max_abs", ONNX_FP32, np.float32), ("fp16_max_abs", ONNX_FP16, np.float16)):
        session = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
        (got,) = session.run([target], {INPUT_NAME: image.astype(dtype)})
        if got.shape != expected.shape or got.dtype != dtype:
            raise ExportError(f"{folder / name}: output {got.dtype} {list(got.shape)}, expected "
                              f"{np.dtype(dtype)} {list(expected.shape)}")
        errors[key] = float(np.abs(got.astype(np.float32) - expected).max())
    return {
        **errors,
        "tolerance": {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE},
        "inputs": f"{PARITY_BATCH} uniform random images in [-1,1], numpy seed {seed}",
        "reference": "PyTorch fp32 eval",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider (fp16 via inserted Casts)",
    }


def _card(name: str, preset: str, size: int, target: str, net: nn.Module, parity: dict, folder: Path,
          exporter: str) -> dict:
    import onnx
    import onnxruntime

    return {
        "format": FORMAT,
        "name": name,
        "preset": preset,
        "size": size,
        "target": target,
        "input_name": INPUT_NAME,
        "output_name": target,
        "normalisation": NORMALISATION,
        "opset": OPSET,
        "onnx_exporter": exporter,
        "parameters": count_parameters(net),
        "gflops_per_image": round(conv_gflops(net, size), 4),
        "parity": parity,
        "sha256": {f: sha256_file(folder / f) for f in (ONNX_FP32, ONNX_FP16, WEIGHTS)},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an existing `out` is kept aside until the swap is done."""
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
    else:
        old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(out.parent)


def _json_default(value):
    """Checkpoints hold tensors, numpy scalars and Paths in their metrics and config."""
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    return str(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
