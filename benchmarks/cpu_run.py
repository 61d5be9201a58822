"""CPU photos/s of `hx-infer run`, end to end: process start to exit, as a user sees it.

    .venv/bin/python benchmarks/cpu_run.py --model runs/quickstart/model
    .venv/bin/python benchmarks/cpu_run.py --model DIR --n 290 --outputs alpha,rgba -- --workers 2

Builds N photos (default 290) of 300-1500 px on the longer side in a temporary folder: the ccp
photos (`../shared/data/ccp/images`, or $HX_DATA/ccp/images) resized, or synthetic ones when that folder is absent.
Then runs `python -m hx_infer.cli run PHOTOS OUT --outputs alpha --quiet` (extra arguments after
`--` are passed on) and prints photos/s. The figures are saved as JSON in benchmarks/results/.
Never asserted in tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import record  # benchmarks/record.py
from shared_data import SHARED_DATA  # benchmarks/shared_data.py

REPO = Path(__file__).resolve().parents[1]
CCP = SHARED_DATA / "ccp" / "images"


def make_photos(folder: Path, n: int, seed: int = 0) -> str:
    """n JPEGs, longer side uniform in 300..1500 px -> a description of where they came from."""
    rng = np.random.default_rng(seed)
    sources = sorted(CCP.glob("*.jpg")) if CCP.is_dir() else []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        longer = int(rng.integers(300, 1501))
        if sources:
            with Image.open(sources[i % len(sources)]) as im:
                photo = im.convert("RGB")
        else:  # smooth colour field with a bright disc: compresses like a photo, not like noise
            h, w = 832, 550
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx / w, yy / h, np.full((h, w), rng.uniform())], -1) * 180
            disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.3 * w) ** 2
            base[disc] = rng.uniform(200, 250, 3)
            photo = Image.fromarray(base.astype(np.uint8))
        scale = longer / max(photo.size)
        photo = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                             Image.Resampling.LANCZOS)
        photo.save(folder / f"{i:04d}.jpg", quality=90)
    return f"{CCP} resized" if sources else "synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model folder (default: the bundled model)")
    parser.add_argument("--n", type=int, default=290, help="number of photos")
    parser.add_argument("--outputs", default="alpha")
    parser.add_argument("--photos", type=Path, help="reuse this folder of photos instead of making N")
    parser.add_argument("extra", nargs="*", help="more hx-infer run arguments (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hx-bench-") as tmp:
        tmp = Path(tmp)
        photos, source = args.photos, "given"
        if photos is None:
            photos = tmp / "photos"
            started = time.perf_counter()
            source = make_photos(photos, args.n)
            print(f"made {args.n} photos ({source}) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        n = sum(1 for _ in photos.rglob("*.jpg"))
        out = tmp / "out"
        command = [sys.executable, "-m", "hx_infer.cli", "run", str(photos), str(out), "--model", args.model,
                   "--outputs", args.outputs, "--quiet", *args.extra]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode not in (0, 1):
            sys.exit(f"hx-infer run failed ({proc.returncode}): {proc.stderr.strip()}")
        report = json.loads((out / "hx-report.json").read_text())

    result = {
        "benchmark": "cpu_run",
        "when": record.now(),
        "photos": n,
        "photo_source": source,
        "outputs": args.outputs,
        "command": " ".join(["hx-infer", *command[3:]]),
        "process_wall_s": round(wall, 2),
        "photos_per_s": round(n / wall, 2),
        "pipeline_wall_s": report["wall_s"],
        "pipeline_files_per_s": report["files_per_s"],
        "counts": report["counts"],
        "model": report["model"],
        "backend": report["backend"],
        "device": report["device"],
        "batch_size": report["batch_size"],
        "workers": report["workers"],
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(f"{n} photos in {wall:.1f} s: {n / wall:.1f} photos/s end to end "
          f"({report['files_per_s']:.1f} files/s inside the pipeline; {report['backend']} on {report['device']}, "
          f"batch {report['batch_size']}, {report['workers']} workers)")
    record.save("cpu_run", result)


if __name__ == "__main__":
    main()
