"""Stage times of our CT pipeline on one synthetic series, optionally under cProfile.

``python -m benchmarks.stages SLICES [--size 512] [--cprofile]``: the quick-size stand-in bundle (UNet
8-16-32-64, roi 64) with the torch runner and one thread; prints ``TaskContext.timings_s`` and, with
``--cprofile``, the 25 functions with the most own time. For finding where time goes, not for ratios.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.common import OUT, ct_series, write_ct_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__)
    parser.add_argument("slices", type=int)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from dicom_io.limits import Limits
    from inference.engine import Engine
    from inference.pipeline import analyze
    from inference.registry import Registry

    torch.set_num_threads(1)
    paths = ct_series(args.slices, args.size)
    root = OUT / "stage-bundles"
    shutil.rmtree(root, ignore_errors=True)  # rewritten every run, as write_bundle wants a new folder
    bundle_path = write_ct_bundle(root, small=True, roi=64)
    engine = Engine(Registry([root]), "cpu")
    engine.registry.get(bundle_path.name).radinfer["runner"] = "torch"
    engine.load_all()
    profile = cProfile.Profile() if args.cprofile else None
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        if profile:
            profile.enable()
        report = analyze(
            [paths[0].parent], engine, model=bundle_path.name, limits=Limits(), workdir=Path(work)
        )
        if profile:
            profile.disable()
        elapsed = time.perf_counter() - start
    print(f"total {elapsed:.2f} s, {len(report.findings)} findings")
    print("stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in report.timings_s.items()))
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
