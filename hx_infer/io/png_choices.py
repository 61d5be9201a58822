"""The names of `--png-compression`'s choices, apart from the encoders (io/images.py), so the CLI
can offer them without importing OpenCV."""
from __future__ import annotations

PNG_COMPRESSIONS = ("fast", "balanced", "small")
DEFAULT_PNG_COMPRESSION = "fast"
