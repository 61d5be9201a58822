"""CPU seconds (user + sys) of `hx-infer run` for two checkouts on the same photos, interleaved.

    .venv/bin/python benchmarks/cpu_seconds.py --before /tmp/main-checkout --photos DIR [--outputs alpha,rgba]

Wall-clock photos/s (benchmarks/cpu_run.py) swings by a third on a machine that other jobs share;
the CPU time a run takes moves by a few per cent there, so a change's cost shows through. Each
checkout runs `python -m hx_infer.cli run PHOTOS OUT --outputs ... --quiet` `--repeat` times,
alternating; prints the CPU seconds and the ratio of medians (after / before). Make PHOTOS with
cpu_run.py's make_photos (or pass any folder). Saved in benchmarks/results/. Never asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import record  # benchmarks/record.py

REPO = Path(__file__).resolve().parents[1]


def cpu_seconds(tree: Path, photos: Path, outputs: str) -> float:
    with tempfile.TemporaryDirectory(prefix="hx-cpu-") as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, "-m", "hx_infer.cli", "run", str(photos), f"{out}/o", "--outputs",
                               outputs, "--quiet"], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                              capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        sys.exit(f"{tree}: hx-infer run failed ({proc.returncode}): {proc.stderr.strip()}")
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--after", type=Path, default=REPO, help="default: this checkout")
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--outputs", default="alpha")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeat):
        for name in runs:
            runs[name].append(round(cpu_seconds(getattr(args, name), args.photos, args.outputs), 2))
    ratio = statistics.median(runs["after"]) / statistics.median(runs["before"])
    print(f"--outputs {args.outputs}: CPU s before {runs['before']}, after {runs['after']}; "
          f"after / before = {ratio:.3f} (medians)")
    record.save("cpu_seconds", {"benchmark": "cpu_seconds", "when": record.now(), "outputs": args.outputs,
                                "photos": str(args.photos), "before": str(args.before), "after": str(args.after),
                                "cpu_s": runs, "after_over_before": round(ratio, 3)})


if __name__ == "__main__":
    main()
