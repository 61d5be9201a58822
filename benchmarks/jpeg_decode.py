"""JPEG decode time: the strict decoder hx uses (simplejpeg, libjpeg-turbo, warnings are errors)
against Pillow's decode that hx used before (warnings ignored), on the same files, same scales.

    .venv/bin/python benchmarks/jpeg_decode.py [--photos DIR] [--n 300] [--repeat 3]

Photos: the ccp photos (/work/shared/data/ccp/images, 550 x ~840) unless --photos is given.
Each decoder runs over every photo `repeat` times at full size and at the model-size reduced
scale of `--outputs alpha` (reduce_to 128: libjpeg's 1/4 here); the best repeat's ms per photo
is printed, with a check that both decoders gave identical arrays. Saved in benchmarks/results/.
Never asserted in tests.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import record  # benchmarks/record.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hx_infer.io.images import read_photo  # noqa: E402

CCP = Path("/work/shared/data/ccp/images")


def pillow_decode(data: bytes, reduce_to: int | None) -> np.ndarray:
    """What hx's read_photo did before: Pillow (draft for the reduced scale), the EXIF transpose
    only when the photo has one, one copy out to numpy."""
    with Image.open(io.BytesIO(data)) as image:
        if reduce_to is not None:
            w, h = image.size
            longer = max(w, h)
            if longer > reduce_to:
                image.draft("RGB", (max(1, w * reduce_to // longer), max(1, h * reduce_to // longer)))
        image.load()
        if image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def strict_decode(data: bytes, reduce_to: int | None) -> np.ndarray:
    return read_photo(Path("bench.jpg"), data=data, reduce_to=reduce_to)


def best_ms(decode, datas: list[bytes], reduce_to: int | None, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for data in datas:
            decode(data, reduce_to)
        times.append((time.perf_counter() - started) / len(datas) * 1e3)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=CCP)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n]
    if not files:
        sys.exit(f"no JPEGs in {args.photos}")
    datas = [p.read_bytes() for p in files]
    rows = {}
    for label, reduce_to in (("full", None), ("reduced_128", 128)):
        same = all(np.array_equal(pillow_decode(d, reduce_to), strict_decode(d, reduce_to)) for d in datas)
        before = best_ms(pillow_decode, datas, reduce_to, args.repeat)
        after = best_ms(strict_decode, datas, reduce_to, args.repeat)
        rows[label] = {"pillow_ms": round(before, 3), "strict_ms": round(after, 3),
                       "strict_over_pillow": round(after / before, 3), "identical_arrays": same}
        print(f"{label:12s} Pillow {before:.2f} ms/photo, strict {after:.2f} ms/photo "
              f"({after / before:.2f}x), identical arrays: {same}")
    record.save("jpeg_decode", {"benchmark": "jpeg_decode", "when": record.now(), "photos": len(files),
                                "source": str(args.photos), "repeat": args.repeat, "results": rows})


if __name__ == "__main__":
    main()
