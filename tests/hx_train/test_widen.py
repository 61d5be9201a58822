"""Starting a wider generator from a narrower one's checkpoint (`fit --init-from`, models.widen)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hx_train.config import TrainConfig, TrainError
from hx_train.export import export
from hx_train.models import PRESETS, Preset, UnetGenerator, _blocks, build_generator, init_weights, widen
from hx_train.train import LAST, _Training, fit, init_generator, read_checkpoint

from tests.hx_train.test_train import TINY, make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=2)


def _trained_looking(net: UnetGenerator) -> UnetGenerator:
    """Batch-norm statistics away from their defaults, so copying them is tested too."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_(0, 0.1)
    return net


def test_outer_widths_replace_the_doubling_rule_then_it_resumes():
    preset = Preset(ngf=8, ndf=16, n_layers=3, why="", max_mult=16, outer_widths=(8, 16, 48))
    assert preset.widths(7) == [8, 16, 48, 64, 128, 128, 128]
    assert preset.widths(2) == [8, 16]
    assert PRESETS["mid"].widths(8) == [8, 16, 48, 96, 160, 160, 128, 128]
    assert PRESETS["wide"].widths(8) == [8, 16, 64, 128, 160, 160, 128, 128]
    assert PRESETS["wide16"].widths(8) == [16, 32, 64, 128, 160, 160, 128, 128]


@pytest.mark.parametrize("narrow_preset, wide_preset", [("slim", "mid"), ("mid", "wide"), ("slim", "wide"),
                                                                ("wide", "wide16")])
def test_a_widened_net_computes_what_the_narrow_one_did(narrow_preset, wide_preset):
    # The bundled model went slim -> mid -> wide (-> wide16); a step that changed the function
    # would throw away the narrower run's training.
    torch.manual_seed(0)
    narrow = _trained_looking(build_generator(narrow_preset, 64)).eval()
    wide = widen(narrow, build_generator(wide_preset, 64)).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(narrow(x), wide(x))


def test_the_added_filters_learn():
    # The zeros that mute them get gradients at the first step, and once those have moved, so do
    # the added filters' own weights.
    torch.manual_seed(0)
    wide = widen(_trained_looking(build_generator("slim", 64)), build_generator("mid", 64)).train()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    optimiser = torch.optim.SGD(wide.parameters(), lr=0.1)
    wide(x).mean().backward()
    down = _blocks(wide)[2].model[1]  # level 2's down-convolution: slim 16 -> 32, mid 16 -> 48
    reader = _blocks(wide)[3].model[1]  # level 3's, which reads it: 32 -> 64 of 48 -> 96
    assert reader.weight.grad[:64, 32:].abs().sum() > 0
    optimiser.step()
    optimiser.zero_grad()
    wide(x).mean().backward()
    assert down.weight.grad[32:].abs().sum() > 0
    # ... and a fresh init differs from the copied filters, so they are not duplicates.
    assert not torch.equal(down.weight[32:40], down.weight[:8])


def test_widen_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="narrows"):
        widen(build_generator("mid", 64), build_generator("slim", 64))
    with pytest.raises(ValueError, match="level"):
        widen(build_generator("slim", 64), build_generator("slim", 128))
    with pytest.raises(ValueError, match="--target"):
        widen(build_generator("slim", 64), build_generator("mid", 64, "rgb"))
    assert widen(init_weights(UnetGenerator(64, 8)), build_generator("base", 64)) is not None


def test_init_from_starts_the_run_at_the_checkpoint(dataset, tmp_path):
    slim = dict(TINY, preset="slim", epochs=1, epochs_decay=0)
    fit(TrainConfig(**slim), dataset, tmp_path / "slim")
    ckpt = tmp_path / "slim" / LAST
    config = TrainConfig(**{**slim, "preset": "mid", "init_from": str(ckpt)})
    messages: list[str] = []
    weights, _ = init_generator(ckpt, config, messages.append)
    assert any("widened to mid" in m for m in messages)

    narrow = build_generator("slim", 64)
    narrow.load_state_dict(read_checkpoint(ckpt)["generator"])
    wide = build_generator("mid", 64)
    wide.load_state_dict(weights)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(narrow.eval()(x), wide.eval()(x))
    # The added filters are the ones a fresh run of this config draws: the run is reproducible.
    fresh = _Training.start(config, torch.device("cpu")).G.state_dict()
    key = "model.model.1.model.3.model.1.weight"  # level 2's down-convolution
    assert torch.equal(weights[key][32:], fresh[key][32:])

    fit(config, dataset, tmp_path / "mid")
    run = read_checkpoint(tmp_path / "mid" / LAST)
    assert run["config"]["init_from"] == str(ckpt) and run["config"]["preset"] == "mid"
    # The run names what it started from and the invocations behind that, through --resume and
    # into the model card.
    behind = read_checkpoint(ckpt)["sessions"]
    assert run["init_from"] == {"checkpoint": str(ckpt), "preset": "slim", "epoch": 1, "sessions": behind,
                                "init_from": None}
    fit(TrainConfig(**{**slim, "preset": "mid", "init_from": str(ckpt), "epochs": 2}), dataset,
        tmp_path / "mid", resume=True)
    assert read_checkpoint(tmp_path / "mid" / LAST)["init_from"] == run["init_from"]
    card = export(tmp_path / "mid" / LAST, tmp_path / "model").card
    assert card["training"]["init_from"]["sessions"] == behind and len(card["training"]["sessions"]) == 2
    assert read_checkpoint(ckpt)["init_from"] is None  # a run from random weights says so


def test_init_from_that_does_not_fit_is_a_train_error_and_creates_nothing(dataset, tmp_path):
    fit(TrainConfig(**dict(TINY, preset="mid", epochs=1, epochs_decay=0)), dataset, tmp_path / "mid")
    ckpt = str(tmp_path / "mid" / LAST)
    cases = [(dict(preset="slim"), "narrows"), (dict(preset="slim", size=128), "--size"),
             (dict(preset="mid", target="rgb"), "--target")]
    for overrides, needle in cases:
        with pytest.raises(TrainError, match=needle):
            fit(TrainConfig(**{**TINY, **overrides, "init_from": ckpt}), dataset, tmp_path / "never")
    with pytest.raises(TrainError, match="neither a checkpoint nor a model folder"):
        fit(TrainConfig(**{**TINY, "init_from": str(tmp_path / "missing.pt")}), dataset, tmp_path / "never")
    (tmp_path / "damaged.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        fit(TrainConfig(**{**TINY, "init_from": str(tmp_path / "damaged.pt")}), dataset, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_init_from_a_model_folder_fine_tunes_the_exported_generator(dataset, tmp_path):
    """--init-from takes what hx-train export wrote (or a bundled model's name), checked against
    its card's hashes, and names it in the run's lineage."""
    slim = dict(TINY, preset="slim", epochs=1, epochs_decay=0)
    fit(TrainConfig(**slim), dataset, tmp_path / "slim")
    model = export(tmp_path / "slim" / LAST, tmp_path / "model")
    config = TrainConfig(**{**slim, "preset": "mid", "init_from": str(tmp_path / "model")})
    weights, started_from = init_generator(tmp_path / "model", config)
    narrow = build_generator("slim", 64)
    narrow.load_state_dict(torch.load(tmp_path / "model" / "generator.pt", weights_only=True))
    wide = build_generator("mid", 64)
    wide.load_state_dict(weights)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(narrow.eval()(x), wide.eval()(x))
    assert started_from["model"] == str((tmp_path / "model").resolve()) and started_from["sha256"] == model.sha256
    assert started_from["sessions"] == read_checkpoint(tmp_path / "slim" / LAST)["sessions"]
    assert started_from["epoch"] == 1 and started_from["preset"] == "slim"
    fit(config, dataset, tmp_path / "mid")
    assert read_checkpoint(tmp_path / "mid" / LAST)["init_from"] == started_from

    # The bundled model by name: found and read (its card's size is not this run's).
    with pytest.raises(TrainError, match="--init-from default: its --size is 256, this run's 64"):
        init_generator(Path("default"), TrainConfig(**{**TINY, "preset": "wide"}))
    # A folder that is not a model, and a model whose weights changed after export.
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match="neither a checkpoint nor a model folder"):
        init_generator(tmp_path / "empty", config)
    with pytest.raises(TrainError, match="^--init-from nosuchmodel: neither a checkpoint nor a model folder"):
        init_generator(Path("nosuchmodel"), config)
    with open(tmp_path / "model" / "generator.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(TrainError, match="sha256 .* does not match"):
        init_generator(tmp_path / "model", config)


def test_a_model_folder_that_cannot_be_read_is_one_train_error(dataset, tmp_path, monkeypatch):
    # An OSError while the folder is opened or hashed (permissions, a disk gone) is the one-line
    # error too, not a traceback about the model that was never opened.
    fit(TrainConfig(**TINY, epochs=1, epochs_decay=0), dataset, tmp_path / "run")
    export(tmp_path / "run" / LAST, tmp_path / "model")

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "model" / "model.onnx"))

    monkeypatch.setattr("hx_train.train.load_model_dir", unreadable)
    with pytest.raises(TrainError, match="^--init-from .*model: .*Permission denied"):
        init_generator(tmp_path / "model", TrainConfig(**TINY))
