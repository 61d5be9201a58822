"""The model folder that `hx-train export` writes and every hx-infer backend opens.

    MODEL_DIR/
      model.json        the card: format, preset, size, target, normalisation, file hashes, metrics
      model.onnx        fp32 graph: input "image" [N, 3, S, S] float32 RGB in [-1, 1] (letterboxed,
                        pad value 0), output "alpha" [N, 1, S, S] (or "rgb" [N, 3, S, S]) in [0, 1]
      model.fp16.onnx   the same graph in fp16 end to end (input and output float16)
      generator.pt      state_dict of hx_train.models.UnetGenerator, for the PyTorch backend
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "hx-model/1"
CARD = "model.json"
ONNX_FP32 = "model.onnx"
ONNX_FP16 = "model.fp16.onnx"
WEIGHTS = "generator.pt"


class ModelError(Exception):
    """A model folder that is missing, incomplete, or does not match its card."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    root: Path
    card: dict

    @property
    def size(self) -> int:
        return int(self.card["size"])

    @property
    def target(self) -> str:  # "alpha" or "rgb"
        return self.card["target"]

    @property
    def preset(self) -> str:
        return self.card["preset"]

    @property
    def out_channels(self) -> int:
        return 1 if self.target == "alpha" else 3

    @property
    def output_name(self) -> str:
        return self.target

    @property
    def onnx_path(self) -> Path:
        return self.root / ONNX_FP32

    @property
    def onnx_fp16_path(self) -> Path:
        return self.root / ONNX_FP16

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS

    @property
    def sha256(self) -> str:
        """Identity of the model: the fp32 ONNX graph's hash, as recorded in the card."""
        return self.card["sha256"][ONNX_FP32]

    def verify(self) -> None:
        """Raise ModelError unless every file named in the card exists with its recorded sha256."""
        for name, expected in self.card["sha256"].items():
            path = self.root / name
            if not path.is_file():
                raise ModelError(f"{path}: missing from the model folder")
            if sha256_file(path) != expected:
                raise ModelError(f"{path}: sha256 does not match {CARD}")


def default_model_dir() -> Path:
    """The model bundled in the package (see the default-model issue)."""
    return Path(__file__).parent / "models" / "default"


def load_model_dir(model: str | Path, verify: bool = False) -> ModelDir:
    """Open a model folder; `model` is "default", a bundled model's name, or a path."""
    if isinstance(model, str) and not Path(model).exists() and "/" not in model:
        root = Path(__file__).parent / "models" / model
        if not root.is_dir():
            raise ModelError(f"--model {model!r}: no bundled model of that name and no such folder")
    else:
        root = Path(model)
    card_path = root / CARD
    if not card_path.is_file():
        raise ModelError(f"--model {root}: not a model folder (no {CARD}); make one with hx-train export")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{card_path}: unreadable model card ({e})") from None
    if card.get("format") != FORMAT:
        raise ModelError(f"{card_path}: format {card.get('format')!r} is not {FORMAT!r}")
    md = ModelDir(root.resolve(), card)
    if verify:
        md.verify()
    return md
