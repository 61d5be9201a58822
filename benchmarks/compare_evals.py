"""Photo by photo, how one model's val figures differ from another's: two `eval_sources.py --json`
files of the same prepared set, model A then model B.

    .venv/bin/python benchmarks/compare_evals.py A.json B.json [--crop full] [--margin 0.01] [--show 3]

Per source: mean IoU of A and of B, how many photos B scores better or worse than A by more than
--margin, how many each scores at IoU 0 (under 0.005: nobody found), and the photos that moved most
either way. A mean over 30 photos moves with one or two of them, so a candidate model is judged by
these counts as well as by its means. Photos are matched by file name within each source; a photo
scored by only one of the two is reported, not compared.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MISSED = 0.005  # an IoU below this: the person was not found at all


def per_photo(report: dict, source: str, crop: str) -> dict[str, float]:
    """{file name: IoU} of one source's photos on one crop, from an eval_sources.py --json report."""
    return {Path(image["path"]).name: image["iou"] for image in report["sources"][source]["images"]
            if image["crop"] == crop}


def compare(a: dict, b: dict, crop: str = "full", margin: float = 0.01) -> dict[str, dict]:
    """Per source both reports hold: means, better/worse counts, misses and the moves, largest first."""
    result = {}
    for source in a["sources"]:
        if source not in b["sources"]:
            continue
        old, new = per_photo(a, source, crop), per_photo(b, source, crop)
        shared = sorted(old.keys() & new.keys())
        moves = sorted(((new[name] - old[name], name) for name in shared), reverse=True)
        result[source] = {
            "n": len(shared),
            "only_in_one": sorted(old.keys() ^ new.keys()),
            "mean": (sum(old[n] for n in shared) / max(len(shared), 1), sum(new[n] for n in shared) / max(len(shared), 1)),
            "better": sum(move > margin for move, _ in moves),
            "worse": sum(move < -margin for move, _ in moves),
            "missed": (sum(old[n] < MISSED for n in shared), sum(new[n] < MISSED for n in shared)),
            "moves": [(name, old[name], new[name]) for _, name in moves],
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="eval_sources.py --json of the model compared against")
    parser.add_argument("b", type=Path, help="eval_sources.py --json of the candidate")
    parser.add_argument("--crop", default="full", choices=("full", "upper", "head"))
    parser.add_argument("--margin", type=float, default=0.01, help="an IoU change counted as better or worse")
    parser.add_argument("--show", type=int, default=3, help="photos shown that moved most, each way")
    args = parser.parse_args(argv)
    try:
        a, b = (json.loads(path.read_text()) for path in (args.a, args.b))
        table = compare(a, b, args.crop, args.margin)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"compare_evals: cannot compare {args.a} with {args.b}: {e!r}", file=sys.stderr)
        return 2
    print(f"| source | photos | mean IoU A -> B | B better | B worse | IoU 0, A -> B | ({args.crop}, margin {args.margin})")
    print("|---|---|---|---|---|---|")
    for source, row in table.items():
        print(f"| {source} | {row['n']} | {row['mean'][0]:.3f} -> {row['mean'][1]:.3f} | {row['better']} | "
              f"{row['worse']} | {row['missed'][0]} -> {row['missed'][1]} |")
    for source, row in table.items():
        shown = row["moves"][:args.show] + row["moves"][-args.show:] if len(row["moves"]) > 2 * args.show else row["moves"]
        print(f"{source}: " + ", ".join(f"{name} {old:.3f} -> {new:.3f}" for name, old, new in shown))
        if row["only_in_one"]:
            print(f"{source}: scored by only one of the two: {', '.join(row['only_in_one'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
