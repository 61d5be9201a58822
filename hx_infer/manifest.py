"""What made each kind of output in an OUTPUT folder: OUTPUT/hx-manifest.json.

Resume skips every photo whose outputs exist, which is right only if they were made the way
this run would make them. So each kind (alpha, rgba, composite) records the settings that decide
its bytes: the model (the sha256 of its graph), --refine, the video smoothing, and for
composites the background. A rerun that asks for a kind with other settings stops before any
photo is touched, naming the first difference, unless --overwrite (which redoes the kind and
records the new settings). Kinds this run does not write keep their record.

    {"format": "hx-output/1",
     "kinds": {"alpha": {"model_sha256": "...", "model": "/path", "refine": "none", "temporal": 0.0}, ...}}
"""
from __future__ import annotations

import json
from pathlib import Path

from .io.images import atomic_write

MANIFEST_NAME = "hx-manifest.json"
FORMAT = "hx-output/1"
# setting -> the option a user changes it with, for the one-line message
_OPTIONS = {"model_sha256": "--model", "refine": "--refine", "temporal": "--temporal-strength",
            "background": "--background"}


class ManifestError(ValueError):
    """OUTPUT was made with other settings; str(e) is one line naming the setting."""


def settings_for(kind: str, *, model_sha256: str, model_path: str, refine: str, temporal: float,
                 background: str) -> dict:
    """The record of one kind: what decides its bytes ("model" is informative, not compared)."""
    record = {"model_sha256": model_sha256, "model": model_path, "refine": refine, "temporal": temporal}
    if kind == "composite":
        record["background"] = background
    return record


def read_manifest(output_dir: Path) -> dict:
    """The manifest's kinds ({} when there is none). ManifestError for one that is not ours."""
    path = Path(output_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable ({e}); remove it, or use --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("kinds"), dict):
        raise ManifestError(f"{path}: not an hx-infer output manifest; remove it, or use --overwrite")
    return manifest["kinds"]


def check_manifest(output_dir: Path, wanted: dict[str, dict]) -> None:
    """ManifestError unless every kind in `wanted` was made (if at all) with the same settings."""
    made = read_manifest(output_dir)
    for kind, settings in wanted.items():
        before = made.get(kind)
        if not isinstance(before, dict):
            continue
        for key, option in _OPTIONS.items():
            if key in settings and key in before and before[key] != settings[key]:
                was, now = _shown(key, before), _shown(key, settings)
                raise ManifestError(f"OUTPUT {output_dir}: its {kind} outputs were made with {option} {was}, "
                                    f"this run asks {option} {now}; use --overwrite to redo them, or another OUTPUT")


def _shown(key: str, settings: dict) -> str:
    if key == "model_sha256":
        where = settings.get("model")
        return f"{where} (sha256 {settings[key][:12]}...)" if where else f"sha256 {settings[key][:12]}..."
    return str(settings[key])


def write_manifest(output_dir: Path, wanted: dict[str, dict], replace_unreadable: bool = False) -> None:
    """Record `wanted`'s kinds, keeping the others' records. Atomic."""
    try:
        made = read_manifest(output_dir)
    except ManifestError:
        if not replace_unreadable:
            raise
        made = {}
    kinds = {**made, **wanted}
    atomic_write(Path(output_dir) / MANIFEST_NAME,
                 (json.dumps({"format": FORMAT, "kinds": dict(sorted(kinds.items()))}, indent=2) + "\n").encode())
