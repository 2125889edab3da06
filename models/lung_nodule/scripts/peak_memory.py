"""Peak resident memory of the lung-nodule task on a full-size chest phantom (default 300 x 512 x 512).

Run from the repository root::

    .venv/bin/python -m models.lung_nodule.scripts.peak_memory --slices 300

The phantom (with nodules) is written as DICOM by this process; a fresh child process then loads the bundle,
runs ``pipeline.analyze`` once and reports its VmHWM (peak RSS of its own address space), its RSS after
imports and model loading, the largest RSS growth sampled in each pipeline stage, and the float32 size of
the volume, as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this script needs Linux.")


def child(series: Path, threads: int) -> dict:
    import threading
    import time

    import torch

    from dicom_io.limits import Limits
    from inference.engine import Engine
    from inference.pipeline import analyze
    from inference.registry import Registry

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="lung-mem-") as work:
        (Path(work) / "models").mkdir()
        (Path(work) / "models" / BUNDLE.name).symlink_to(BUNDLE)
        engine = Engine(Registry([Path(work) / "models"]), "cpu")
        engine.load_all()
        baseline = _rss_kib("VmRSS")
        stage, stage_peaks, running = ["start"], {}, threading.Event()

        def sample() -> None:  # RSS every 5 ms per pipeline stage (short spikes can be missed)
            while not running.is_set():
                stage_peaks[stage[0]] = max(stage_peaks.get(stage[0], 0), _rss_kib("VmRSS"))
                time.sleep(0.005)

        def progress(name: str, fraction: float | None) -> None:
            if fraction is None:
                stage[0] = name

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        report = analyze([series], engine, model=BUNDLE.name, limits=Limits(), workdir=Path(work) / "job",
                         progress=progress)
        running.set()
        sampler.join()
    return {"baseline_mib": round(baseline / 1024, 1), "peak_mib": round(_rss_kib("VmHWM") / 1024, 1),
            "stage_growth_mib": {k: round((v - baseline) / 1024, 1) for k, v in stage_peaks.items()},
            "findings": len(report.findings), "task_s": report.timings_s.get("task_total")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.threads)))
        return
    from dicom_io.synthetic import write_ct_series
    from models.lung_nodule.scripts.phantom import generate_phantom

    with tempfile.TemporaryDirectory(prefix="lung-mem-series-") as folder:
        phantom = generate_phantom(7, shape=(args.slices, args.size, args.size), spacing=(1.0, 0.7, 0.7),
                                   n_nodules=4)
        write_ct_series(phantom.hu, Path(folder), spacing=phantom.spacing, origin=phantom.origin)
        shape = phantom.hu.shape
        del phantom
        done = subprocess.run([sys.executable, "-m", "models.lung_nodule.scripts.peak_memory", "--threads",
                               str(args.threads), "--child", folder], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    volume_mib = shape[0] * shape[1] * shape[2] * 4 / 2**20
    print(json.dumps({"shape": list(shape), "float32_volume_mib": round(volume_mib, 1), **result,
                      "peak_over_volume": round(result["peak_mib"] / volume_mib, 2)}))


if __name__ == "__main__":
    main()
