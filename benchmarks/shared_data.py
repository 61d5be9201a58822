"""Where the shared data set lives: $HX_DATA, else ../shared/data beside the repository root.

Imported by the scripts in this folder (run as `python benchmarks/NAME.py`, so this folder is on
sys.path); each falls back to synthetic inputs, or says what is missing, when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("HX_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
