"""The pix2pix training loop: D step, G step, autocast + GradScaler, validation, checkpoints, resume.

    RUN/
      last.pt               every epoch; `--resume` continues from it exactly
      best.pt               the epoch with the best val IoU (PSNR for --target rgb)
      metrics.jsonl         one JSON line per epoch: losses, val metrics, lr, seconds, img/s
      config.json           the resolved TrainConfig, for people
      samples/epoch_NNN.png rows of photo | target | output for the first val photos
      .hx-lock              while a fit runs in RUN: its pid (hold_run); a second fit is refused

Checkpoints hold only tensors, numbers, strings, lists and dicts, so `torch.load(...,
weights_only=True)` reads them. Their "generator" is a state_dict of
`build_generator(preset, size, target)`, contiguous and on the CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import random
import re
import secrets
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hx_infer.io.images import TEMP_MARK, atomic_write, clean_temporaries, fsync_path, is_temp_name
from hx_infer.io.lock import LockError, OutputLock
from hx_infer.model import CARD, ModelError, load_model_dir, model_root

from . import data as hxdata
from .config import ARCHITECTURE_FIELDS, FIELD_NAMES, RUNTIME_FIELDS, TrainConfig, TrainError, option
from .export import ExportError, check_checkpoint
from .losses import discriminator_loss, generator_loss
from .models import build_discriminator, build_generator, check_size, get_preset, widen
from .prepare import MIN_VAL, VAL_FRACTION, PrepareError, choose_val, read_sources

__all__ = ["fit", "TrainError", "resume_config", "read_checkpoint"]

CKPT_FORMAT = "hx-ckpt/1"
LAST, BEST, METRICS, CONFIG, SAMPLES = "last.pt", "best.pt", "metrics.jsonl", "config.json", "samples"
# What _Training.load and fit read from a checkpoint to continue its run (beyond read_checkpoint's).
RESUME_KEYS = ("discriminator", "opt_g", "opt_d", "sched_g", "sched_d", "scaler", "rng", "best_metric",
               "val_metrics", "data")
POSTFIX_EVERY = 10  # steps between progress-bar loss updates (each one is a GPU sync)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Configuration for this machine


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise TrainError(f"--device cuda: no CUDA device available (torch {torch.__version__}, {build})")
    return torch.device(name)


def resolve(config: TrainConfig, log: Log = _quiet) -> tuple[TrainConfig, torch.device]:
    """Check `config` and settle device and amp for this machine (resolve_amp)."""
    config.check()
    try:
        get_preset(config.preset)
    except ValueError as e:
        raise TrainError(f"--preset: {e}") from None
    try:
        check_size(config.size)
    except ValueError as e:
        raise TrainError(str(e)) from None
    device = resolve_device(config.device)
    return dataclasses.replace(config, device=device.type, amp=resolve_amp(config.amp, device, log)), device


def resolve_amp(amp: str, device: torch.device, log: Log = _quiet) -> str:
    """--amp for this machine: auto is bf16 on CUDA (fp16 where the GPU has no bf16) and off on the
    CPU; bf16 is honoured on the CPU too; fp16 is for CUDA only (TrainError)."""
    if device.type == "cuda":
        if amp in ("auto", "bf16") and not torch.cuda.is_bf16_supported():
            log("this GPU has no bf16; using --amp fp16")
            return "fp16"
        return "bf16" if amp == "auto" else amp
    if amp == "fp16":
        raise TrainError("--amp fp16 needs a CUDA GPU; on the CPU use --amp bf16 or off")
    if amp == "bf16" and not cpu_has_bf16():
        log("note: this CPU has no native bf16 (AVX512-BF16 or AMX); --amp bf16 may be slower than off")
    return "off" if amp == "auto" else amp


def cpu_has_bf16() -> bool:
    """Whether oneDNN can run bf16 convolutions natively here. torch only has private probes for it,
    so an older or newer torch without them answers True (and the note above is skipped)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(probes):
        return True
    return any(probe() for probe in probes if probe is not None)


def channels_last(config: TrainConfig, device: torch.device) -> bool:
    """NHWC networks and batches: cuDNN's convolutions are faster in it, and so are oneDNN's bf16
    ones on a CPU (wide 256², batch 16, G step: 62 -> 68-83 img/s here); fp32 CPU runs keep NCHW."""
    return device.type == "cuda" or config.amp == "bf16"


def autocast_for(config: TrainConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A fresh autocast context per call, for the resolved config's amp (off: a no-op context)."""
    amp_dtype = AMP_DTYPES.get(config.amp)
    return lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint onto the CPU (lazily, memory-mapped); TrainError if it is not one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise TrainError(f"{path}: not a readable checkpoint ({' '.join(str(e).split())[:200]})") from None
    try:
        check_checkpoint(path, ckpt)  # the format, the config that builds its generator, the generator
    except ExportError as e:
        raise TrainError(str(e)) from None
    epoch = ckpt.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:  # --resume and lineage read it
        raise TrainError(f"{path}: checkpoint has no epoch count")
    return ckpt


def resume_config(out: Path, given: dict) -> TrainConfig:
    """The config of the run in `out` (its last.pt) with the options in `given` replacing its
    values. Machine settings (device, amp, compile, workers) are never taken from the checkpoint."""
    path = Path(out) / LAST
    if not path.is_file():
        raise TrainError(f"--resume: {path} does not exist")
    saved = read_checkpoint(path)["config"]
    values = {k: v for k, v in saved.items() if k in FIELD_NAMES and k not in RUNTIME_FIELDS}
    unknown = set(given) - set(FIELD_NAMES)
    if unknown:
        raise TrainError(f"unknown config fields: {', '.join(sorted(unknown))}")
    return TrainConfig(**{**values, **given})


# ---------------------------------------------------------------------------------------------
# Files written atomically


# Every file of a run costs hours to make again, so every write is durable (the fsync policy of
# hx_infer.io.images.atomic_write).
_atomic_write = functools.partial(atomic_write, durable=True)


def _link_or_copy(source: Path, dest: Path) -> None:
    """Make `dest` hold `source`'s bytes, atomically. A hard link costs nothing; files are only
    ever replaced, never written in place, so the two names never see each other's changes."""
    # Named as hx_infer.io.images names its temporaries, so a rerun's clean_temporaries removes
    # one that a kill left behind.
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}{TEMP_MARK}")
    try:
        os.link(source, tmp)
    except OSError:
        _atomic_write(dest, lambda f: f.write(source.read_bytes()))
        return
    os.replace(tmp, dest)
    fsync_path(dest.parent)


def _write_json(path: Path, value: dict) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def _trim_metrics(path: Path, epochs: int, record: dict | None = None) -> None:
    """Keep the lines of epochs 1..`epochs`, and put back the line of epoch `epochs` from
    `record` (the checkpoint's copy) when a run stopped between its checkpoint and that line."""
    if not path.exists():
        return
    kept, last = [], None
    for line in path.read_text().splitlines():
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash
        if isinstance(epoch, int) and epoch <= epochs:
            kept.append(line + "\n")
            last = epoch
    if last != epochs and record is not None and record.get("epoch") == epochs:
        kept.append(json.dumps(record) + "\n")
    _atomic_write(path, lambda f: f.write("".join(kept).encode()))


# ---------------------------------------------------------------------------------------------
# Random state


def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # plain lists, so the checkpoint loads with weights_only=True
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
        **{name: g.get_state() for name, g in generators.items()},
    }


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in generators.items():
        g.set_state(state[name])


# ---------------------------------------------------------------------------------------------
# One training step, as in the paper


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def train_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, autocast: Callable[[], contextlib.AbstractContextManager],
               photo: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               config: TrainConfig) -> dict[str, torch.Tensor]:
    """One pix2pix iteration. photo [B, 3, S, S], target [B, C, S, S] in [-1, 1]; mask [B, 1, S, S].

    Returns the detached loss terms: d_real, d_fake, d_total, g_gan, g_l1, (g_seg), g_total;
    with config.lambda_gan == 0 only g_l1, (g_seg), g_total.
    With fp16 the one GradScaler scales each loss, steps each optimiser (skipping a step whose
    gradients overflowed), and updates its scale once per iteration.
    """
    with autocast():
        fake = G(photo)  # forward: G(x)
    adversarial = config.lambda_gan != 0  # 0: G alone on L1 (+ the matte term), D never runs
    terms: dict[str, torch.Tensor] = {}

    if adversarial:
        # D step: real pairs (x, y) -> 1, fake pairs (x, G(x)) -> 0; G(x) detached so G gets no gradient.
        opt_d.zero_grad(set_to_none=True)
        with autocast():
            d = discriminator_loss(D(torch.cat([photo, target], 1)), D(torch.cat([photo, fake.detach()], 1)),
                                   config.gan_loss)
        scaler.scale(d["total"]).backward()
        scaler.step(opt_d)
        terms = {"d_real": d["d_real"], "d_fake": d["d_fake"], "d_total": d["total"]}
        _set_requires_grad(D, False)  # D only passes gradients through to G below

    # G step: make the updated D call (x, G(x)) real, and keep G(x) near y (L1).
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        fake_logits = D(torch.cat([photo, fake], 1)) if adversarial else None
        g = generator_loss(fake_logits, fake, target, mask, config)
    scaler.scale(g["total"]).backward()
    scaler.step(opt_g)
    if adversarial:
        _set_requires_grad(D, True)

    scaler.update()  # once per iteration, after both optimisers stepped
    terms.update({k: v for k, v in g.items() if k != "total"}, g_total=g["total"])
    return {name: value.detach() for name, value in terms.items()}


# ---------------------------------------------------------------------------------------------
# Validation and samples


@torch.no_grad()
def per_photo(G: nn.Module, val: hxdata.Split, config: TrainConfig, device: torch.device,
              autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, torch.Tensor]:
    """Each val photo's metrics [N] float64 (CPU), inside the photo area (pad excluded).

    alpha: iou (matte > 0.5 vs mask > 0.5; 1.0 when both are empty), mae of the matte in [0, 1],
    and fp, the share of the photo area called person (the measure on person-free photos).
    rgb: psnr in dB of the painted person, colours in [0, 1].
    """
    G.eval()
    parts: dict[str, list[torch.Tensor]] = defaultdict(list)
    for photo, mask, valid in hxdata.validation_batches(val, config.batch_size, device):
        with autocast():
            output = G(_layout(photo, config, device))
        output = (output.float() + 1.0) / 2.0  # [B, C, S, S] in [0, 1]
        area = valid.sum((1, 2, 3)).clamp_min(1)
        if config.target == "alpha":
            predicted, truth = (output > 0.5) & valid, (mask > 0.5) & valid
            inter = (predicted & truth).sum((1, 2, 3)).double()
            union = (predicted | truth).sum((1, 2, 3)).double()
            parts["iou"].append(torch.where(union > 0, inter / union.clamp_min(1), 1.0))
            parts["mae"].append(((output - mask).abs() * valid).sum((1, 2, 3)).double() / area)
            parts["fp"].append((predicted & ~truth).sum((1, 2, 3)).double() / area)
        else:
            wanted = (hxdata.make_target(photo, mask, "rgb") + 1.0) / 2.0
            mse = ((output - wanted) ** 2 * valid).sum((1, 2, 3)) / (3 * area)
            parts["psnr"].append((-10.0 * torch.log10(mse.clamp_min(1e-10))).double())
    G.train()
    return {name: torch.cat(values).cpu() for name, values in parts.items()}  # .cpu(): one sync per split


def evaluate(G: nn.Module, val: hxdata.Split, config: TrainConfig, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """Mean per-photo metrics over the val split (per_photo): iou and mae, or psnr.

    With several sources (Split.sources) iou and mae are the mean over sources of each source's
    mean, so one large source does not hide a small one."""
    return source_means(per_photo(G, val, config, device, autocast), val)


def source_means(values: dict[str, torch.Tensor], val: hxdata.Split) -> dict[str, float]:
    """per_photo's values of `val` -> evaluate's figures (fp, for person-free photos, left out)."""
    groups = _groups(val)
    return {name: round(float(np.mean([v[index].mean().item() for index in groups.values()])), 6)
            for name, v in values.items() if name != "fp"}


def _groups(split: hxdata.Split) -> dict[str, torch.Tensor]:
    """Source name -> the indices of its photos in the split (one group "all" without sources)."""
    if split.sources is None:
        return {"all": torch.arange(len(split))}
    names = sorted(set(split.sources))
    return {name: torch.tensor([i for i, s in enumerate(split.sources) if s == name]) for name in names}


def evaluate_detail(G: nn.Module, crops: dict[str, hxdata.Split], backgrounds: hxdata.Split | None,
                    config: TrainConfig, device: torch.device,
                    autocast: Callable[[], contextlib.AbstractContextManager],
                    known: dict[str, dict[str, torch.Tensor]] | None = None) -> dict:
    """Per source and crop (hx-infer eval's full / upper / head): n, mean iou and mae; and on the
    held-out person-free photos, n and the mean share of each photo called person (fp).
    known: per_photo's values of crops already scored (fit passes the full split's), not rerun."""
    detail: dict = {}
    for crop, split in crops.items():
        if len(split) == 0:
            continue
        values = (known or {}).get(crop) or per_photo(G, split, config, device, autocast)
        for source, index in _groups(split).items():
            detail.setdefault(source, {})[crop] = {"n": len(index), "iou": round(values["iou"][index].mean().item(), 6),
                                                  "mae": round(values["mae"][index].mean().item(), 6)}
    if backgrounds is not None and len(backgrounds):
        fp = per_photo(G, backgrounds, config, device, autocast)["fp"]
        detail["backgrounds"] = {"n": len(fp), "fp": round(fp.mean().item(), 6),
                                 "fp_p90": round(fp.quantile(0.9).item(), 6)}
    return detail


def best_key(target: str) -> str:
    """The val metric that picks best.pt (higher is better)."""
    return "iou" if target == "alpha" else "psnr"


@torch.no_grad()
def sample_grid(G: nn.Module, val: hxdata.Split, config: TrainConfig, device: torch.device,
                autocast: Callable[[], contextlib.AbstractContextManager]) -> np.ndarray | None:
    """[rows * S, 3 * S, 3] uint8 RGB: one row of photo | target | output per sample photo."""
    rows = []
    G.eval()
    for photo, mask, _ in hxdata.validation_batches(val, config.batch_size, device, count=config.samples):
        with autocast():
            output = G(_layout(photo, config, device)).float()
        target = hxdata.make_target(photo, mask, config.target)
        tiles = [t.expand(-1, 3, -1, -1) for t in (photo, target, output)]  # grey mattes -> RGB
        row = torch.cat(tiles, 3)  # [B, 3, S, 3S]
        rows.append(((row + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
    G.train()
    if not rows:
        return None
    grid = torch.cat(rows, 0)  # [N, 3, S, 3S]
    return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[-1], 3).numpy()


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    _atomic_write(path, lambda f: f.write(encoded.tobytes()))


def _layout(x: torch.Tensor, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """A batch in the networks' memory format (channels_last)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last(config, device) else x


# ---------------------------------------------------------------------------------------------
# The loop


def lr_factor(epoch: int, epochs: int, epochs_decay: int) -> float:
    """pix2pix 'linear' policy: 1 for `epochs` epochs, then down by 1/(epochs_decay + 1) per epoch,
    reaching 0 just after the last epoch."""
    return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)


def _state_dict_cpu(net: nn.Module) -> dict[str, torch.Tensor]:
    """The weights as `build_generator` names them, contiguous (not channels_last) on the CPU."""
    return {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}


@dataclass
class _Training:
    """Everything a checkpoint saves and `--resume` restores: networks, optimisers, schedules,
    loss scaler, and the generators behind batch order and augmentation."""

    config: TrainConfig
    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: torch.optim.lr_scheduler.LambdaLR
    sched_d: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    generators: dict[str, torch.Generator]

    @classmethod
    def start(cls, config: TrainConfig, device: torch.device) -> "_Training":
        """Fresh networks and optimisers; every weight and random draw follows config.seed."""
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        generators = {"order": torch.Generator().manual_seed(config.seed),
                      "augment": torch.Generator().manual_seed(config.seed + 1)}
        G = build_generator(config.preset, config.size, config.target).to(device)
        D = build_discriminator(config.preset, config.target).to(device)
        if channels_last(config, device):
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        betas = (config.beta1, config.beta2)
        opt_g = torch.optim.Adam(G.parameters(), lr=config.lr, betas=betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=config.lr, betas=betas)
        return cls(config, G, D, opt_g, opt_d,
                   torch.optim.lr_scheduler.LambdaLR(opt_g, cls._schedule(config)),
                   torch.optim.lr_scheduler.LambdaLR(opt_d, cls._schedule(config)),
                   torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"), generators)

    @staticmethod
    def _schedule(config: TrainConfig) -> Callable[[int], float]:
        def factor(epoch: int) -> float:
            return lr_factor(epoch, config.epochs, config.epochs_decay)
        return factor

    def state_dict(self, epoch: int, best_metric: float, val_metrics: dict, data: dict,
                   sessions: list[dict], val_sources: dict | None = None, init_from: dict | None = None) -> dict:
        return {
            "format": CKPT_FORMAT,
            "config": dataclasses.asdict(self.config),
            "generator": _state_dict_cpu(self.G),
            "discriminator": _state_dict_cpu(self.D),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "rng": _rng_state(self.generators),
            "best_metric": best_metric,
            "val_metrics": val_metrics,
            "val_sources": val_sources or {},
            "data": data,
            "sessions": sessions,
            "init_from": init_from,  # hx_train.train.lineage, or None for a run from random weights
        }

    def load(self, ckpt: dict) -> None:
        self.G.load_state_dict(ckpt["generator"])
        self.D.load_state_dict(ckpt["discriminator"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.sched_g.load_state_dict(ckpt["sched_g"])
        self.sched_d.load_state_dict(ckpt["sched_d"])
        # The learning rate follows this config's schedule (--lr, --epochs and --epochs-decay may
        # have changed), computed exactly as LambdaLR.step would have.
        lr, factor = self.config.lr, self._schedule(self.config)
        for sched in (self.sched_g, self.sched_d):
            sched.base_lrs = [lr for _ in sched.base_lrs]
            for group in sched.optimizer.param_groups:
                group["initial_lr"], group["lr"] = lr, lr * factor(sched.last_epoch)
            sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]
        if ckpt["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], self.generators)


@contextlib.contextmanager
def hold_run(out: Path) -> Iterator[None]:
    """RUN for this process alone while the block runs: two fits in one RUN would write over each
    other's checkpoints and metrics. The lock is hx-infer's OUTPUT lock (an flock on RUN/.hx-lock,
    holding the pid), which the kernel drops however the process ends, so one left by kill -9 is
    stale and taken over. TrainError, with nothing in RUN touched, while another fit holds it.

    RUN (and any parent) is created here, so that it can hold the lock from the start, and removed
    again if the run leaves it empty: one that cannot start, or stopped before its first
    checkpoint, leaves nothing that keeps the same command from starting it again.
    """
    created = _make_folders(out)
    lock = OutputLock(out)
    try:
        lock.acquire()
    except LockError as e:
        raise TrainError(f"--out {out}: another hx-train fit is running there ({e.holder}); wait for it "
                         "to finish, or choose another --out") from None
    except OSError as e:
        _remove_if_empty(created)
        raise TrainError(f"--out {out}: cannot write its lock file ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()
        _remove_if_empty(created)


def _make_folders(out: Path) -> list[Path]:
    """mkdir -p `out` -> the folders it created, deepest first; TrainError if it cannot."""
    missing = [folder for folder in (out, *out.parents) if not os.path.lexists(folder)]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"--out {out}: cannot create ({e.strerror})") from None
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; rmdir leaves a folder that holds anything
        try:
            folder.rmdir()
        except OSError:
            return


def _killed_first_epoch(best: Path, config: TrainConfig, data: Path) -> bool:
    """Whether `best`, a best.pt with no last.pt, metrics, config.json or grids beside it, is what a
    new run of this same command left when killed after its first best.pt was in place and before
    its last.pt (the checkpoint writes in _fit_held): an hx checkpoint of epoch 1, made with
    config (machine settings aside) from `data`."""
    # Such a leftover cannot be told from an earlier run's epoch-1 best.pt whose last.pt, metrics
    # and config.json were deleted, so the rule asks for the same options and data too: the new
    # run then writes that very epoch again first, and replacing it loses nothing it does not make.
    # (Writing last.pt first instead would move the gap, not close it: a kill between the two
    # would leave a last.pt whose best_metric names a best.pt that was never written.)
    try:
        ckpt = read_checkpoint(best)
    except TrainError:
        return False
    saved, given = ckpt["config"], dataclasses.asdict(config)
    same = all(saved.get(name) == given[name] for name in FIELD_NAMES if name not in RUNTIME_FIELDS)
    return same and ckpt["epoch"] == 1 and (ckpt.get("data") or {}).get("source") == str(data)


def _open_run(out: Path, resume: bool, config: TrainConfig, data: Path) -> dict | None:
    """The checkpoint to resume from (None for a new run); TrainError if `out` does not fit."""
    last = out / LAST
    if not resume:
        if last.exists():
            raise TrainError(f"{last} exists: add --resume to continue that run, or choose another --out")
        # A new run replaces these; an earlier run's best.pt or metrics without its last.pt (deleted
        # to save space, say) are no less its results. An empty samples/ (or one holding only a
        # killed write's temporary, removed below) holds nothing.
        samples = out / SAMPLES
        found = [name for name in (BEST, METRICS, CONFIG) if os.path.lexists(out / name)]
        if os.path.lexists(samples) and not (samples.is_dir() and all(is_temp_name(p.name) for p in samples.iterdir())):
            found.append(f"{SAMPLES}/")
        if found == [BEST] and _killed_first_epoch(out / BEST, config, data):
            return None  # _fit_held removes it once the data has been read
        if found:
            raise TrainError(f"--out {out}: holds an earlier run's {', '.join(found)}; choose another "
                             "--out (a new run would replace them)")
        return None
    if not last.is_file():
        raise TrainError(f"--resume: {last} does not exist")
    ckpt = read_checkpoint(last)
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise TrainError(f"--resume: {last} lacks {', '.join(missing)}, so its run cannot go on "
                         "(--init-from starts a new run from its generator)")
    for name in ARCHITECTURE_FIELDS:
        if ckpt["config"][name] != getattr(config, name):
            raise TrainError(f"{option(name)} {getattr(config, name)} differs from the run in {out} "
                             f"({ckpt['config'][name]}); a resumed run keeps its networks")
    # A schedule that ends at or before the run's epoch trains nothing; say so before anything
    # (config.json included) is written.
    done = ckpt["epoch"]
    if config.total_epochs <= done:
        raise TrainError(f"--epochs {config.epochs} plus --epochs-decay {config.epochs_decay} end at epoch "
                         f"{config.total_epochs}, and the run in {out} has {done} epochs done; ask for more to go on")
    return ckpt


def init_generator(path: Path, config: TrainConfig, log: Log = _quiet) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights config's generator starts from with --init-from `path` (a checkpoint or a model
    folder, read_start): its generator, widened (hx_train.models.widen) when config's preset is
    wider; and its lineage."""
    old, weights, started_from = read_start(path)
    for name in ("size", "target"):
        if old[name] != getattr(config, name):
            raise TrainError(f"--init-from {path}: its {option(name)} is {old[name]}, this run's "
                             f"{getattr(config, name)}")
    source = build_generator(old["preset"], int(old["size"]), old["target"])
    try:
        source.load_state_dict(weights)
    except RuntimeError as e:
        raise TrainError(f"--init-from {path}: its weights are not a {old['preset']} generator "
                         f"({str(e).splitlines()[0]})") from None
    try:
        with torch.random.fork_rng(devices=[]):  # the added filters: the draws _Training.start makes
            torch.manual_seed(config.seed)
            G = widen(source, build_generator(config.preset, config.size, config.target))
    except ValueError as e:
        raise TrainError(f"--init-from {path}: preset {old['preset']} does not fit in {config.preset} ({e})") from None
    log(f"generator from {path} ({old['preset']}, epoch {started_from['epoch']})"
        + (f", widened to {config.preset}" if old["preset"] != config.preset else ""))
    return G.state_dict(), started_from


def read_start(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """What --init-from names: a run's checkpoint, or a model folder as hx-train export writes it
    (a path, or a bundled model's name: "default"), so the bundled model can be fine-tuned.
    -> (preset, size and target; the generator's weights; lineage). TrainError for anything else."""
    if path.is_file():
        ckpt = read_checkpoint(path)
        return ckpt["config"], ckpt["generator"], lineage(path, ckpt)
    root = model_root(str(path))
    if not (root / CARD).is_file():
        raise TrainError(f"--init-from {path}: neither a checkpoint nor a model folder (hx-train export's, "
                         f"with a {CARD})")
    try:
        model = load_model_dir(root, verify=True)  # the weights are the ones the card's hashes name
    except (ModelError, OSError) as e:
        raise TrainError(f"--init-from {path}: {e}") from None
    if model.card.get("preset") is None:
        raise TrainError(f"--init-from {path}: its model.json names no preset")
    try:
        weights = torch.load(model.weights_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        raise TrainError(f"--init-from {model.weights_path}: unreadable ({' '.join(str(e).split())[:200]})") from None
    training = model.card.get("training") or {}
    started_from = {"model": str(model.root), "sha256": model.sha256, "preset": model.preset,
                    "epoch": training.get("epoch"), "sessions": training.get("sessions", []),
                    "init_from": training.get("init_from")}
    return {"preset": model.preset, "size": model.size, "target": model.target}, weights, started_from


def lineage(path: Path, ckpt: dict) -> dict:
    """What a run started from with --init-from: the checkpoint, its preset and epoch, and the
    invocations behind it (and behind what it started from), so a model card names them all."""
    return {"checkpoint": str(path), "preset": ckpt["config"]["preset"], "epoch": ckpt["epoch"],
            "sessions": ckpt.get("sessions", []), "init_from": ckpt.get("init_from")}


def machine(device: torch.device) -> dict:
    """What a run trained on, for the model card: CPU model and cores, torch threads, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device.type, "torch": str(torch.__version__)}  # str: weights_only loads no TorchVersion
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fit(config: TrainConfig | None, data: Path, out: Path, *, resume: bool = False,
        overrides: dict | None = None, log: Log = _quiet, progress: bool | None = None,
        command: str | None = None) -> dict:
    """Train on DATA/train, validate on DATA/val each epoch, write RUN (see the module docstring).

    resume: continue from RUN/last.pt; without it an existing RUN/last.pt is an error. With
    resume, config None is the run's own config with `overrides` (config field -> value) replacing
    its values (`resume_config`), read once RUN is held. progress: tqdm bar; None shows it on a
    terminal only. Returns the last epoch's metrics record, plus "best_metric" and "best_key" (the
    val metric it is of). TrainError while another fit runs in RUN (hold_run).
    """
    data, out = Path(data), Path(out)
    if config is None and not resume:
        raise ValueError("fit: config None is for resume=True (the run's own config)")
    if config is not None:
        config, device = resolve(config, log)
    # Before RUN is looked at (its last.pt included): what is in it says nothing while another
    # fit is writing there.
    with hold_run(out):
        if config is None:
            config, device = resolve(resume_config(out, overrides or {}), log)
        return _fit_held(config, device, data, out, resume, log, progress, command)


def _fit_held(config: TrainConfig, device: torch.device, data: Path, out: Path, resume: bool, log: Log,
              progress: bool | None, command: str | None) -> dict:
    """fit, in a RUN this process holds."""
    ckpt = _open_run(out, resume, config, data)
    # What the run started from: a resumed run's checkpoint says, and has its own weights; a new
    # run's --init-from is checked here, before anything is read or written.
    start_weights, started_from = None, ckpt.get("init_from") if ckpt is not None else None
    if config.init_from is not None and ckpt is None:
        start_weights, started_from = init_generator(Path(config.init_from), config, log)

    # Data first: a bad data set fails before anything is created.
    pin = device.type == "cuda"  # page-locked, for asynchronous copies to the GPU
    try:
        sources = read_sources(data)
    except PrepareError as e:
        raise TrainError(str(e)) from None
    canvas = hxdata.canvas_side(config.size)
    train = hxdata.load_split(data / "train", canvas, workers=config.workers,
                              fractions=(config.upper_body_fraction, config.head_fraction), pin=pin,
                              plates=config.p_plate > 0, sources=sources, log=log)
    # With an alpha target, hx-infer eval's person crops of val too, for the per-source record.
    val = hxdata.load_split(data / "val", config.size, workers=config.workers, pin=pin, sources=sources, log=log,
                            crops=("upper", "head") if config.target == "alpha" else ())
    crops = {"full": val, **val.crops}
    background_train = background_val = None
    if config.backgrounds is not None:
        photos = hxdata.find_backgrounds(Path(config.backgrounds))
        held_out = choose_val([p.name for p in photos], VAL_FRACTION, config.seed, MIN_VAL)
        background_train = hxdata.load_split(None, canvas, workers=config.workers, pin=pin, log=log,
                                             photos_only=[p for p in photos if p.name not in held_out])
        if held_out and config.target == "alpha":
            background_val = hxdata.load_split(None, config.size, workers=config.workers, pin=pin,
                                               photos_only=[p for p in photos if p.name in held_out])
    weights = hxdata.source_weights(train, config.source_balance)
    data_info = {"train": len(train), "val": len(val), "source": str(data)}
    if any("path" in s for s in sources):  # DATA/sources.json: what each source is and holds
        data_info["sources"] = sources
    if background_train is not None:
        data_info["backgrounds"] = {"path": config.backgrounds, "train": len(background_train),
                                    "val": len(background_val) if background_val is not None else 0}
    # A run killed while writing a checkpoint or grid left its temporary (a partial checkpoint is
    # as large as a whole one); only names atomic_write makes are removed, never the data's.
    keep_out = tuple(Path(p) for p in (data, config.backgrounds) if p is not None)
    if removed := clean_temporaries(out, keep_out=keep_out):
        log(f"removed {removed} temporary file(s) a killed run left in {out}")
    if ckpt is None and (out / BEST).exists():  # _open_run let a new run past only this one
        (out / BEST).unlink()
        log(f"removed {out / BEST}: the first epoch of this command, killed before its last.pt")

    run = _Training.start(config, device)
    start, best_metric, last_record = 0, -math.inf, None
    if ckpt is not None:
        run.load(ckpt)
        start, best_metric = int(ckpt["epoch"]), float(ckpt["best_metric"])
        last_record = {"epoch": start, "val": ckpt["val_metrics"]}
        if ckpt["data"]["source"] != str(data):
            log(f"note: the run was trained on {ckpt['data']['source']}, now on {data}")
        _trim_metrics(out / METRICS, start, ckpt.get("record"))
        log(f"resuming {out} after epoch {start}")
    elif start_weights is not None:
        run.G.load_state_dict(start_weights)
    # One record per invocation (a resumed run adds one): how each span of epochs was made.
    sessions = list(ckpt.get("sessions", [])) if ckpt is not None else []
    new_run = ckpt is None
    session = {"command": command, "machine": machine(device), "epochs": [start + 1, start], "seconds": 0.0}
    sessions.append(session)
    del ckpt

    autocast = autocast_for(config, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    # torch.compile wraps the modules; checkpoints save the originals, so keys never get `_orig_mod.`.
    G_step = torch.compile(run.G) if config.compile else run.G
    D_step = torch.compile(run.D) if config.compile else run.D
    augment = hxdata.Augmenter(config, train.side, background_train)
    steps = hxdata.steps_per_epoch(len(train), config.batch_size)
    batch = min(config.batch_size, len(train))
    log(f"training {config.preset} {config.size}px -> {config.target} on {len(train)} photos "
        f"({len(val)} val), {device.type}, amp {config.amp}, {steps} steps of {batch} per epoch, "
        f"epochs {start + 1}..{config.total_epochs}")

    for epoch in range(start, config.total_epochs):
        started = time.perf_counter()
        lr = run.opt_g.param_groups[0]["lr"]
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.total_epochs}", unit="step", leave=False,
                   dynamic_ncols=True, disable=None if progress is None else not progress)
        for i, (photos, masks, boxes, plates) in enumerate(hxdata.batches(train, config.batch_size,
                                                                          run.generators["order"], device, weights)):
            photo, mask = augment(photos, masks, boxes, run.generators["augment"], plates)
            target = hxdata.make_target(photo, mask, config.target)
            terms = train_step(G_step, D_step, run.opt_g, run.opt_d, run.scaler, autocast,
                               _layout(photo, config, device), _layout(target, config, device), mask, config)
            for name, value in terms.items():
                sums[name] += value
            bar.update()
            if not bar.disable and ((i + 1) % POSTFIX_EVERY == 0 or i + 1 == steps):
                bar.set_postfix({k: f"{v.item() / (i + 1):.3g}" for k, v in sums.items()  # .item(): GPU sync
                                 if k in ("d_total", "g_gan", "g_l1")})
        bar.close()
        run.sched_g.step()
        with warnings.catch_warnings():
            # With --lambda-gan 0 opt_d never steps; its schedule still advances, so D's learning
            # rate is right if a resumed run turns the GAN term on.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            run.sched_d.step()
        losses = {name: round(total.item() / steps, 6) for name, total in sums.items()}  # GPU sync
        train_seconds = time.perf_counter() - started

        full = per_photo(run.G, val, config, device, autocast)
        metrics = source_means(full, val)
        detail = evaluate_detail(run.G, crops, background_val, config, device, autocast, known={"full": full}) \
            if config.target == "alpha" else {}
        grid = sample_grid(run.G, val, config, device, autocast)
        score = metrics[best_key(config.target)]
        improved = score > best_metric
        best_metric = max(best_metric, score)
        epoch_seconds = time.perf_counter() - started  # training + validation
        session["epochs"][1] = epoch + 1
        session["seconds"] = round(session["seconds"] + epoch_seconds, 1)
        record = {"epoch": epoch + 1, "loss": losses, "val": metrics, "val_sources": detail, "lr": lr,
                  "seconds": round(epoch_seconds, 3),
                  "img_per_s": round(steps * batch / train_seconds, 2)}
        # best.pt, then last.pt, then the metrics line: a crash before last.pt repeats this epoch
        # on resume; one after it leaves the line to the checkpoint's copy (record), which resume
        # writes back. So a new run stopped before its first last.pt has written no metrics.
        checkpoint = run.state_dict(epoch + 1, best_metric, metrics, data_info, sessions, detail, started_from)
        checkpoint["record"] = record
        try:
            if improved:
                _atomic_write(out / BEST, lambda f: torch.save(checkpoint, f))
                _link_or_copy(out / BEST, out / LAST)
            else:
                _atomic_write(out / LAST, lambda f: torch.save(checkpoint, f))
        except BaseException:
            if new_run and epoch == start and not (out / LAST).exists():
                (out / BEST).unlink(missing_ok=True)  # this run's own, with no last.pt beside it
            raise
        with open(out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if epoch == start:  # this invocation's config, once a checkpoint made with it exists
            _write_json(out / CONFIG, dataclasses.asdict(config))
        if grid is not None:  # after the checkpoint: a grid is no result to keep a new run from starting
            _write_png(out / SAMPLES / f"epoch_{epoch + 1:03d}.png", grid)
        last_record = record
        by_source = {f"{name} {crop}": v["iou"] for name, crops_ in detail.items() if name != "backgrounds"
                     for crop, v in crops_.items() if crop == "full" and len(detail) > 1}
        if "backgrounds" in detail:
            by_source["backgrounds fp"] = detail["backgrounds"]["fp"]
        log(f"epoch {epoch + 1}/{config.total_epochs}: "
            + " ".join(f"{k} {v:.4g}" for k, v in {**losses, **metrics, **by_source}.items())
            + f" | {record['img_per_s']:.1f} img/s, {record['seconds']:.1f} s" + (" | best" if improved else ""))

    return {**(last_record or {}), "best_metric": best_metric, "best_key": best_key(config.target)}
