"""Training step speed: the full pix2pix step (G + PatchGAN D) against G alone (--lambda-gan 0).

    .venv/bin/python benchmarks/train_step.py [--preset lite] [--size 128] [--batch-size 16] [--device cpu]
                                              [--amp auto|bf16|fp16|off] [--g-only]

Runs hx_train.train.train_step on random batches with the networks, optimisers and autocast that
`hx-train fit` sets up, and prints images/s for each; the figures are saved in
benchmarks/results/. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hx_train.config import AMP_MODES, TrainConfig  # noqa: E402
from hx_train.train import _Training, autocast_for, resolve, train_step  # noqa: E402

import record  # noqa: E402  (benchmarks/record.py)


def images_per_s(config: TrainConfig, steps: int) -> float:
    config, device = resolve(config)
    run = _Training.start(config, device)  # what fit starts from: seeded networks, Adam, GradScaler
    autocast = autocast_for(config, device)
    B, S = config.batch_size, config.size
    photo = torch.rand(B, 3, S, S, device=device) * 2 - 1
    mask = (torch.rand(B, 1, S, S, device=device) > 0.5).float()

    def step() -> None:
        train_step(run.G, run.D, run.opt_g, run.opt_d, run.scaler, autocast, photo, mask * 2 - 1, mask, config)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * B / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--amp", default="auto", choices=AMP_MODES, help="as hx-train fit --amp")
    parser.add_argument("--g-only", action="store_true", help="only the G-alone step (--lambda-gan 0)")
    args = parser.parse_args()
    result = {"benchmark": "train_step", "when": record.now(), "preset": args.preset, "size": args.size,
              "batch_size": args.batch_size, "steps": args.steps, "device": args.device,
              "amp": resolve(TrainConfig(device=args.device, amp=args.amp))[0].amp,
              "torch": str(torch.__version__), "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "img_per_s": {}}
    steps = [("G + D (pix2pix)", 1.0), ("G alone (--lambda-gan 0)", 0.0)][args.g_only:]
    for name, lambda_gan in steps:
        config = TrainConfig(preset=args.preset, size=args.size, batch_size=args.batch_size,
                             lambda_gan=lambda_gan, seg_loss="dice", device=args.device, amp=args.amp)
        speed = images_per_s(config, args.steps)
        result["img_per_s"][name] = round(speed, 1)
        print(f"{name}: {speed:.1f} img/s ({args.preset} {args.size}px, batch {args.batch_size}, "
              f"{args.device}, amp {result['amp']})")
    record.save("train_step", result)


if __name__ == "__main__":
    main()
