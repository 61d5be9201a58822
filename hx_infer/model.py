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
import os
import secrets
from dataclasses import dataclass, field
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


# Hashing a model folder costs ~30 ms for the bundled model and about a second for a `base`
# 256 px one, on every run; so a file's hash is kept (in this process and in the user's cache)
# under what identifies its content: path, device, inode, size, mtime and ctime. ctime cannot
# be set back by hand, so a file rewritten and `touch`ed to its old mtime is still hashed again.
_HASH_CACHE_MAX = 256
_hashes_seen: dict[str, dict] = {}


def _hash_cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "hx" / "sha256-cache.json"


def _identity(path: Path) -> tuple[str, list[int]]:
    st = os.stat(path)
    return str(path.resolve()), [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _read_hash_cache() -> dict[str, dict]:
    try:
        cache = json.loads(_hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_hash_cache(cache: dict[str, dict]) -> None:
    """Best effort (a read-only home must not stop a run), atomic (two runs may write at once)."""
    path = _hash_cache_path()
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.hx-tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text(json.dumps(dict(list(cache.items())[-_HASH_CACHE_MAX:])))
        os.replace(temp, path)
    except OSError:
        try:
            temp.unlink()
        except OSError:
            pass


def cached_sha256(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each file, hashed again only when its path, size, mtime or ctime changed."""
    if not _hashes_seen:
        _hashes_seen.update(_read_hash_cache())
    result, changed = {}, False
    for path in paths:
        key, identity = _identity(path)
        entry = _hashes_seen.get(key)
        if not isinstance(entry, dict) or entry.get("identity") != identity:
            entry = {"identity": identity, "sha256": sha256_file(path)}
            _hashes_seen.pop(key, None)  # re-inserted last: the newest entries are the ones kept
            _hashes_seen[key] = entry
            changed = True
        result[path] = entry["sha256"]
    if changed:
        _write_hash_cache(_hashes_seen)
    return result


@dataclass(frozen=True)
class ModelDir:
    root: Path
    card: dict
    hashes: dict[str, str] = field(default_factory=dict, compare=False)  # file name -> sha256, once verified

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
        """Identity of the model: the fp32 ONNX graph's hash (the file's own, once verified)."""
        return self.hashes.get(ONNX_FP32) or self.card["sha256"][ONNX_FP32]

    def verify(self) -> dict[str, str]:
        """Every file named in the card, hashed -> {name: sha256}; ModelError unless each exists
        with the sha256 the card records."""
        recorded = self.card.get("sha256")
        if not isinstance(recorded, dict) or ONNX_FP32 not in recorded:
            raise ModelError(f"{self.root / CARD}: records no sha256 for {ONNX_FP32}")
        paths = {}
        for name, expected in recorded.items():
            if not isinstance(expected, str) or Path(name).name != name:  # a name that leaves the folder is no file of ours
                raise ModelError(f"{self.root / CARD}: its sha256 record for {name!r} is not a file name and a hash")
            path = self.root / name
            if not path.is_file():
                raise ModelError(f"{path}: missing from the model folder")
            paths[name] = path
        try:
            found = cached_sha256(list(paths.values()))
        except OSError as e:
            raise ModelError(f"{e.filename}: cannot read ({e.strerror})") from None
        hashes = {name: found[path] for name, path in paths.items()}
        for name, expected in recorded.items():
            if hashes[name] != expected:
                raise ModelError(f"{paths[name]}: sha256 {hashes[name][:16]}... does not match the "
                                 f"{expected[:16]}... recorded in {CARD}; the file was changed after export")
        return hashes

    def check_graph(self, input_shape: list, outputs: dict[str, list]) -> None:
        """ModelError unless the graph takes [N, 3, size, size] and has the card's output with
        1 (alpha) or 3 (rgb) channels. input_shape and outputs' shapes as a runtime reports
        them (a dimension may be a name, as the batch axis is)."""
        where = f"{self.root / CARD} contradicts {self.onnx_path.name}"
        if len(input_shape) != 4 or input_shape[1:] != [3, self.size, self.size]:
            raise ModelError(f"{where}: the card says size {self.size} (input [N, 3, {self.size}, "
                             f"{self.size}]), the graph takes {_shape(input_shape)}")
        if self.output_name not in outputs:
            raise ModelError(f"{where}: the card says target {self.target}, the graph has no "
                             f"{self.output_name!r} output (it has {', '.join(outputs) or 'none'})")
        shape = outputs[self.output_name]
        if len(shape) != 4 or shape[1] != self.out_channels:
            raise ModelError(f"{where}: target {self.target} needs {self.out_channels} output channel(s), "
                             f"the graph gives {_shape(shape)}")


def _shape(dims: list) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


BUNDLED_MODELS = Path(__file__).parent / "models"  # the models installed with the package


def default_model_dir() -> Path:
    """The model bundled in the package (see the default-model issue)."""
    return BUNDLED_MODELS / "default"


def model_root(model: str | Path) -> Path:
    """The folder `model` names: a bundled model's (a name with no "/" that is not an existing
    path, as "default") or the path itself. Nothing is checked."""
    if isinstance(model, str) and not Path(model).exists() and "/" not in model:
        return BUNDLED_MODELS / model
    return Path(model)


def load_model_dir(model: str | Path, verify: bool = False) -> ModelDir:
    """Open a model folder; `model` is "default", a bundled model's name, or a path.

    verify: hash every file the card names and raise ModelError on a mismatch (hx_infer.load_model,
    which every command goes through, does this); the returned ModelDir then quotes the files'
    own hashes."""
    root = model_root(model)
    if root != Path(model) and not root.is_dir():
        raise ModelError(f"--model {model!r}: no bundled model of that name and no such folder")
    card_path = root / CARD
    if not card_path.is_file():
        raise ModelError(f"--model {root}: not a model folder (no {CARD}); make one with hx-train export")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{card_path}: unreadable model card ({e})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{card_path}: not a model card (a JSON object); make one with hx-train export")
    if card.get("format") != FORMAT:
        raise ModelError(f"{card_path}: format {card.get('format')!r} is not {FORMAT!r}")
    if not isinstance(card.get("size"), int) or card.get("target") not in ("alpha", "rgb"):
        raise ModelError(f"{card_path}: needs an integer size and a target of alpha or rgb")
    md = ModelDir(root.resolve(), card)
    if verify:
        md = ModelDir(md.root, card, md.verify())
    return md
