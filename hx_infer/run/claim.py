"""Taking OUTPUT for one run, before any photo: create it, check that it can be written, lock
it, check what made it (hx_infer.manifest), and only then remove what a killed run left.

The order matters: the lock comes before the clean-up (a second run must not delete the first
one's temporaries), and the writability check before everything else (an OUTPUT that cannot be
written stops the run at once, not after every photo was decoded).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..errors import ConfigError
from ..io.images import TEMP_MARK, clean_temporaries
from ..io.lock import LockError, OutputLock
from ..manifest import ManifestError, check_manifest, settings_for, write_manifest
from ..model import ModelDir
from .config import RunConfig


def wanted_settings(config: RunConfig, model: ModelDir) -> dict[str, dict]:
    """kind -> the settings that decide its bytes, for the manifest."""
    background = config.background
    if background.color is not None:
        shown = "#{:02x}{:02x}{:02x}".format(*background.color)  # white and #fff are one background
    else:
        shown = str(Path(background.label).resolve()) if background.label else "image"
    return {kind: settings_for(kind, model_sha256=model.sha256, model_path=str(model.root),
                               refine=config.options.refine, temporal=config.options.video.temporal,
                               background=shown)
            for kind in config.outputs}


def claim_output(config: RunConfig, model: ModelDir) -> OutputLock:
    """OUTPUT ready for this run and locked: release the returned lock (a context manager) when
    the run ends. ConfigError (one line, exit 2) when OUTPUT cannot be written, is held by
    another run, or was made with other settings (unless --overwrite)."""
    out = config.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"OUTPUT {out}: cannot create ({e.strerror})") from None
    _check_writable(out, "OUTPUT")
    for kind in config.outputs:
        folder = out / kind
        if folder.is_symlink() and not folder.exists():
            raise ConfigError(f"OUTPUT/{kind} {folder}: a link to nothing ({os.readlink(folder)}); cannot write "
                              f"the {kind} outputs there")
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"OUTPUT/{kind} {folder}: exists and is not a folder; cannot write the {kind} "
                              f"outputs there")
        if folder.is_dir():
            _check_writable(folder, f"OUTPUT/{kind}")
    lock = OutputLock(out)
    try:
        lock.acquire()
    except LockError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(f"OUTPUT {out}: cannot write its lock file ({e.strerror or e})") from None
    try:
        wanted = wanted_settings(config, model)
        try:
            if not config.options.overwrite:
                check_manifest(out, wanted)
            write_manifest(out, wanted, replace_unreadable=config.options.overwrite)
        except ManifestError as e:
            raise ConfigError(str(e)) from None
        keep_out = {"folder": (config.source,), "file": (config.source,),
                    "several": getattr(config.source, "paths", ())}.get(config.source_kind, ())
        clean_temporaries(out, keep_out=keep_out)  # left by a run that was killed mid-write
    except BaseException:
        lock.release()
        raise
    return lock


def _check_writable(out: Path, name: str) -> None:
    probe = out / f".hx-probe.{secrets.token_hex(6)}{TEMP_MARK}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise ConfigError(f"{name} {out}: cannot write there ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
