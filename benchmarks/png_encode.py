"""PNG (and lossless WebP) encoders side by side on what `hx-infer run` writes: RGBA cutouts and alpha mattes.

    .venv/bin/python benchmarks/png_encode.py                 # 12 ccp photos at their size and at ~2 MP
    .venv/bin/python benchmarks/png_encode.py --n 24 --repeat 5

The images are ccp photos (`../shared/data/ccp`, or $HX_DATA/ccp) with their person mask blurred
into a soft matte (a model's matte has soft edges; a 0/255 mask would flatter every encoder), at
the photos' own size (550 x ~830) and scaled x2.3 (~1270 x 1900, the pixels of a 1080p frame).
Without the shared data, smooth synthetic scenes are used. For each candidate: median ms per image
on one thread (best of --repeat per image), bytes relative to OpenCV's default, whether two encodes
give the same bytes, and whether the encoder releases the GIL (two threads finish twice the work in
about the time of one). Candidates whose library is not installed are listed as missing. The
figures are printed as a table and saved as JSON in benchmarks/results/. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

import record  # benchmarks/record.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hx_infer.io import images  # noqa: E402

Encoder = Callable[[np.ndarray], bytes]  # [H, W] grey or [H, W, 4] RGBA uint8 -> file bytes


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA) if image.ndim == 3 else image


def opencv(level: int, strategy: int | None = None, png_filter: int | None = None) -> Encoder:
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if strategy is not None:
        params += [cv2.IMWRITE_PNG_STRATEGY, strategy]
    if png_filter is not None:
        params += [cv2.IMWRITE_PNG_FILTER, png_filter]
    return lambda image: cv2.imencode(".png", _bgr(image), params)[1].tobytes()


def opencv_default(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", _bgr(image))[1].tobytes()


def opencv_webp_lossless(image: np.ndarray) -> bytes:
    return cv2.imencode(".webp", _bgr(image), [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()


def pillow(level: int) -> Encoder:
    from PIL import Image

    def encode(image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG", compress_level=level)
        return buf.getvalue()
    return encode


def pillow_webp_lossless(method: int) -> Encoder:
    from PIL import Image

    def encode(image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "WEBP", lossless=True, method=method, quality=0, exact=True)
        return buf.getvalue()
    return encode


def vips(level: int, png_filter: str = "none") -> Encoder:
    import pyvips

    def encode(image: np.ndarray) -> bytes:
        v = pyvips.Image.new_from_array(image) if image.ndim == 3 else pyvips.Image.new_from_array(image[..., None])
        return v.pngsave_buffer(compression=level, filter=png_filter, strip=True)
    return encode


def fpng_encoder(image: np.ndarray) -> bytes:
    import fpng
    return fpng.from_ndarray(image)


def imagecodecs_png(level: int) -> Encoder:
    import imagecodecs
    return lambda image: bytes(imagecodecs.png_encode(image, level=level))


def current(image: np.ndarray) -> bytes:
    return images.encode_png(image)


def candidates() -> dict[str, Encoder]:
    S, F = cv2, cv2
    table: dict[str, Encoder] = {
        "hx today: OpenCV level 1, up, Z_FILTERED": opencv(1, S.IMWRITE_PNG_STRATEGY_FILTERED, F.IMWRITE_PNG_FILTER_UP),
        "OpenCV default (level 1, Z_RLE)": opencv_default,
        "OpenCV level 3 default": opencv(3),
        "OpenCV level 6 default": opencv(6),
        "OpenCV level 1, none, Z_RLE": opencv(1, S.IMWRITE_PNG_STRATEGY_RLE, F.IMWRITE_PNG_FILTER_NONE),
        "OpenCV level 1, sub, Z_RLE": opencv(1, S.IMWRITE_PNG_STRATEGY_RLE, F.IMWRITE_PNG_FILTER_SUB),
        "OpenCV level 1, up, Z_RLE": opencv(1, S.IMWRITE_PNG_STRATEGY_RLE, F.IMWRITE_PNG_FILTER_UP),
        "OpenCV level 1, paeth, Z_RLE": opencv(1, S.IMWRITE_PNG_STRATEGY_RLE, F.IMWRITE_PNG_FILTER_PAETH),
        "OpenCV level 1, none, Huffman only": opencv(1, S.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, F.IMWRITE_PNG_FILTER_NONE),
        "OpenCV level 1, up, Huffman only": opencv(1, S.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, F.IMWRITE_PNG_FILTER_UP),
        "OpenCV level 1, sub, Huffman only": opencv(1, S.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, F.IMWRITE_PNG_FILTER_SUB),
        "OpenCV level 1, paeth, Huffman only": opencv(1, S.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, F.IMWRITE_PNG_FILTER_PAETH),
        "OpenCV level 0 (stored)": opencv(0),
        "Pillow level 1": pillow(1),
        "Pillow level 6 (default)": pillow(6),
        "libvips level 1, no filter": vips(1),
        "libvips level 2, no filter": vips(2),
        "libvips level 6, no filter": vips(6),
        "libvips level 1, up": vips(1, "up"),
        "libvips level 1, sub": vips(1, "sub"),
        "libvips level 1, paeth": vips(1, "paeth"),
        "fpng": fpng_encoder,
        "imagecodecs PNG level 1": imagecodecs_png(1),
        "WebP lossless, OpenCV": opencv_webp_lossless,
        "WebP lossless, Pillow method 0": pillow_webp_lossless(0),
    }
    return table


def soft_matte(mask: np.ndarray) -> np.ndarray:
    """0/255 person mask -> a soft matte with edges a few pixels wide, like a model's."""
    return cv2.GaussianBlur(mask, (0, 0), 2.5)


def load_scenes(n: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """n (RGB, matte) pairs at the photos' size -> rgbs, mattes, where they came from."""
    ccp = Path(os.environ.get("HX_DATA", REPO.parent / "shared" / "data")) / "ccp"
    photos = sorted((ccp / "images").glob("*.jpg"))[:n]
    rgbs, mattes = [], []
    if photos:
        for photo in photos:
            rgbs.append(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB))
            mattes.append(soft_matte(cv2.imread(str(ccp / "masks" / f"{photo.stem}.png"), cv2.IMREAD_GRAYSCALE)))
        return rgbs, mattes, str(ccp)
    rng = np.random.default_rng(0)
    for _ in range(n):
        h, w = 832, 550
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = (np.stack([xx / w, yy / h, np.full((h, w), rng.uniform())], -1) * 180
               + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)
        mask = (((yy - h / 2) / 0.4) ** 2 + (xx - w / 2) ** 2 < (0.3 * w) ** 2).astype(np.uint8) * 255
        rgbs.append(rgb)
        mattes.append(soft_matte(mask))
    return rgbs, mattes, "synthetic"


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def time_encoder(encode: Encoder, inputs: list[np.ndarray], repeat: int) -> dict:
    """Median over the inputs of the best of `repeat` encodes; total bytes; determinism; GIL."""
    best, sizes, same = [], 0, True
    for image in inputs:
        first = encode(image)
        sizes += len(first)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            again = encode(image)
            times.append(time.perf_counter() - started)
            same &= again == first
        best.append(min(times))
    started = time.perf_counter()
    for image in inputs:
        encode(image)
    one_thread = time.perf_counter() - started
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        list(pool.map(encode, inputs + inputs))
        two_threads = time.perf_counter() - started
    return {"ms": round(statistics.median(best) * 1000, 2), "bytes": sizes, "deterministic": same,
            # 2.0 = two threads did twice the work in the time of one: the GIL was released
            "two_thread_speedup": round(2 * one_thread / two_threads, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=12, help="photos (default 12)")
    parser.add_argument("--repeat", type=int, default=3, help="encodes per image; the best counts")
    parser.add_argument("--only", default="", help="comma-separated substrings: keep matching candidates")
    args = parser.parse_args()

    rgbs, mattes, source = load_scenes(args.n)
    sets = {
        "rgba": [np.dstack([rgb, matte]) for rgb, matte in zip(rgbs, mattes)],
        "alpha": mattes,
    }
    sets["rgba 2MP"] = [scaled(image, 2.3) for image in sets["rgba"]]
    sets["alpha 2MP"] = [scaled(image, 2.3) for image in sets["alpha"]]
    table = candidates()
    if args.only:
        keep = [s.lower() for s in args.only.split(",")]
        table = {name: enc for name, enc in table.items() if any(k in name.lower() for k in keep)}

    results: dict[str, dict] = {}
    for name, encode in table.items():
        try:
            encode(sets["rgba"][0])
        except ImportError as e:
            results[name] = {"missing": str(e)}
            print(f"{name}: missing ({e})", file=sys.stderr)
            continue
        results[name] = {}
        for kind, inputs in sets.items():
            try:
                results[name][kind] = time_encoder(encode, inputs, args.repeat)
            except Exception as e:  # fpng writes RGB/RGBA only
                results[name][kind] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        print(f"{name}: done", file=sys.stderr)

    reference = results["OpenCV default (level 1, Z_RLE)"]
    header = "| encoder | " + " | ".join(f"{k} ms | {k} size" for k in sets) + " | same bytes | 2 threads |"
    print(header)
    print("|---" * (2 * len(sets) + 3) + "|")
    for name, r in results.items():
        if "missing" in r:
            print(f"| {name} | " + " | ".join("-" for _ in range(2 * len(sets))) + " | missing | |")
            continue
        cells = [f"{r[k]['ms']:.1f} | {r[k]['bytes'] / reference[k]['bytes']:.2f}x" if "ms" in r[k] else "- | -"
                 for k in sets]
        same = all(r[k].get("deterministic", True) for k in sets)
        print(f"| {name} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} | {r['rgba 2MP']['two_thread_speedup']:.1f}x |")

    record.save("png_encode", {
        "benchmark": "png_encode", "when": record.now(), "source": source, "photos": len(rgbs),
        "sizes": {k: list(v[0].shape) for k, v in sets.items()}, "repeat": args.repeat,
        "results": results, "opencv": cv2.__version__,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
    })


if __name__ == "__main__":
    main()
