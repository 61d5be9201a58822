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
from ..io.images import TEMP_MARK, clean_temporaries, is_temp_name
from ..io.lock import LockError, OutputLock
from ..manifest import ManifestError, check_manifest, mark_redos, settings_for, settle_redos, write_manifest
from ..model import ModelDir, cached_sha256
from .config import RunConfig
from .index import OutputIndex


def wanted_settings(config: RunConfig, model: ModelDir) -> dict[str, dict]:
    """kind -> the settings that decide its bytes, for the manifest."""
    background = config.background
    if background.color is not None:
        shown = "#{:02x}{:02x}{:02x}".format(*background.color)  # white and #fff are one background
    elif background.label:
        # Its content, not only its path: a new picture saved under the old name must not be
        # resumed onto the composites made on the old one. Cached like the model's hashes.
        path = Path(background.label).resolve()
        try:
            shown = f"{path} (sha256 {cached_sha256([path])[path][:16]})"
        except OSError as e:
            raise ConfigError(f"--background {background.label}: cannot read ({e.strerror or e})") from None
    else:
        shown = "image"
    return {kind: settings_for(kind, model_sha256=model.sha256, model_path=str(model.root),
                               refine=config.options.refine, temporal=config.options.video.temporal,
                               background=shown)
            for kind in config.outputs}


def claim_output(config: RunConfig, model: ModelDir) -> "Claim":
    """OUTPUT ready for this run and locked: run inside the returned Claim (a context manager),
    which releases the lock when the run ends. ConfigError (one line, exit 2) when OUTPUT cannot
    be written, is held by another run, or was made with other settings (unless --overwrite)."""
    out = config.output_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"OUTPUT {out}: cannot create ({e.strerror})") from None
    started_ns = dict.fromkeys(config.outputs, _check_writable(out, "OUTPUT"))
    for kind in config.outputs:
        folder = out / kind
        if folder.is_symlink() and not folder.exists():
            raise ConfigError(f"OUTPUT/{kind} {folder}: a link to nothing ({os.readlink(folder)}); cannot write "
                              f"the {kind} outputs there")
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"OUTPUT/{kind} {folder}: exists and is not a folder; cannot write the {kind} "
                              f"outputs there")
        if folder.is_dir():  # (its own clock: OUTPUT/<kind> may be a link to another disk)
            started_ns[kind] = _check_writable(folder, f"OUTPUT/{kind}")
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
            if config.options.overwrite:
                wanted = mark_redos(out, wanted, started_ns)
            else:
                check_manifest(out, wanted)
            write_manifest(out, wanted, replace_unreadable=config.options.overwrite)
        except ManifestError as e:
            raise ConfigError(str(e)) from None
        keep_out = {"folder": (config.source,), "file": (config.source,),
                    "several": getattr(config.source, "paths", ())}.get(config.source_kind, ())
        clean_temporaries(out, keep_out=keep_out)  # left by a run that was killed mid-write
        index = OutputIndex(out)
    except BaseException:
        lock.release()
        raise
    return Claim(lock, out, wanted, index)


class Claim:
    """OUTPUT held for a run (`with claim_output(...) as claim:`), with its index of what made
    each output (`claim.index`, hx_infer.run.index). A run that ends normally settles the kinds
    an --overwrite began to redo (hx_infer.manifest.settle_redos); one that raises leaves them
    marked mixed. The index is committed and the lock released either way."""

    def __init__(self, lock: OutputLock, out: Path, wanted: dict[str, dict], index: OutputIndex):
        self.lock, self.out, self.wanted, self.index = lock, out, wanted, index

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.index.close()
            if exc_type is None:
                settle_redos(self.out, self.wanted, lambda kind, ns: older_file(self.out / kind, ns))
        finally:
            self.lock.release()


def older_file(folder: Path, ns: int) -> Path | None:
    """A file below `folder` last written before `ns` (file-system time), or None; a folder that
    cannot be listed counts as one (it may hold old files). Stops at the first."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return None
    except OSError:
        return folder
    for entry in entries:
        if is_temp_name(entry.name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                found = older_file(Path(entry.path), ns)
                if found is not None:
                    return found
            elif entry.stat(follow_symlinks=False).st_mtime_ns < ns:
                return Path(entry.path)
        except OSError:
            return Path(entry.path)
    return None


def _check_writable(out: Path, name: str) -> int:
    """Write and remove a probe file in `out`; its mtime: this file system's time now."""
    probe = out / f".hx-probe.{secrets.token_hex(6)}{TEMP_MARK}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise ConfigError(f"{name} {out}: cannot write there ({e.strerror or e})") from None
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(probe)
