"""Detection figures at stricter confidence rules, from an evaluation run at a low ``min_confidence``.

Run from the repository root on the JSON that ``scripts.evaluate`` wrote (with ``min_confidence`` set low in a
copy of the bundle, ``--bundle``)::

    .venv/bin/python -m models.lung_nodule.scripts.operating_points /tmp/dev.json --split-mm 8

A rule keeps a finding when its confidence reaches ``small`` (findings whose measured mean diameter is under
``--split-mm``) or ``large`` (the others); ``small == large`` is a single ``min_confidence``. Every rule on a
grid is listed with its sensitivity and false positives per scan, so a threshold can be chosen on development
phantoms (never on the held-out set). Findings that a lower threshold would merge are not re-delineated, so
the figures approximate a rerun at that rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.lung_nodule.scripts.evaluate import SIZE_BINS_MM


def kept(confidence: float, diameter_mm: float, small: float, large: float, split_mm: float) -> bool:
    return confidence >= (small if diameter_mm < split_mm else large)


def operating_point(result: dict, small: float, large: float, split_mm: float) -> dict:
    """Nodules found (overall and by size bin) and false positives per scan under one rule."""
    hits = [r for r in result["per_nodule"] if r["detected"]
            and kept(r["confidence"], r["mean_diameter_mm"], small, large, split_mm)]
    fps = sum(kept(f["confidence"], f["mean_diameter_mm"], small, large, split_mm)
              for c in result["per_case"] for f in c["false_positive_findings"])
    by_size = [sum(lo <= r["diameter_mm"] < hi for r in hits) for lo, hi in SIZE_BINS_MM]
    return {"small": small, "large": large, "found": len(hits), "nodules": len(result["per_nodule"]),
            "by_size": by_size, "fp_per_scan": fps / len(result["per_case"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="evaluate.py JSON files (pooled)")
    parser.add_argument("--split-mm", type=float, default=8.0)
    parser.add_argument("--grid", type=float, nargs=3, default=(0.5, 0.9, 0.05), metavar=("FROM", "TO", "STEP"))
    args = parser.parse_args()
    runs = [json.loads(p.read_text()) for p in args.runs]
    pooled = {"per_nodule": [r for run in runs for r in run["per_nodule"]],
              "per_case": [c for run in runs for c in run["per_case"]]}
    grid = np.round(np.arange(args.grid[0], args.grid[1] + 1e-9, args.grid[2]), 3)
    print(f"{'small':>6} {'large':>6} {'found':>7} {'by size':>16} {'FP/scan':>8}")
    for small in grid:
        for large in grid:
            p = operating_point(pooled, float(small), float(large), args.split_mm)
            sizes = "/".join(str(n) for n in p["by_size"])
            print(f"{small:6.2f} {large:6.2f} {p['found']:3d}/{p['nodules']:<3d} {sizes:>16} {p['fp_per_scan']:8.2f}")


if __name__ == "__main__":
    main()
