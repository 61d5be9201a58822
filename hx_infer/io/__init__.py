"""Reading and writing photo files (images.py); video lives in video.py.

The names below load images.py (OpenCV, Pillow) on first use, so the CLI can import the light
png_choices.py from this package without them.
"""
from __future__ import annotations

__all__ = ["PHOTO_EXTENSIONS", "TEMP_MARK", "DecodeError", "atomic_write", "clean_temporaries",
           "encode_jpeg", "encode_png", "iter_photos", "photo_size", "read_photo"]


def __getattr__(name: str):
    if name in __all__:
        from . import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
