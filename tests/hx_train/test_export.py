"""hx_train.export: checkpoint -> model folder, graph properties, parity, atomic writes, bad input."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from hx_infer.model import load_model_dir, sha256_file
from hx_train import export as hx_export
from hx_train.export import ExportError, ZeroOneOutput, export, export_generator, load_checkpoint
from hx_train.cli import main
from hx_train.models import build_generator

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.torch_on_one_thread


def _generator_with_running_stats(seed: int, target: str = "alpha") -> torch.nn.Module:
    """A generator whose batch-norm running statistics differ from the fresh 0/1, so a graph left
    in training mode would give different answers from the eval-mode one."""
    torch.manual_seed(seed)
    generator = build_generator("lite", SIZE, target).train()
    with torch.no_grad():
        for _ in range(3):
            generator(torch.rand(4, 3, SIZE, SIZE) * 2 - 1)
    return generator.eval()


def _write_checkpoint(path: Path, generator: torch.nn.Module, **changes) -> Path:
    state = {
        "format": "hx-ckpt/1",
        "config": {"preset": "lite", "size": SIZE, "target": "alpha", "seed": 3, "epochs": 1},
        "generator": generator.state_dict(),
        "val_metrics": {"iou": torch.tensor(0.75), "mae": 0.1},
        "data": {"train": 10, "val": 2, "source": "synthetic"},
        "epoch": 1,
        "sessions": [{"command": "hx-train fit", "machine": {"device": "cpu"}, "epochs": [1, 1], "seconds": 2.0}],
        "optimizer_g": {},
    }
    state.update(changes)
    torch.save(state, path)
    return path


def _run(path: Path, image: np.ndarray, output: str) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output], {"image": image})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model folder, the generator it came from, the export log) from a checkpoint."""
    tmp = tmp_path_factory.mktemp("export")
    generator = _generator_with_running_stats(seed=1)
    ckpt = _write_checkpoint(tmp / "last.pt", generator)
    out = tmp / "model"
    out.mkdir()  # an empty folder is fine to fill
    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = export(ckpt, out, log=lines.append)
    finally:
        torch.set_num_threads(threads)
    return model, generator, lines


def test_folder_has_every_file_with_matching_hashes(exported):
    model, _, lines = exported
    assert sorted(p.name for p in model.root.iterdir()) == [
        "generator.pt", "model.fp16.onnx", "model.json", "model.onnx"]
    load_model_dir(model.root, verify=True)
    for name, digest in model.card["sha256"].items():
        assert sha256_file(model.root / name) == digest
    assert not [p for p in model.root.parent.iterdir() if p.name.startswith(".")], "temp folder left behind"
    assert any("parity" in line for line in lines)


def test_card_describes_model_and_training(exported):
    model, generator, _ = exported
    card = json.loads((model.root / "model.json").read_text())
    assert card["format"] == "hx-model/1"
    assert (card["preset"], card["size"], card["target"]) == ("lite", SIZE, "alpha")
    assert (card["input_name"], card["output_name"]) == ("image", "alpha")
    assert card["normalisation"]["output"] == "[0,1]"
    assert card["onnx_exporter"] == "dynamo"
    assert card["source_checkpoint"] == "last.pt"
    assert card["data"]["train"] == 10
    assert card["val_metrics"]["iou"] == pytest.approx(0.75)
    assert card["training"]["config"]["seed"] == 3
    assert card["training"]["sessions"][0]["command"] == "hx-train fit"  # how the weights were made
    assert card["parameters"] == sum(p.numel() for p in generator.parameters())
    assert card["gflops_per_image"] > 0
    assert set(card["versions"]) == {"torch", "onnx", "onnxruntime"}
    assert card["created"].endswith("+00:00")
    assert card["parity"]["fp32_max_abs"] <= 1e-4
    assert card["parity"]["fp16_max_abs"] <= 1e-2


def test_graphs_are_checked_self_contained_and_typed(exported):
    model, _, _ = exported
    for path, elem in ((model.onnx_path, onnx.TensorProto.FLOAT), (model.onnx_fp16_path, onnx.TensorProto.FLOAT16)):
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto, full_check=True)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert not [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        (inp,), (out,) = proto.graph.input, proto.graph.output
        assert (inp.name, out.name) == ("image", "alpha")
        for value, channels in ((inp, 3), (out, 1)):
            assert value.type.tensor_type.elem_type == elem
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch"
            assert [d.dim_value for d in dims[1:]] == [channels, SIZE, SIZE]
        float_inits = [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
        assert elem == onnx.TensorProto.FLOAT or not float_inits, "fp16 graph still holds fp32 weights"


def test_graph_is_in_eval_mode_batch_1_equals_batch_5(exported):
    model, generator, _ = exported
    images = np.random.default_rng(7).uniform(-1, 1, (5, 3, SIZE, SIZE)).astype(np.float32)
    batch5 = _run(model.onnx_path, images, "alpha")
    rows = np.concatenate([_run(model.onnx_path, images[i:i + 1], "alpha") for i in range(5)])
    assert batch5.shape == (5, 1, SIZE, SIZE)
    np.testing.assert_allclose(rows, batch5, atol=1e-5, rtol=0)
    in_training_mode = copy.deepcopy(generator).train()  # a train-mode pass updates running stats
    with torch.inference_mode():
        eval_out = ZeroOneOutput(generator.eval())(torch.from_numpy(images)).numpy()
        train_out = ZeroOneOutput(in_training_mode)(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(batch5, eval_out, atol=1e-4, rtol=0)
    assert np.abs(batch5 - train_out).max() > 1e-3  # the check above could tell the modes apart
    assert 0.0 <= batch5.min() and batch5.max() <= 1.0


def test_fp16_graph_matches_an_fp16_reference_evaluation(exported):
    """ORT CPU runs the fp16 graph with inserted casts; onnx.reference computes in float16 itself."""
    from onnx.reference import ReferenceEvaluator

    model, generator, _ = exported
    image = np.random.default_rng(8).uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    by_ort = _run(model.onnx_fp16_path, image.astype(np.float16), "alpha")
    (by_reference,) = ReferenceEvaluator(str(model.onnx_fp16_path)).run(None, {"image": image.astype(np.float16)})
    with torch.inference_mode():
        expected = ZeroOneOutput(generator.eval())(torch.from_numpy(image)).numpy()
    assert by_ort.dtype == np.float16 and by_reference.dtype == np.float16
    assert np.abs(by_reference.astype(np.float32) - expected).max() <= 1e-2
    assert np.abs(by_ort.astype(np.float32) - by_reference.astype(np.float32)).max() <= 1e-2


def test_weights_file_rebuilds_the_generator(exported):
    model, generator, _ = exported
    rebuilt = build_generator(model.preset, model.size, model.target)
    rebuilt.load_state_dict(torch.load(model.weights_path, weights_only=True))
    for name, value in generator.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value), name


def test_rgb_target_graph(tiny_rgb_model_dir):
    model = load_model_dir(tiny_rgb_model_dir)
    image = np.zeros((2, 3, SIZE, SIZE), np.float32)
    out = _run(model.onnx_path, image, "rgb")
    assert out.shape == (2, 3, SIZE, SIZE)
    assert model.card["output_name"] == "rgb"


def test_refuses_non_empty_folder_then_overwrites_a_model_folder_when_asked(exported, tmp_path):
    model, _, _ = exported
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    generator = _generator_with_running_stats(seed=2)
    with pytest.raises(ExportError, match="not empty"):
        export_generator(generator, out, preset="lite", size=SIZE, target="alpha")
    # --overwrite replaces a model folder (or an empty one), never a folder of something else.
    with pytest.raises(ExportError, match="not a model folder") as info:
        export_generator(generator, out, preset="lite", size=SIZE, target="alpha", overwrite=True)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (out / "mine.txt").unlink()
    shutil.copytree(model.root, out, dirs_exist_ok=True)  # an earlier export
    written = export_generator(generator, out, preset="lite", size=SIZE, target="alpha", overwrite=True)
    assert written.sha256 != model.sha256  # different weights -> different graph
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp or backup folder left


def _a_run(folder: Path) -> Path:
    """A run folder as fit leaves it: checkpoints, metrics, samples."""
    folder.mkdir(parents=True)
    _write_checkpoint(folder / "last.pt", build_generator("lite", SIZE))
    (folder / "best.pt").write_bytes((folder / "last.pt").read_bytes())
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (folder / "samples").mkdir()
    (folder / "samples" / "epoch_001.png").write_bytes(b"png")
    return folder


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["run", "parent", "link"])
def test_never_exports_over_the_folder_that_holds_the_checkpoint(tmp_path, where):
    """--out RUN --overwrite used to delete the run it exported from; a parent of it, every run."""
    run = _a_run(tmp_path / "runs" / "r1")
    _a_run(tmp_path / "runs" / "r2")
    out = {"run": run, "parent": tmp_path / "runs", "link": tmp_path / "link"}[where]
    if where == "link":
        out.symlink_to(run, target_is_directory=True)
    before = _listing(tmp_path / "runs")
    with pytest.raises(ExportError, match="holds the checkpoint") as info:
        export(run / "last.pt", out, overwrite=True)
    assert str(out) in str(info.value) and "\n" not in str(info.value)
    assert _listing(tmp_path / "runs") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["runs"] + (["link"] if where == "link" else []))


def test_cli_export_into_its_own_run_is_one_line_and_exit_2(tmp_path):
    run = _a_run(tmp_path / "run")
    before = _listing(run)
    result = CliRunner().invoke(main, ["export", str(run / "last.pt"), "--out", str(run), "--overwrite"],
                                prog_name="hx-train")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hx-train: ") and "--out" in lines[0], result.output
    assert _listing(run) == before


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(hx_export, "FP32_TOLERANCE", -1.0)  # no graph can pass
    out = tmp_path / "model"
    with pytest.raises(ExportError, match="beyond tolerance"):
        export_generator(build_generator("lite", SIZE), out, preset="lite", size=SIZE, target="alpha")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "garbage", "not-a-dict", "wrong-format", "no-target",
                                  "wrong-size-weights", "bad-preset"])
def test_bad_checkpoint_names_the_file(tmp_path, case):
    path = tmp_path / "ckpt.pt"
    generator = build_generator("lite", SIZE)
    if case == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif case == "not-a-dict":
        torch.save([1, 2, 3], path)
    elif case == "wrong-format":
        _write_checkpoint(path, generator, format="something-else/2")
    elif case == "no-target":
        _write_checkpoint(path, generator, config={"preset": "lite", "size": SIZE})
    elif case == "wrong-size-weights":
        _write_checkpoint(path, build_generator("lite", 128))
    elif case == "bad-preset":
        _write_checkpoint(path, generator, config={"preset": "huge", "size": SIZE, "target": "alpha"})
    with pytest.raises(ExportError) as info:
        export(path, tmp_path / "out")
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert not (tmp_path / "out").exists()


class _RunsCode:
    """Unpickled, it touches a file: what a booby-trapped checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_python_objects_is_refused_without_trust(tmp_path):
    # It was unpickled in full after a note: any code in the file ran.
    marker = tmp_path / "code-ran"
    path = _write_checkpoint(tmp_path / "ckpt.pt", build_generator("lite", SIZE), payload=_RunsCode(marker))
    with pytest.raises(ExportError, match="--trust-checkpoint") as info:
        export(path, tmp_path / "out")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_text_file_is_not_a_checkpoint_not_one_to_trust(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "iou": 0.5}\n')
    with pytest.raises(ExportError, match="not a readable checkpoint") as info:
        export(path, tmp_path / "out")
    assert "--trust-checkpoint" not in str(info.value)


def test_checkpoint_with_python_objects_loads_when_trusted_with_a_note(tmp_path):
    path = _write_checkpoint(tmp_path / "ckpt.pt", build_generator("lite", SIZE),
                             config={"preset": "lite", "size": SIZE, "target": "alpha", "root": Path("/data")})
    lines: list[str] = []
    state = load_checkpoint(path, log=lines.append, trust=True)
    assert state["config"]["root"] == Path("/data")
    assert lines and "weights_only=False" in lines[0]


def test_cli_export_trusts_a_checkpoint_only_when_told(tmp_path):
    path = _write_checkpoint(tmp_path / "ckpt.pt", build_generator("lite", SIZE),
                             config={"preset": "lite", "size": SIZE, "target": "alpha", "root": Path("/data")})
    refused = CliRunner().invoke(main, ["export", str(path), "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--trust-checkpoint" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    trusted = CliRunner().invoke(main, ["export", str(path), "--out", str(tmp_path / "b"),
                                                  "--trust-checkpoint"])
    assert trusted.exit_code == 0, trusted.output
    assert (tmp_path / "b" / "model.json").is_file()


def test_bad_arguments(tmp_path):
    generator = build_generator("lite", SIZE)
    with pytest.raises(ExportError, match="--size"):
        export_generator(generator, tmp_path / "a", preset="lite", size=100, target="alpha")
    with pytest.raises(ExportError, match="does not fit"):
        export_generator(generator, tmp_path / "b", preset="lite", size=128, target="alpha")
    with pytest.raises(ExportError, match="sha256"):
        export_generator(generator, tmp_path / "c", preset="lite", size=SIZE, target="alpha",
                         card_extra={"sha256": {}})
    with pytest.raises(ExportError, match="exporter must be one of dynamo, torchscript"):
        export_generator(generator, tmp_path / "d", preset="lite", size=SIZE, target="alpha", exporter="onnx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        export_generator(generator, tmp_path / "file", preset="lite", size=SIZE, target="alpha")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
