"""The run report: counts, failures and timings of one `hx-infer run`, and its summary line.

The report is the one place a user learns which of 10^6 photos could not be read, so it keeps
every failure (path and one-line reason) but nothing per successful file: memory stays flat.
The one exception is `warnings`: photos processed although their decoder noticed something that
may be damage (stray bytes before a JPEG's end marker), each with its reason, in this run or,
for those a rerun skips as done, in the run that made their outputs (kept in the resume index).
They are few in a healthy archive, and their owner needs the list to check those originals.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .io.images import atomic_write

REPORT_NAME = "hx-report.json"


@dataclass
class Tally:
    """Counts of one run, updated by the engine's own thread only (no lock needed)."""

    processed: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of processed or skipped photos

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def done(self) -> int:
        return self.processed + self.skipped + self.failed

    def fail(self, path: str, reason: str) -> None:
        self.failures.append((printable(path), printable(reason)))

    def warn(self, path: str, reason: str) -> None:
        """A photo the report names all the same (counted in `processed`, or in `skipped` when an
        earlier run made its outputs)."""
        self.warnings.append((printable(path), printable(reason)))


# Control characters (newline, ESC, ...) are legal in Linux names: printed raw, one failure
# would read as two lines, or drive the terminal.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def printable(text: str) -> str:
    """A path (or a line naming one) as valid UTF-8 text on one line: the bytes of a name that is
    not UTF-8 (legal on Linux; Python keeps them as lone surrogates) and control characters become
    \\xNN escapes, as `ls -b` shows them, so the JSON report is valid UTF-8 for any JSON reader
    and each failure is one line on a terminal."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").translate(_CONTROLS)


class ReportError(OSError):
    """The run finished but its report could not be written. str(e) is one line naming the
    report's path; `report` is the report that was to be written."""

    def __init__(self, path: Path, cause: OSError, report: dict):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.message = f"cannot write report {path}: {cause.strerror or cause}"
        self.report = report

    def __str__(self) -> str:
        return self.message


def is_report(path: Path) -> bool:
    """Whether the existing file `path` is an hx-infer run report (so a rerun may replace it)."""
    return has_json_keys(path, {"counts", "failures", "wall_s"}, 64 << 20)


def has_json_keys(path: Path, keys: set[str], max_bytes: int) -> bool:
    """Whether the existing file `path` is a JSON object with all of `keys`: what hx wrote there
    itself, so writing there again loses nothing of the user's. Larger files are not read."""
    try:
        if path.stat().st_size > max_bytes:
            return False
        report = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and keys <= report.keys()


def build_report(tally: Tally, wall_s: float, **run_facts) -> dict:
    """The JSON-ready report; `run_facts` (model, backend, outputs, ...) are stored as given.

    Failures and warnings are sorted by path so two runs over the same inputs give the same lists
    whatever order the worker threads finished in. `counts` keeps its three keys (a warned photo
    is processed, or skipped): readers that compare it whole, or sum it, read it as before.
    """
    return {
        **run_facts,
        "counts": {"processed": tally.processed, "skipped": tally.skipped, "failed": tally.failed},
        "failures": [{"path": p, "reason": r} for p, r in sorted(tally.failures)],
        "warnings": [{"path": p, "reason": r} for p, r in sorted(tally.warnings)],
        "wall_s": round(wall_s, 3),
        "files_per_s": round(tally.processed / wall_s, 2) if wall_s > 0 else 0.0,
    }


def write_report(path: Path, report: dict) -> None:
    """Write the report atomically (a killed run never leaves half a JSON file). ReportError
    (naming `path`, not the temporary) when it cannot be written."""
    try:
        atomic_write(Path(path), (json.dumps(report, indent=2) + "\n").encode())
    except OSError as e:
        raise ReportError(Path(path), e, report) from None


_RGBA_CODECS = {"prores": "ProRes 4444", "vp9": "VP9"}


def summary_line(report: dict, report_path: Path | str | None) -> str:
    """`hx-infer: 290 processed, 0 skipped, 2 failed in 7.1 s (40.8 files/s); report: OUT/hx-report.json`

    With videos, their frames and frames/s replace files/s (a few files an hour say nothing), and
    the size of the rgba videos is given: ProRes 4444 runs to GBs for minutes of video. Photos
    processed with warnings are counted (`; 3 photos with warnings`) when there are any.
    """
    c = report["counts"]
    line = f"hx-infer: {c['processed']} processed, {c['skipped']} skipped, {c['failed']} failed in {report['wall_s']:.1f} s"
    frames = report.get("frames", 0)
    if frames:
        line += f" ({frames} video frames, {report['frames_per_s']:.1f} frames/s)"
    else:
        line += f" ({report['files_per_s']:.1f} files/s)"
    rgba_bytes = report.get("rgba_video_bytes", 0)
    if rgba_bytes:
        codec = report.get("video", {}).get("rgba", "")
        hint = "; --video-codec vp9 writes far smaller files" if codec == "prores" else ""
        line += f"; rgba videos: {_size(rgba_bytes)} of {_RGBA_CODECS.get(codec, codec)}{hint}"
    warned = len(report.get("warnings", ()))  # absent from the reports of hx before warnings
    if warned:
        line += "; 1 photo with a warning" if warned == 1 else f"; {warned} photos with warnings"
    return f"{line}; report: {report_path}" if report_path else line


def _size(n: int) -> str:
    """1234567 -> '1.2 MB', 5.3e9 -> '5.3 GB' (decimal units, as file managers show them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
