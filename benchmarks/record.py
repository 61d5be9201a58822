"""Where benchmark figures go: one JSON file per run in benchmarks/results/, named by script and time.

Imported by the scripts in this folder (run as `python benchmarks/NAME.py`, so this folder is on
sys.path).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def now() -> str:
    """The run's UTC time, to the second: the "when" of a result and the stamp in its file name."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save(benchmark: str, result: dict, path: Path | None = None) -> Path:
    """Write `result` (it has "when" from now()) to `path`, default RESULTS/BENCHMARK-<time>.json."""
    if path is None:
        path = RESULTS / f"{benchmark}-{result['when'][:19].replace(':', '')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")
    return path
