"""Reading and writing photo files (images.py); photo/mask folders (pairs.py); video (video.py)."""
from .images import (PHOTO_EXTENSIONS, TEMP_MARK, DecodeError, atomic_write, clean_temporaries,
                     encode_jpeg, encode_png, iter_photos, photo_size, read_photo)

__all__ = ["PHOTO_EXTENSIONS", "TEMP_MARK", "DecodeError", "atomic_write", "clean_temporaries",
           "encode_jpeg", "encode_png", "iter_photos", "photo_size", "read_photo"]
