"""hx-train CLI: fit end to end at 64 px, one-line errors with exit 2, prepare/export wiring."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hx_train.cli import main
from hx_train.models import PRESETS
from tests.hx_train.test_train import make_dataset

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--preset", "lite", "--epochs", "1", "--epochs-decay", "0", "--size", "64", "--batch-size", "4",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=2)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="hx-train")


def assert_one_line_error(result, *needles: str) -> None:
    """Progress lines may come first; the error is the last line and the only one of its kind."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("hx-train: ")]
    assert errors == lines[-1:], result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_fit_writes_a_checkpoint_and_resumes(dataset, tmp_path):
    run = tmp_path / "run"
    result = invoke("fit", dataset, "--out", run, *TINY, "--quiet")
    assert result.exit_code == 0, result.output
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    assert json.loads((run / "config.json").read_text())["preset"] == "lite"

    # --resume takes the run's own options (lite, 64 px) and only overrides what is given.
    result = invoke("fit", dataset, "--out", run, "--resume", "--epochs", "2", "--quiet")
    assert result.exit_code == 0, result.output
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert torch.load(run / "last.pt", weights_only=True)["config"]["size"] == 64

    # A schedule that ends where the run already is trains nothing: refused, the run's config kept.
    config, metrics = (run / "config.json").read_bytes(), (run / "metrics.jsonl").read_bytes()
    assert_one_line_error(invoke("fit", dataset, "--out", run, "--resume", "--epochs", "1"),
                          "--epochs", "2 epochs")
    assert (run / "config.json").read_bytes() == config and (run / "metrics.jsonl").read_bytes() == metrics


def test_ctrl_c_before_the_first_epoch_says_nothing_was_saved(dataset, tmp_path, monkeypatch):
    import hx_train.train as hxtrain

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    monkeypatch.setattr(hxtrain, "train_step", interrupted)
    result = invoke("fit", dataset, "--out", run, *TINY, "-q")
    assert result.exit_code == 130, result.output
    (line,) = result.output.strip().splitlines()
    assert "no epoch finished" in line and "--resume" not in line, line
    assert not (run / "last.pt").exists()


def test_prepare_then_fit(tmp_path):
    """The real prepare's output is what fit reads."""
    src = make_dataset(tmp_path / "photos", n_train=10, n_val=0) / "train"  # SRC/{images,masks}
    result = invoke("prepare", src, tmp_path / "data", "--format", "folders", "--val-fraction", "0.2",
                    "--min-val", "0")
    assert result.exit_code == 0, result.output
    result = invoke("fit", tmp_path / "data", "--out", tmp_path / "run", *TINY, "-q")
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["data"]["train"] == 8


def test_bad_input_is_one_line_and_exit_2(dataset, tmp_path):
    run = str(tmp_path / "run")
    options = dict(zip(TINY[::2], TINY[1::2]))

    def fit(data=dataset, **changes):
        args = {**options, **{f"--{k.replace('_', '-')}": str(v) for k, v in changes.items()}}
        return invoke("fit", data, "--out", run, *[x for kv in args.items() for x in kv])

    assert_one_line_error(fit(preset="huge"), "--preset", "huge")
    assert_one_line_error(fit(size="100"), "--size")
    assert_one_line_error(fit(batch_size="0"), "--batch-size")
    assert_one_line_error(fit(target="cmyk"), "--target")
    assert_one_line_error(fit(size="big"), "--size")
    assert_one_line_error(invoke("fit", dataset), "--out")
    assert_one_line_error(fit(data=tmp_path / "nowhere"), "nowhere")
    assert_one_line_error(invoke("fit", dataset, "--out", run, "--resume"), "--resume", "last.pt")
    assert_one_line_error(fit(init_from=tmp_path / "missing.pt"), "missing.pt")
    assert_one_line_error(fit(seed="-1"), "--seed")
    assert_one_line_error(fit(seed="4294967296"), "--seed")
    assert_one_line_error(fit(lr="inf"), "--lr")
    assert_one_line_error(fit(lambda_l1="nan"), "--lambda-l1")
    if not torch.cuda.is_available():
        assert_one_line_error(fit(device="cuda"), "--device cuda")

    broken = make_dataset(tmp_path / "broken", n_train=2, n_val=1)
    (broken / "train" / "images" / "001.png").write_bytes(b"not an image at all")
    assert_one_line_error(fit(data=broken), "001.png")
    assert not Path(run).exists()

    empty = tmp_path / "empty"
    for split in ("train", "val"):
        for kind in ("images", "masks"):
            (empty / split / kind).mkdir(parents=True)
    assert_one_line_error(fit(data=empty), "no photos")


def test_sampling_shares_are_options_and_are_checked(dataset, tmp_path):
    """--source-balance, --p-composite, --p-empty, --p-paste and the view options (--crop-min,
    --composite-max-height, --white-balance) reach the run's config; bad ones are one line."""
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    for i in range(2):
        Image.fromarray(np.full((30, 50, 3), 20 + i, np.uint8)).save(backgrounds / f"b{i}.jpg")
    run = tmp_path / "run"
    result = invoke("fit", dataset, "--out", run, *TINY, "-q", "--backgrounds", backgrounds,
                    "--source-balance", "1", "--p-composite", "0.2", "--p-empty", "0.3", "--p-paste", "0.5",
                    "--crop-min", "0.4", "--composite-max-height", "1.5", "--white-balance", "0.2")
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["source_balance"], config["p_composite"], config["p_empty"], config["p_paste"]) == (1.0, 0.2, 0.3, 0.5)
    assert (config["crop_min"], config["composite_max_height"], config["white_balance"]) == (0.4, 1.5, 0.2)

    other = tmp_path / "other"
    assert_one_line_error(invoke("fit", dataset, "--out", other, *TINY, "--source-balance", "1.5"),
                          "--source-balance")
    assert_one_line_error(invoke("fit", dataset, "--out", other, *TINY, "--p-empty", "-0.1"), "--p-empty")
    assert_one_line_error(invoke("fit", dataset, "--out", other, *TINY, "--p-paste", "1.5"), "--p-paste")
    for option, bad in (("--crop-min", "0"), ("--composite-max-height", "0"), ("--white-balance", "1"),
                        ("--composite-max-height", "0.01")):  # below the smallest pasted person, 0.05
        assert_one_line_error(invoke("fit", dataset, "--out", other, *TINY, option, bad), option)
    assert_one_line_error(invoke("fit", dataset, "--out", other, *TINY, "--p-composite", "0.7",
                                 "--p-empty", "0.5"), "--p-composite", "--p-empty")
    assert not other.exists()


def test_amp_fp16_on_the_cpu_is_one_line_and_writes_nothing(dataset, tmp_path):
    run = tmp_path / "run"
    assert_one_line_error(invoke("fit", dataset, "--out", run, *TINY, "--amp", "fp16"), "--amp fp16", "CUDA")
    assert not run.exists()


def test_an_existing_run_is_not_overwritten(dataset, tmp_path):
    run = tmp_path / "run"
    assert invoke("fit", dataset, "--out", run, *TINY, "-q").exit_code == 0
    before = (run / "last.pt").read_bytes()
    assert_one_line_error(invoke("fit", dataset, "--out", run, *TINY), "last.pt", "--resume")
    assert (run / "last.pt").read_bytes() == before


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding `folder` as a running fit does (hx_infer.io.lock), until killed."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from hx_infer.io.lock import OutputLock\n"
        f"OutputLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(120)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_fit_on_a_run_in_use_is_refused_and_touches_nothing(dataset, tmp_path):
    """There was no lock on RUN: a `--resume` started while the first fit still ran (or a second
    new run in a RUN whose first epoch was not done) trained too, and the two wrote over each
    other's last.pt, best.pt and metrics.jsonl. Exporting a checkpoint meanwhile is still fine."""
    run, starting = tmp_path / "run", tmp_path / "starting"
    assert invoke("fit", dataset, "--out", run, *TINY, "-q").exit_code == 0
    starting.mkdir()  # a new run in its first epoch: nothing but its lock yet
    holders = [_hold_lock(run), _hold_lock(starting)]
    try:
        before = {folder: _snapshot(folder) for folder in (run, starting)}
        assert (run / ".hx-lock").is_file() and list(before[starting]) == [".hx-lock"]
        for folder, args in ((run, ["--resume", "--epochs", "2"]), (starting, TINY)):
            result = invoke("fit", dataset, "--out", folder, *args, "-q")
            assert_one_line_error(result, f"--out {folder}", "another hx-train fit is running there",
                                  f"pid {holders[0 if folder == run else 1].pid} ")
            assert _snapshot(folder) == before[folder]
        result = invoke("export", run / "best.pt", "--out", tmp_path / "model")
        assert result.exit_code == 0, result.output
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_resume_while_a_new_run_trains_its_first_epoch_is_refused_by_the_lock(dataset, tmp_path):
    """`--resume` read RUN/last.pt before taking the lock: beside a fit still in its first epoch
    it said that last.pt does not exist, as if the run were gone, instead of naming the fit."""
    starting = tmp_path / "starting"
    starting.mkdir()
    holder = _hold_lock(starting)
    try:
        result = invoke("fit", dataset, "--out", starting, "--resume", "--epochs", "2", "-q")
        assert_one_line_error(result, f"--out {starting}", "another hx-train fit is running there",
                              f"pid {holder.pid} ")
        assert [p.name for p in starting.iterdir()] == [".hx-lock"]
    finally:
        holder.kill()
        holder.wait()


def test_help_names_every_preset_and_needs_no_torch():
    result = invoke("fit", "--help")
    assert result.exit_code == 0
    for name in PRESETS:
        assert name in result.output
    code = ("import sys; from hx_train.cli import main; "
            "main(['fit', '--help'], prog_name='hx-train', standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch imported for --help'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--epochs-decay" in done.stdout


def test_prepare_and_export_forward_and_report_errors(monkeypatch, tmp_path):
    calls = {}

    class PrepareError(Exception):
        pass

    def prepare(src, dst, fmt, val_fraction, seed, log, overwrite=False, min_val=30, category="person",
                max_side=0, jpeg_quality=92):
        calls["prepare"] = (src, dst, fmt, val_fraction, seed, overwrite, min_val, category, max_side, jpeg_quality)
        if fmt == "ab":
            raise PrepareError(f"{src}: not an A|B folder")
        return types.SimpleNamespace(train=9, val=1, skipped=["x.jpg"])

    class ExportError(Exception):
        pass

    def export(ckpt, out, log, overwrite=False, trust=False):
        calls["export"] = (ckpt, out, overwrite, trust)
        if not ckpt.exists():
            raise ExportError(f"{ckpt}: no such checkpoint")
        return types.SimpleNamespace(root=out, preset="lite", size=64, target="alpha")

    monkeypatch.setitem(sys.modules, "hx_train.prepare",
                        types.SimpleNamespace(prepare=prepare, PrepareError=PrepareError))
    monkeypatch.setitem(sys.modules, "hx_train.export",
                        types.SimpleNamespace(export=export, ExportError=ExportError))

    result = invoke("prepare", tmp_path / "src", tmp_path / "dst", "--val-fraction", "0.2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert calls["prepare"] == ([tmp_path / "src"], tmp_path / "dst", "auto", 0.2, 0, True, 30, "person", 0, 92)
    assert "9 train, 1 val pairs, 1 skipped" in result.output
    result = invoke("prepare", tmp_path / "src", tmp_path / "dst", "--max-side", "512", "--jpeg-quality", "80")
    assert result.exit_code == 0, result.output
    assert calls["prepare"][-2:] == (512, 80)
    assert_one_line_error(invoke("prepare", "a", "b", "--max-side", "8"), "--max-side")
    assert_one_line_error(invoke("prepare", "a", "b", "--max-side", "64", "--jpeg-quality", "101"), "--jpeg-quality")
    assert_one_line_error(invoke("prepare", tmp_path / "src", tmp_path / "dst", "--format", "ab"), "A|B")
    assert_one_line_error(invoke("prepare", "a", "b", "--val-fraction", "1.5"), "--val-fraction")

    (tmp_path / "best.pt").touch()
    result = invoke("export", tmp_path / "best.pt", "--out", tmp_path / "model", "--overwrite")
    assert result.exit_code == 0 and "lite 64px -> alpha" in result.output
    assert calls["export"] == (tmp_path / "best.pt", tmp_path / "model", True, False)
    assert_one_line_error(invoke("export", tmp_path / "gone.pt", "--out", tmp_path / "model"), "gone.pt")


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "hx_train.cli", "fit", str(tmp_path), "--out",
                           str(tmp_path / "run"), "--size", "63"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("hx-train: --size") and "Traceback" not in done.stderr
