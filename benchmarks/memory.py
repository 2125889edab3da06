"""(e) Peak resident memory against study size: one fresh subprocess per size runs the whole pipeline.

Reported per size: peak RSS of the process (VmHWM), RSS after imports and model loading (the baseline), the
growth ``peak - baseline`` against the target ``3 x float32 volume + weights``, and the largest RSS growth
sampled during each pipeline stage (where the peak happens).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import OUT, ct_series

if TYPE_CHECKING:
    import torch


def run(
    *, sizes: list[tuple[int, int]], threads: int, bundle: Path, device: torch.device, tasks: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """``bundle`` at every size; each shipped task bundle in ``tasks`` at the largest size (its own outputs). On a
    GPU the host figures are the same measure (the volume is decoded and post-processed in host memory) and
    ``gpu_peak_mib`` adds PyTorch's peak device allocation."""
    rows = [_measure(slices, size, threads, bundle, str(device)) for slices, size in sizes]
    largest = max(sizes, key=lambda s: s[0] * s[1] * s[1])
    measured = {task.name: _measure(*largest, threads, task, str(device)) for task in tasks}
    return {"device": str(device), "threads": threads, "bundle": bundle.name, "rows": rows, "tasks": measured}


def _measure(slices: int, size: int, threads: int, bundle: Path, device: str) -> dict[str, Any]:
    ct_series(slices, size)  # written here, outside the measured process
    command = [sys.executable, "-m", "benchmarks.memory", str(slices), str(size), str(threads), str(bundle), device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    volume_mib = slices * size * size * 4 / 2**20
    return row | {
        "float32_volume_mib": round(volume_mib, 1),
        "target_mib": round(3 * volume_mib + row["weights_mib"], 1),
        "growth_over_target": round(row["growth_mib"] / (3 * volume_mib + row["weights_mib"]), 3),
    }


def _child(slices: int, size: int, threads: int, bundle: Path, device: str) -> dict[str, Any]:
    import psutil
    import torch

    from dicom_io.limits import Limits
    from inference.engine import Engine
    from inference.pipeline import analyze
    from inference.registry import Registry

    torch.set_num_threads(threads)
    paths = ct_series(slices, size)
    engine = Engine(Registry([bundle.parent]), device)
    engine.load_all()
    loaded = engine.registry.get(bundle.name)
    weights = sum(p.numel() * p.element_size() for p in loaded.network.parameters())
    process = psutil.Process()
    baseline = process.memory_info().rss
    stage_peaks: dict[str, int] = {}
    current = ["start"]
    running = threading.Event()
    running.set()

    def sample() -> None:  # RSS every 5 ms, kept per pipeline stage (approximate: short spikes can be missed)
        while running.is_set():
            rss = process.memory_info().rss
            stage_peaks[current[0]] = max(stage_peaks.get(current[0], 0), rss)
            time.sleep(0.005)

    def progress(stage: str, fraction: float | None) -> None:
        if fraction is None:
            current[0] = stage

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory(dir=OUT) as work:
        analyze(
            [paths[0].parent],
            engine,
            model=bundle.name,
            limits=Limits(),
            workdir=Path(work),
            progress=progress,
        )
    running.clear()
    sampler.join()
    peak = _high_water_mark()
    return {
        "slices": slices,
        "size": size,
        "runner": loaded.runner.name,
        "baseline_mib": round(baseline / 2**20, 1),
        "peak_mib": round(peak / 2**20, 1),
        "growth_mib": round((peak - baseline) / 2**20, 1),
        "weights_mib": round(weights / 2**20, 2),
        "stage_growth_mib": {name: round((rss - baseline) / 2**20, 1) for name, rss in stage_peaks.items()},
    } | ({"gpu_peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)} if device.startswith("cuda") else {})


def _high_water_mark() -> int:
    """Peak RSS of this process image in bytes. Linux's ``ru_maxrss`` also counts the parent's RSS at
    fork (kept across exec), so read VmHWM, which belongs to the current address space only."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; bytes on macOS


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    slices_arg, size_arg, threads_arg, bundle_arg, device_arg = sys.argv[1:6]
    print(json.dumps(_child(int(slices_arg), int(size_arg), int(threads_arg), Path(bundle_arg), device_arg)))
