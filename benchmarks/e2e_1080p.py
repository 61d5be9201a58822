"""End to end at 1080p: decode -> infer -> encode for each output kind, per stage and whole.

    PYTHONPATH=. python3 benchmarks/e2e_1080p.py --model DIR --device cuda --backend torch --n 512
    .venv/bin/python benchmarks/e2e_1080p.py --model DIR --device cpu --n 8      # a dry run here

Makes N 1920x1080 JPEGs (quality 90; the ccp photos cover-cropped to 1080p when
`../shared/data/ccp` (or $HX_DATA/ccp) is there, else 16 synthetic scenes) in a temporary folder. Then, for each
output kind, times the stages of `hx-infer run`'s device path (hx_infer.run.device) one at a time over
the same photos:

    host     the decode threads' share: read, header, CPU decode of what the GPU will not decode
             (DeviceStages.decode, --workers threads)
    device   letterbox, model, un-letterbox, matte / cutout / composite, back into host memory
             (DeviceStages.submit, one batch in flight; JPEG decoding happens here with nvJPEG on CUDA)
    encode   PNG / JPEG encoding (--workers threads)
    write    atomic writes of those files (--workers threads)

and the whole pipeline as a user runs it (Extractor.run: the stages overlapping). The stage with
the fewest images/s bounds the run. On the CPU the whole run takes the numpy path instead, so
there the stage figures only check that the script works. Figures go to --json (default
benchmarks/results/e2e_1080p-<time>.json). Never asserted in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hx_infer import Extractor  # noqa: E402
from hx_infer.run.device import DeviceStages  # noqa: E402
from hx_infer.io.images import atomic_write, iter_photos  # noqa: E402
from hx_infer.run.config import default_workers, make_config  # noqa: E402
from hx_infer.run.kinds import KINDS  # noqa: E402
from hx_infer.run.options import RunOptions  # noqa: E402
from hx_infer.run.plan import Job  # noqa: E402
import record  # noqa: E402  (benchmarks/record.py)
from shared_data import SHARED_DATA  # noqa: E402  (benchmarks/shared_data.py)

CCP = SHARED_DATA / "ccp" / "images"
WIDTH, HEIGHT = 1920, 1080
DISTINCT = 16
KEEP = 64  # outputs kept from the device stage for the encode and write stages
STAGES = ("host", "device", "encode", "write")
TARGETS = {"alpha": 1000, "composite": 1500}  # img/s on an H200 with 16 cores (README)


def scene(i: int) -> np.ndarray:
    """A 1080p RGB photo: a ccp photo cover-cropped, or a textured synthetic scene with a bright figure."""
    sources = sorted(CCP.glob("*.jpg")) if CCP.is_dir() else []
    if sources:
        photo = cv2.cvtColor(cv2.imread(str(sources[i * 37 % len(sources)])), cv2.COLOR_BGR2RGB)
        scale = max(WIDTH / photo.shape[1], HEIGHT / photo.shape[0])
        photo = cv2.resize(photo, (round(photo.shape[1] * scale) + 1, round(photo.shape[0] * scale) + 1),
                           interpolation=cv2.INTER_CUBIC)
        top, left = (photo.shape[0] - HEIGHT) // 2, (photo.shape[1] - WIDTH) // 2
        return np.ascontiguousarray(photo[top:top + HEIGHT, left:left + WIDTH])
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack([xx / WIDTH, yy / HEIGHT, np.full_like(xx, rng.uniform())], -1) * 160
    base += cv2.GaussianBlur(rng.normal(0, 40, (HEIGHT, WIDTH, 3)).astype(np.float32), (0, 0), 2)
    figure = ((xx - rng.uniform(600, 1300)) / 220) ** 2 + ((yy - 560) / 430) ** 2 < 1
    base[figure] = rng.uniform(170, 240, 3) + rng.normal(0, 12, (int(figure.sum()), 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def make_photos(folder: Path, n: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    encoded = [cv2.imencode(".jpg", cv2.cvtColor(scene(i), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
               for i in range(min(n, DISTINCT))]
    for i in range(n):
        (folder / f"{i:05d}.jpg").write_bytes(encoded[i % len(encoded)].tobytes())
    return f"{CCP} cover-cropped" if CCP.is_dir() else "synthetic"


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def time_stages(extractor: Extractor, photos: Path, out: Path, kind: str, workers: int) -> dict:
    """Each stage of the device path alone over every photo (encode and write over KEEP of them)."""
    config = make_config(photos, out / "stages", extractor.model,
                         RunOptions(outputs=kind, overwrite=True, workers=workers, progress=False))
    on_device = DeviceStages(config, extractor.backend, extractor.model)
    jobs = [Job(path, path.relative_to(photos)) for path in iter_photos(photos)]
    batch_size = extractor.batch_size
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        decoded = list(pool.map(on_device.decode, jobs))
        host_s = time.perf_counter() - start
        failed = [d for d in decoded if not isinstance(d, tuple)]
        if failed:
            raise SystemExit(f"e2e_1080p: {failed[0].src}: {failed[0].reason}")
        on_device.submit(decoded[:batch_size])  # warm-up: graph capture, autotuning, allocator growth
        on_device.flush()
        kept: list = []
        start = time.perf_counter()
        for i in range(0, len(decoded), batch_size):
            done = on_device.submit(decoded[i:i + batch_size])
            kept.extend(outputs for _, outputs in done[:KEEP - len(kept)])
        kept.extend(outputs for _, outputs in on_device.flush()[:KEEP - len(kept)])
        device_s = time.perf_counter() - start
        arrays = [outputs[kind] for outputs in kept]
        start = time.perf_counter()
        encoded = list(pool.map(lambda array: KINDS[kind].encode(array, config.options.png_compression), arrays))
        encode_s = time.perf_counter() - start
        targets = [out / "stages" / kind / f"{i:05d}.bin" for i in range(len(encoded))]
        start = time.perf_counter()
        list(pool.map(atomic_write, targets, encoded))
        write_s = time.perf_counter() - start
    n = len(jobs)
    return {"host": rate(n, host_s), "device": rate(n, device_s), "encode": rate(len(arrays), encode_s),
            "write": rate(len(arrays), write_s),
            "mean_output_kib": round(sum(len(e) for e in encoded) / max(1, len(encoded)) / 1024, 1),
            "gpu_jpeg_decode": on_device.gpu_decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder")
    parser.add_argument("--n", type=int, default=512, help="photos")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="decode/encode/write threads [cores]")
    parser.add_argument("--outputs", default="alpha,composite,rgba")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workers = args.workers or default_workers()

    with tempfile.TemporaryDirectory(prefix="hx-e2e-") as tmp, \
            Extractor(args.model, backend=args.backend, device=args.device, batch_size=args.batch_size) as ex:
        tmp = Path(tmp)
        started = time.perf_counter()
        source = make_photos(tmp / "photos", args.n)
        print(f"made {args.n} photos {WIDTH}x{HEIGHT} ({source}) in {time.perf_counter() - started:.1f} s; "
              f"{ex.backend.describe()}, batch {ex.batch_size}, {workers} workers", flush=True)
        kinds = {}
        for kind in args.outputs.split(","):
            stages = time_stages(ex, tmp / "photos", tmp / f"out-{kind}", kind, workers)
            report = ex.run(tmp / "photos", tmp / f"out-{kind}", outputs=kind, overwrite=True, workers=workers,
                            progress=False)
            slowest = min(STAGES, key=lambda s: stages[s])
            kinds[kind] = {"stages_img_per_s": stages, "bound_by": slowest,
                           "run_img_per_s": rate(report["counts"]["processed"], report["wall_s"]),
                           "run_failed": report["counts"]["failed"], "target_img_per_s": TARGETS.get(kind)}
            row = kinds[kind]
            print(f"{kind:9s} host {stages['host']:8.1f}  device {stages['device']:8.1f}  encode "
                  f"{stages['encode']:8.1f}  write {stages['write']:8.1f} img/s -> bound by {slowest}; "
                  f"whole run {row['run_img_per_s']:.1f} img/s"
                  + (f" (target {row['target_img_per_s']})" if row["target_img_per_s"] else ""), flush=True)

        result = {
            "benchmark": "e2e_1080p",
            "when": record.now(),
            "photos": args.n, "size": [WIDTH, HEIGHT], "photo_source": source,
            "model": {"path": str(ex.model.root), "preset": ex.model.preset, "size": ex.model.size},
            "backend": ex.backend.describe(), "device": ex.device, "batch_size": ex.batch_size, "workers": workers,
            "kinds": kinds,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version()},
        }
    record.save("e2e_1080p", result, args.json)


if __name__ == "__main__":
    main()
