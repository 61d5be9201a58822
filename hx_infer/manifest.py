"""What made each kind of output in an OUTPUT folder: OUTPUT/hx-manifest.json.

Resume skips every photo whose outputs exist, which is right only if they were made the way
this run would make them. So each kind (alpha, rgba, composite) records the settings that decide
its bytes: the model (the sha256 of its graph), --refine, the video smoothing, and for
composites the background. A rerun that asks for a kind with other settings stops before any
photo is touched, naming the first difference, unless --overwrite (which redoes the kind and
records the new settings). Kinds this run does not write keep their record.

An --overwrite with new settings may not reach every file of the kind: it can be stopped, or
given --glob or fewer photos than made the folder. So the new record also keeps the old settings
(`redo_from`) and when the redo began, until the run ends and no file of the kind is older than
that (mark_redos, settle_redos). While they are there the kind is mixed: a rerun without
--overwrite stops, naming both settings, instead of resuming onto files of the old ones.

    {"format": "hx-output/1",
     "kinds": {"alpha": {"model_sha256": "...", "model": "/path", "refine": "none", "temporal": 0.0}, ...}}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .io.images import atomic_write

MANIFEST_NAME = "hx-manifest.json"
FORMAT = "hx-output/1"
# A kind being redone with new settings: the old ones, and the file-system time the redo began.
REDO_FROM = "redo_from"
REDO_STARTED = "redo_started_ns"
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


def first_difference(before: dict, settings: dict) -> str | None:
    """The first setting (a key of _OPTIONS) that two records give different values, or None."""
    return next((key for key in _OPTIONS if key in settings and key in before and before[key] != settings[key]),
                None)


def check_manifest(output_dir: Path, wanted: dict[str, dict]) -> None:
    """ManifestError unless every kind in `wanted` was made (if at all) with the same settings,
    and not left mixed by an --overwrite run that did not redo them all."""
    made = read_manifest(output_dir)
    for kind, settings in wanted.items():
        before = made.get(kind)
        if not isinstance(before, dict):
            continue
        redo_from = before.get(REDO_FROM)
        if isinstance(redo_from, dict):
            key = first_difference(redo_from, before) or "model_sha256"
            option = _OPTIONS[key]
            raise ManifestError(f"OUTPUT {output_dir}: its {kind} outputs are mixed: an --overwrite run with "
                                f"{option} {_shown(key, before)} did not redo those made with {option} "
                                f"{_shown(key, redo_from)} (it was stopped, or given --glob or fewer photos); "
                                f"run with --overwrite over all of them, or use another OUTPUT")
        key = first_difference(before, settings)
        if key is not None:
            option, was, now = _OPTIONS[key], _shown(key, before), _shown(key, settings)
            raise ManifestError(f"OUTPUT {output_dir}: its {kind} outputs were made with {option} {was}, "
                                f"this run asks {option} {now}; use --overwrite to redo them, or another OUTPUT")


def mark_redos(output_dir: Path, wanted: dict[str, dict], started_ns: dict[str, int]) -> dict[str, dict]:
    """`wanted` for an --overwrite run: a kind whose outputs were made with other settings (or
    left mixed before) records the old settings under REDO_FROM and when this run began, until
    settle_redos finds every file of the kind rewritten since. A run that stops, or redoes only
    some photos, so leaves a record that check_manifest refuses to resume."""
    try:
        made = read_manifest(output_dir)
    except ManifestError:
        made = {}
    marked = {}
    for kind, settings in wanted.items():
        before = made.get(kind)
        if isinstance(before, dict) and (isinstance(before.get(REDO_FROM), dict)
                                         or first_difference(before, settings) is not None):
            old = before.get(REDO_FROM) if isinstance(before.get(REDO_FROM), dict) else before
            settings = {**settings, REDO_FROM: old, REDO_STARTED: started_ns[kind]}
        marked[kind] = settings
    return marked


def settle_redos(output_dir: Path, redone: dict[str, dict], older_file: Callable[[str, int], "Path | None"]) -> None:
    """After a run that ended normally: each kind marked by mark_redos whose files are all newer
    than its REDO_STARTED (older_file(kind, ns) finds none) is recorded clean."""
    kinds = {kind: {k: v for k, v in settings.items() if k not in (REDO_FROM, REDO_STARTED)}
             for kind, settings in redone.items()
             if REDO_FROM in settings and older_file(kind, settings[REDO_STARTED]) is None}
    if kinds:
        write_manifest(output_dir, kinds)


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
