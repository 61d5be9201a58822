"""hx-infer bench on the CPU with the tiny model: the result's keys, one markdown row per
configuration, the chart, errors. No timing is asserted."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hx_infer import bench
from hx_infer.backends import BackendError, BackendSpec
from hx_infer.cli import main
from hx_infer.model import load_model_dir

FAST = {"iterations": 2, "warmup": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.torch_on_one_thread


@pytest.fixture(scope="module")
def result(tiny_model_dir) -> dict:
    model = load_model_dir(tiny_model_dir)
    return bench.bench_model(model, backends=("ort", "torch"), batches=(1, 2), device="cpu", threads=1, **FAST)


def test_result_has_one_row_per_configuration(result, tiny_model_dir):
    card = load_model_dir(tiny_model_dir).card
    assert result["format"] == bench.FORMAT and result["device"] == "cpu"
    assert result["model"]["preset"] == "lite" and result["model"]["size"] == 64
    assert result["settings"] == {"iterations": 2, "warmup": 1, "cuda_graphs": True, "timer": "perf_counter"}
    assert result["hardware"]["cpu_cores"] >= 1
    assert [(r["backend"], r["batch"]) for r in result["rows"]] == [("ort", 1), ("ort", 2), ("torch", 1), ("torch", 2)]
    for row in result["rows"]:
        assert row["error"] is None and row["precision"] == "fp32" and row["iterations"] == 2
        assert row["img_per_s"] > 0
        lat = row["latency_ms"]
        assert set(lat) == {"p50", "p90", "p99"} and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        assert row["gflops_per_image"] == card["gflops_per_image"]
        assert row["tflops"] == pytest.approx(row["img_per_s"] * card["gflops_per_image"] / 1000, rel=1e-3, abs=1e-4)
        assert row["backend_description"]
    json.dumps(result)  # JSON-ready as it is


def test_markdown_table_has_a_row_per_configuration(result):
    lines = bench.markdown_table(result).strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| backend | precision | batch | img/s |")
    assert len(table) == 2 + len(result["rows"])
    assert table[2].startswith("| ort | fp32 | 1 |") and table[-1].startswith("| torch | fp32 | 2 |")


def test_plot_draws_a_line_per_backend(result, tmp_path):
    bench.plot_throughput(result, tmp_path / "chart.png")
    chart = np.asarray(Image.open(tmp_path / "chart.png"))
    assert chart.shape == (600, 960, 3)
    colours = {tuple(c) for c in chart.reshape(-1, 3)[::7]}
    assert tuple(reversed(bench._COLOURS[0])) in colours or bench._COLOURS[0] in colours


def test_a_configuration_that_fails_keeps_its_error_and_the_rest_go_on(tiny_model_dir, monkeypatch, tmp_path):
    real_open = bench.open_backend

    def flaky(model, spec):
        backend = real_open(model, spec)
        if spec.batch_size == 2:
            def boom(batch):
                raise RuntimeError("CUDA out of memory\nsecond line")
            backend.infer = boom
        return backend

    monkeypatch.setattr(bench, "open_backend", flaky)
    result = bench.bench_model(load_model_dir(tiny_model_dir), backends=("ort",), batches=(1, 2), device="cpu",
                               threads=1, **FAST)
    ok, failed = result["rows"]
    assert ok["error"] is None and ok["img_per_s"] > 0
    assert failed["error"] == "RuntimeError: CUDA out of memory" and failed["img_per_s"] is None
    assert "CUDA out of memory" in bench.markdown_table(result)
    bench.plot_throughput(result, tmp_path / "chart.png")  # a failed row is left out of the chart
    assert (tmp_path / "chart.png").is_file()


def test_a_batch_too_big_to_allocate_ends_only_its_row(tiny_model_dir, monkeypatch):
    real_inputs = bench.random_inputs

    def no_memory_for_two(batch, size, device):
        if batch == 2:
            raise MemoryError("Unable to allocate 146. GiB")
        return real_inputs(batch, size, device)

    monkeypatch.setattr(bench, "random_inputs", no_memory_for_two)
    result = bench.bench_model(load_model_dir(tiny_model_dir), backends=("ort",), batches=(2, 1), device="cpu",
                               threads=1, **FAST)
    failed, ok = result["rows"]
    assert failed["error"] == "MemoryError: Unable to allocate 146. GiB" and failed["img_per_s"] is None
    assert ok["error"] is None and ok["img_per_s"] > 0


def test_random_inputs_are_float32_in_the_model_range():
    images = bench.random_inputs(3, 8, bench.Device.parse("cpu"))
    assert images.shape == (3, 3, 8, 8) and images.dtype == np.float32
    assert -1 <= images.min() < 0 < images.max() <= 1


def test_backend_that_cannot_run_here_is_a_backend_error(tiny_model_dir):
    model = load_model_dir(tiny_model_dir)
    with pytest.raises(BackendError, match="--precision fp16"):
        bench.bench_model(model, backends=("ort",), precisions=("fp16",), batches=(1,), device="cpu", **FAST)


@pytest.mark.parametrize("text,ok", [("1,8,32", (1, 8, 32)), ("4, 4,2", (4, 2)), ("0", None), ("a,b", None),
                                     ("", None)])
def test_parse_batches(text, ok):
    if ok is None:
        with pytest.raises(ValueError, match="--batch-sizes"):
            bench.parse_batches(text)
    else:
        assert bench.parse_batches(text) == ok


def test_default_batches():
    assert bench.default_batches("cpu") == (1, 8, 32)
    assert bench.default_batches("cuda:0") == (1, 8, 32, 128, 256)


def test_cli_writes_json_markdown_and_plot(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    r = CliRunner().invoke(main, ["bench", "--model", str(tiny_model_dir), "--device", "cpu", "--backend", "ort",
                                  "--batch-sizes", "1,2", "--iterations", "2", "--warmup", "0", "--threads", "1",
                                  "--json", str(out / "b.json"), "--markdown", str(out / "b.md"),
                                  "--plot", str(out / "b.png")])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "b.json").read_text())
    assert len(saved["rows"]) == 2
    assert (out / "b.md").read_text() in r.stdout
    assert Image.open(out / "b.png").size == (960, 600)


@pytest.mark.parametrize("args,needle", [
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--precision", "fp16"], "--precision fp16"),
    (["--backend", "trt", "--device", "cpu"], "trt"),
    (["--iterations", "0"], "--iterations"),
])
def test_cli_usage_errors_are_one_line(tiny_model_dir, args, needle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    r = CliRunner().invoke(main, ["bench", "--model", str(tiny_model_dir), "--device", "cpu", *args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hx-infer: error:") and needle in lines[0], r.output


def test_random_model_without_onnxscript_falls_back_to_a_torchscript_export(tmp_path, monkeypatch):
    """The GPU check machine has no onnxscript: the benchmark model is still made, by hx-train's
    own export (both graphs, parity check, card), and runs."""
    from hx_infer.backends.ort import OrtBackend
    from hx_infer.backends.torch import TorchBackend

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from random_model import write_random_model

    real_export = torch.onnx.export

    def without_onnxscript(*args, dynamo=True, **kwargs):  # what torch.onnx.export does there
        if dynamo:
            raise ImportError("No module named 'onnxscript'")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", without_onnxscript)
    logged = []
    model = write_random_model(tmp_path / "m", "lite", 64, log=logged.append)
    assert any("TorchScript exporter instead" in line for line in logged)
    assert model.preset == "lite" and model.size == 64 and model.card["gflops_per_image"] > 0
    assert "TorchScript" in model.card["data"]["source"] and model.onnx_fp16_path.is_file()
    assert model.card["onnx_exporter"] == "torchscript"
    model.verify()  # the card's hashes are those of the files written
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    with TorchBackend(model, BackendSpec(device="cpu")) as t, OrtBackend(model, BackendSpec(device="cpu", threads=1)) as o:
        assert np.abs(t.infer(x) - o.infer(x)).max() < 1e-4


def test_compare_evals_counts_photos_that_moved_and_misses(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from compare_evals import compare, main as compare_main

    def report(ious: dict[str, float], extra: str | None = None) -> dict:
        images = [{"path": f"/tmp/x/coco/images/{name}", "crop": "full", "iou": iou} for name, iou in ious.items()]
        images += [{"path": f"/tmp/x/coco/images/{name}", "crop": "head", "iou": 1.0} for name in ious]
        if extra:
            images.append({"path": f"/tmp/x/coco/images/{extra}", "crop": "full", "iou": 0.5})
        return {"sources": {"coco": {"images": images}}}
    a = report({"a.jpg": 0.0, "b.jpg": 0.5, "c.jpg": 0.8, "d.jpg": 0.6})
    b = report({"a.jpg": 0.4, "b.jpg": 0.505, "c.jpg": 0.7, "d.jpg": 0.0}, extra="e.jpg")
    row = compare(a, b)["coco"]
    assert row["n"] == 4 and row["only_in_one"] == ["e.jpg"]
    assert (row["better"], row["worse"], row["missed"]) == (1, 2, (1, 1))  # b.jpg is within the margin
    assert row["mean"][0] == pytest.approx(0.475) and row["mean"][1] == pytest.approx(0.40125)
    assert [name for name, _, _ in row["moves"]] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]  # largest gain first
    assert compare(a, b, crop="head")["coco"]["better"] == 0

    (tmp_path / "a.json").write_text(json.dumps(a))
    assert compare_main([str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_averaged_model_graph_is_the_mean_over_the_mirrored_and_larger_views(tiny_model_dir, tmp_path,
                                                                              monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import onnxruntime as ort
    from averaged_model import main as averaged_main

    model = load_model_dir(tiny_model_dir)
    side = model.size
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, side, side)).astype(np.float32)
    x[:, :, :, : side // 3] = -1.0  # a left-right asymmetric input, so a mirror that is not undone shows

    def run(folder: Path, image: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {model.card["input_name"]: image})[0]

    assert averaged_main([str(tiny_model_dir), str(tmp_path / "flip"), "--flip"]) == 0
    plain = run(tiny_model_dir, x)
    mirrored = run(tiny_model_dir, x[..., ::-1].copy())[..., ::-1]
    assert not np.allclose(plain, mirrored, atol=1e-3)  # else the test could not tell
    np.testing.assert_allclose(run(tmp_path / "flip", x), (plain + mirrored) / 2, atol=1e-4)
    assert load_model_dir(tmp_path / "flip", verify=True).card["averaged_over"]["flip"] is True  # sha256 updated

    assert averaged_main([str(tiny_model_dir), str(tmp_path / "s2"), "--scale", str(2 * side)]) == 0
    from hx_infer.backends.torch import load_generator  # the graph's input side is fixed: the larger view in torch

    resize = torch.nn.functional.interpolate
    with torch.no_grad():
        larger = (load_generator(model)(resize(torch.from_numpy(x), size=(2 * side,) * 2, mode="bilinear")) + 1) / 2
    back = resize(larger, size=(side, side), mode="bilinear").numpy()
    np.testing.assert_allclose(run(tmp_path / "s2", x), (plain + back) / 2, atol=1e-4)

    assert averaged_main([str(tiny_model_dir), str(tmp_path / "bad"), "--scale", str(side + 1)]) == 2
    assert "--scale" in capsys.readouterr().err
    assert averaged_main([str(tiny_model_dir), str(tmp_path / "flip"), "--flip"]) == 2  # never over a folder
