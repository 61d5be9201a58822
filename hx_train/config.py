"""Every training hyperparameter in one frozen dataclass, each with its default and why.

The resolved config (device and amp settled for the machine) is stored in every checkpoint, so a
checkpoint alone says how its weights were made. This module imports nothing heavy: the CLI reads
its defaults and choices for `hx-train --help` without loading torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from hx_infer.crops import BANDS

TARGETS = ("alpha", "rgb")
GAN_LOSSES = ("bce", "lsgan")
SEG_LOSSES = ("none", "bce", "dice", "dice-people")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = ("auto", "cpu", "cuda")

# Fields that describe this machine rather than the run: on --resume they come from the command
# line (or their defaults), never from the checkpoint, so a run started on a GPU can go on elsewhere.
RUNTIME_FIELDS = ("device", "amp", "compile", "workers")
# Fields that fix the networks' shapes: a resumed run must keep them.
ARCHITECTURE_FIELDS = ("preset", "size", "target")


class TrainError(Exception):
    """Training cannot start or go on: bad option, bad data, or a run folder in the way."""


@dataclass(frozen=True)
class TrainConfig:
    # --- networks (hx_train.models) ---
    preset: str = "base"  # the paper's unet_256 + 70x70 PatchGAN; "lite" trades quality for CPU speed
    size: int = 256  # the paper's resolution; the generator's square input side, a power of two
    target: str = "alpha"  # a matte composes onto anything; "rgb" paints the person on white
    # A checkpoint whose generator starts the run instead of random weights: the same preset, or a
    # wider one of the same depth (hx_train.models.widen), so a bigger network starts where a
    # smaller one's training ended. D and the optimisers start fresh. None: random init.
    init_from: str | None = None

    # --- schedule and optimiser (pix2pix defaults) ---
    epochs: int = 100  # epochs at the initial learning rate (pix2pix n_epochs)
    epochs_decay: int = 100  # then this many epochs of linear decay towards zero (n_epochs_decay)
    batch_size: int = 16  # fills a GPU at 256 px; the paper's batch of 1 wastes it and BN copes with 16
    lr: float = 2e-4  # Adam learning rate for G and D, as in the paper
    beta1: float = 0.5  # lower momentum than Adam's 0.9 keeps the GAN game from oscillating
    beta2: float = 0.999  # Adam's default

    # --- losses (hx_train.losses) ---
    lambda_l1: float = 100.0  # the paper's weight: L1 does the low frequencies, the GAN the edges
    lambda_gan: float = 1.0  # the paper's weight of the GAN term; 0 skips D entirely (L1 + seg only, ~4x faster on a CPU)
    gan_loss: str = "bce"  # the paper's vanilla GAN (BCE on logits); "lsgan" is steadier on some data
    seg_loss: str = "none"  # extra matte term, alpha only; off by default to stay the paper's objective
    seg_weight: float = 10.0  # BCE/Dice are ~0.1-1, so 10 weighs like lambda_l1 * L1 (~0.01-0.1 * 100)

    # --- augmentation on the device (hx_train.data) ---
    crop_min: float = 0.6  # whole-photo views keep 60-100% of each side: scale and aspect variety
    p_upper_body: float = 0.2  # share of views cropped to the top ~55% of the person (portraits)
    p_head: float = 0.15  # share cropped to the top ~30% (head and shoulders, profile pictures)
    upper_body_fraction: float = BANDS["upper"]  # of the person's height from its top: eval's crops
    head_fraction: float = BANDS["head"]  # (hx_infer.crops), so training shows the views eval scores
    person_margin: float = 0.15  # person crops grow by up to this share of the person's height per side
    p_paste: float = 0.25  # share of views with another training person pasted in (groups, overlaps)
    p_plate: float = 0.1  # share whose own person is first painted out (a person-free background)
    paste_min: float = 0.4  # a pasted view is scaled by paste_min..1: people nearer and farther
    # Compositing onto person-free photos (--backgrounds): the data sets show people on streets;
    # users' photos are rooms, landscapes, crowds and tiny distant people.
    backgrounds: str | None = None  # folder of photos with nobody in them; None: no compositing
    p_composite: float = 0.3  # share of views that are a background with 1..composite_people pasted on
    p_empty: float = 0.1  # share of views that are a background with nobody: walls, posters, road stay 0
    composite_people: int = 4  # people per composite, 1..this: groups as well as single people
    composite_min_height: float = 0.05  # smallest pasted person, share of the frame's height: far away
    composite_max_height: float = 1.0  # largest; heights are drawn log-uniform, so small people are common;
    #                                   above 1 a person is taller than the frame: close-ups cut by it
    source_balance: float = 0.5  # draw a photo of a source of n photos with weight n^-this: 0 = each
    #                              photo alike (ccp's 813 drown coco's 87), 1 = each source alike
    rotate_deg: float = 10.0  # photos are rarely more tilted than this
    p_flip: float = 0.5  # people are left-right symmetric enough
    brightness: float = 0.25  # multiply by 1 +/- this
    contrast: float = 0.25  # stretch around the mean grey by 1 +/- this
    saturation: float = 0.3  # blend with grey by 1 +/- this
    hue: float = 0.04  # rotate hue by up to this fraction of a turn; more turns skin blue
    # Each colour channel multiplied by 1 +/- this: the green and orange casts of indoor light and
    # old cameras, which a hue turn cannot make (it keeps the grey axis). 0: off, and a run
    # replays exactly as before the option existed.
    white_balance: float = 0.0

    # --- runtime ---
    # Autocast dtype. auto: bf16 on CUDA (needs no loss scaling; fp16 on GPUs without bf16), fp32 on
    # the CPU, as before it was an option. bf16 on a CPU with native bf16 (AVX512-BF16 or AMX) is
    # faster than fp32 there; asked for, not the default, since it changes what a CPU run computes.
    amp: str = "auto"
    device: str = "auto"  # cuda when present, else cpu
    compile: bool = False  # torch.compile: faster steps on CUDA after a minute of compiling
    workers: int = 0  # image decoding threads; 0 = one per CPU core, at most 8
    seed: int = 0  # weights init, batch order and augmentation all follow from it
    samples: int = 6  # validation photos shown in RUN/samples/epoch_NNN.png

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def check(self) -> "TrainConfig":
        """Raise TrainError naming the option for any value out of range; return self.

        Preset and size are checked by hx_train.models when the networks are built.
        """
        for name, choices in (("target", TARGETS), ("gan_loss", GAN_LOSSES),
                              ("seg_loss", SEG_LOSSES), ("amp", AMP_MODES), ("device", DEVICES)):
            value = getattr(self, name)
            if value not in choices:
                raise TrainError(f"{option(name)}: {value!r} is not one of {', '.join(choices)}")
        # Every float field: inf and NaN pass the range checks below (inf >= 0) and train on
        # NaN losses, or fail deep inside torch.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float" and not math.isfinite(value):
                raise TrainError(f"{option(f.name)} must be a finite number, got {value}")
        # numpy's global generator (seeded with it) takes 0..2**32 - 1, and fit seeds it only
        # after every photo is decoded.
        if not 0 <= self.seed < 2**32:
            raise TrainError(f"--seed must be from 0 to {2**32 - 1}, got {self.seed}")
        for name, low in (("epochs", 0), ("epochs_decay", 0), ("batch_size", 1), ("workers", 0),
                          ("samples", 0)):
            if getattr(self, name) < low:
                raise TrainError(f"{option(name)} must be at least {low}, got {getattr(self, name)}")
        if self.total_epochs < 1:
            raise TrainError("--epochs plus --epochs-decay must be at least 1")
        for name in ("lr", "lambda_l1", "lambda_gan", "seg_weight"):
            if not getattr(self, name) >= 0:  # also catches NaN
                raise TrainError(f"{option(name)} must be a number >= 0, got {getattr(self, name)}")
        if self.seg_loss != "none" and self.target != "alpha":
            raise TrainError("--seg-loss needs --target alpha (it compares a matte with the mask)")
        if not 0 <= self.white_balance < 1:
            raise TrainError(f"--white-balance must be in [0, 1), got {self.white_balance}")
        if not 0 < self.crop_min <= 1:
            raise TrainError(f"--crop-min must be in (0, 1], got {self.crop_min}")
        for name in ("p_paste", "p_plate", "p_composite", "p_empty", "source_balance"):
            if not 0 <= getattr(self, name) <= 1:
                raise TrainError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.p_composite + self.p_empty > 1:
            raise TrainError("--p-composite plus --p-empty must not exceed 1")
        if self.composite_people < 1:
            raise TrainError(f"composite_people must be at least 1, got {self.composite_people}")
        if not 0 < self.composite_min_height <= self.composite_max_height:
            raise TrainError("composite heights must satisfy 0 < composite_min_height <= composite_max_height "
                             f"(--composite-max-height), got {self.composite_min_height} and {self.composite_max_height}")
        if self.p_upper_body + self.p_head > 1:
            raise TrainError("p_upper_body + p_head must not exceed 1")
        return self


def option(field: str) -> str:
    """The command-line spelling of a config field: batch_size -> --batch-size."""
    return "--" + field.replace("_", "-")


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
