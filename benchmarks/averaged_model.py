"""A model folder whose graph averages its generator over test-time views: the mirrored photo
(--flip) and the same letterboxed input resampled to larger squares (--scale S, a multiple of the
model's side). It answers "what would averaging buy?" with the scoring every model gets
(`benchmarks/eval_sources.py OUT ...`), without a test-time-averaging mode in hx_infer: what it
buys on the bundled model is in the README, against what it costs (one more generator pass per view,
and a scale S costs (S / side)^2 passes).

    .venv/bin/python benchmarks/averaged_model.py default /tmp/flip --flip
    .venv/bin/python benchmarks/averaged_model.py default /tmp/s512 --scale 512

OUT is a copy of MODEL with model.onnx replaced and its sha256 in the card updated; the other
files (generator.pt, model.fp16.onnx) stay MODEL's, so only the ONNX Runtime fp32 path (eval's
default on the CPU) runs the averaged graph. The graph is traced with torch's TorchScript exporter
(torch.export does not take this wrapper). Never asserted in timed tests.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing hx

from hx_infer.backends.torch import load_generator  # noqa: E402
from hx_infer.extractor import load_model  # noqa: E402
from hx_infer.model import CARD, ONNX_FP32, ModelDir, ModelError, sha256_file  # noqa: E402
from hx_train.export import _to_onnx  # noqa: E402


class Averaged(torch.nn.Module):
    """image [N, 3, S, S] in [-1, 1] -> the mean of the generator's outputs over the views, in [0, 1]."""

    def __init__(self, generator: torch.nn.Module, flip: bool, scales: tuple[int, ...]):
        super().__init__()
        self.generator, self.flip, self.scales = generator, flip, scales

    def views(self, image: torch.Tensor) -> list[torch.Tensor]:
        outs = [self.generator(image)]
        if self.flip:
            outs.append(torch.flip(self.generator(torch.flip(image, [3])), [3]))
        return outs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        side = image.shape[-2:]
        outs = self.views(image)
        for scale in self.scales:
            larger = F.interpolate(image, size=(scale, scale), mode="bilinear", align_corners=False)
            outs += [F.interpolate(out, size=side, mode="bilinear", align_corners=False)
                     for out in self.views(larger)]
        return (torch.stack(outs).mean(0) + 1) / 2


def write_averaged(model: ModelDir, out: Path, flip: bool, scales: tuple[int, ...]) -> Path:
    import onnx

    for scale in scales:
        if scale % model.size:
            raise ValueError(f"--scale {scale}: not a multiple of the model's side {model.size} "
                             "(the U-Net halves its input down to 1 pixel)")
    shutil.copytree(model.root, out)
    graph = _to_onnx(Averaged(load_generator(model), flip, scales).eval(), model.size, model.target, out,
                     "torchscript")
    onnx.save(graph, out / ONNX_FP32)
    card = json.loads((out / CARD).read_text())
    card["sha256"][ONNX_FP32] = sha256_file(out / ONNX_FP32)
    card["averaged_over"] = {"flip": flip, "scales": list(scales), "from": str(model.root)}
    (out / CARD).write_text(json.dumps(card, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder (or 'default')")
    parser.add_argument("out", type=Path, help="new model folder (must not exist)")
    parser.add_argument("--flip", action="store_true", help="also the left-right mirrored input")
    parser.add_argument("--scale", type=int, action="append", default=[], help="also at this side (repeatable)")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"{args.out}: exists; choose a new folder", file=sys.stderr)
        return 2
    if not args.flip and not args.scale:
        print("nothing to average: pass --flip and/or --scale S", file=sys.stderr)
        return 2
    try:
        write_averaged(load_model(args.model), args.out, args.flip, tuple(args.scale))
    except (ValueError, ModelError) as e:
        print(e, file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
