"""Where the shared data set lives: $HX_DATA, else ../shared/data beside the repository root.

Tests that read it skip when the folder they need is absent (CI elsewhere, a fresh clone).
"""
from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("HX_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
