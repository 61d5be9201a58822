"""Training step speed: the full pix2pix step (G + PatchGAN D) against G alone (--lambda-gan 0).

    .venv/bin/python benchmarks/train_step.py [--preset lite] [--size 128] [--batch-size 16] [--device cpu]

Runs hx_train.train.train_step on random batches, as `hx-train fit` does, and prints images/s for
each; the figures are saved in benchmarks/results/. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hx_train.config import TrainConfig  # noqa: E402
from hx_train.models import build_discriminator, build_generator  # noqa: E402
from hx_train.train import train_step  # noqa: E402

import record  # noqa: E402  (benchmarks/record.py)


def images_per_s(config: TrainConfig, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    G = build_generator(config.preset, config.size).to(device)
    D = build_discriminator(config.preset).to(device)
    opt_g, opt_d = (torch.optim.Adam(n.parameters(), lr=config.lr, betas=(config.beta1, config.beta2)) for n in (G, D))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    photo = torch.rand(config.batch_size, 3, config.size, config.size, device=device) * 2 - 1
    mask = (torch.rand(config.batch_size, 1, config.size, config.size, device=device) > 0.5).float()
    run = lambda: train_step(G, D, opt_g, opt_d, scaler, contextlib.nullcontext,  # noqa: E731
                             photo, mask * 2 - 1, mask, config)
    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {"benchmark": "train_step", "when": record.now(), "preset": args.preset, "size": args.size,
              "batch_size": args.batch_size, "steps": args.steps, "device": str(device),
              "torch": str(torch.__version__), "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "img_per_s": {}}
    for name, lambda_gan in (("G + D (pix2pix)", 1.0), ("G alone (--lambda-gan 0)", 0.0)):
        config = TrainConfig(preset=args.preset, size=args.size, batch_size=args.batch_size,
                             lambda_gan=lambda_gan, seg_loss="dice")
        speed = images_per_s(config, device, args.steps)
        result["img_per_s"][name] = round(speed, 1)
        print(f"{name}: {speed:.1f} img/s ({args.preset} {args.size}px, batch {args.batch_size}, {device})")
    record.save("train_step", result)


if __name__ == "__main__":
    main()
