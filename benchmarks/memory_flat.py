"""Peak memory of `hx-infer run` over 500 and 5,000 photos: the pipeline streams, so the two
should be within 10% of each other.

    .venv/bin/python benchmarks/memory_flat.py --model runs/quickstart/model
    .venv/bin/python benchmarks/memory_flat.py --model DIR --counts 500 5000 --outputs alpha,rgba

Photos are 320x240 JPEGs: a few distinct encodings written under many names (in folders of
250, so the walk is exercised too). Each run is its own process; its peak RSS comes from
wait4's rusage for that one child. Prints both figures and their ratio; saves JSON in
benchmarks/results/. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import record  # benchmarks/record.py

REPO = Path(__file__).resolve().parents[1]
DISTINCT = 8
PER_FOLDER = 250


def encoded_photos(n: int = DISTINCT, width: int = 320, height: int = 240) -> list[bytes]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    photos = []
    for _ in range(n):
        image = np.stack([xx / width, yy / height, np.full((height, width), rng.uniform())], -1) * 160
        disc = (yy - rng.uniform(80, 160)) ** 2 + (xx - rng.uniform(100, 220)) ** 2 < rng.uniform(40, 90) ** 2
        image[disc] = rng.uniform(190, 250, 3)
        buf = io.BytesIO()
        Image.fromarray(image.astype(np.uint8)).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos


def write_tree(root: Path, count: int, encoded: list[bytes]) -> None:
    for i in range(count):
        folder = root / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:07d}.jpg").write_bytes(encoded[i % len(encoded)])


def peak_rss_mib(command: list[str], env: dict) -> tuple[float, float, int]:
    """Run command; -> (peak RSS of that process in MiB, wall s, exit code)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        sys.exit(f"hx-infer run failed ({proc.returncode}): {stderr.decode().strip()}")
    return usage.ru_maxrss / 1024, wall, proc.returncode  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model folder (default: the bundled model)")
    parser.add_argument("--counts", type=int, nargs=2, default=[500, 5000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--outputs", default="rgba")
    parser.add_argument("extra", nargs="*", help="more hx-infer run arguments (after --)")
    args = parser.parse_args()

    encoded = encoded_photos()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    runs = []
    with tempfile.TemporaryDirectory(prefix="hx-mem-") as tmp:
        for count in args.counts:
            photos, out = Path(tmp) / f"in{count}", Path(tmp) / f"out{count}"
            write_tree(photos, count, encoded)
            command = [sys.executable, "-m", "hx_infer.cli", "run", str(photos), str(out), "--model", args.model,
                       "--outputs", args.outputs, "--quiet", *args.extra]
            rss, wall, code = peak_rss_mib(command, env)
            report = json.loads((out / "hx-report.json").read_text())
            runs.append({"photos": count, "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 2),
                         "exit_code": code, "counts": report["counts"]})
            print(f"{count:>6} photos: peak RSS {rss:7.1f} MiB, {wall:6.1f} s", flush=True)

    ratio = runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    print(f"ratio {ratio:.3f} (target: within 1.10)")
    result = {
        "benchmark": "memory_flat",
        "when": record.now(),
        "photo": "320x240 JPEG, 8 distinct encodings under many names, 250 per folder",
        "outputs": args.outputs,
        "command": " ".join(["hx-infer", "run", "IN", "OUT", *command[6:]]),
        "runs": runs,
        "ratio": round(ratio, 3),
        "within_10_percent": ratio <= 1.10,
        "model": report["model"],
        "backend": report["backend"],
        "batch_size": report["batch_size"],
        "workers": report["workers"],
    }
    record.save("memory_flat", result)


if __name__ == "__main__":
    main()
