"""One PNG summarising a results JSON (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(results: dict[str, Any], path: Path) -> None:
    panels = [
        step
        for step in ("dicom_load", "runners", "throughput", "http_throughput", "overhead", "memory")
        if step in results
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5 * len(panels), 10), 4.2), squeeze=False)
    for ax, step in zip(axes[0], panels, strict=True):
        globals()[f"_{step}"](ax, results[step])
    env = results["environment"]
    fig.suptitle(
        f"radinfer benchmarks on {env['device']} ({env['threads']} thread(s)), torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dicom_load(ax: Any, r: dict[str, Any]) -> None:
    names = list(r["timings"])
    ax.barh(names, [r["timings"][n]["median_s"] for n in names], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("seconds (median, log)")
    s = r["series"]
    ax.set_title(f"DICOM series load, {s['slices']}x{s['rows']}x{s['columns']}", fontsize=9)


def _runners(ax: Any, r: dict[str, Any]) -> None:
    rows = [row for info in r["models"].values() for row in info["batches"].values()]
    kinds = [kind for kind in rows[0]["timings"] if all(kind in row["timings"] for row in rows)]
    labels = [f"{model.split('_')[0]} b{batch}" for model, info in r["models"].items() for batch in info["batches"]]
    width = 0.8 / len(kinds)
    for n, kind in enumerate(kinds):
        values = [row["timings"][kind]["median_s"] * 1000 for row in rows]
        ax.bar([x + (n - (len(kinds) - 1) / 2) * width for x in range(len(labels))], values, width, label=kind)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("ms per batch (median)")
    ax.set_title(f"Runners on {r['device']} ({r['precision']})", fontsize=9)
    ax.legend(fontsize=8)


def _throughput(ax: Any, r: dict[str, Any]) -> None:
    _rps_by_clients(ax, r, "concurrent clients", "requests / s", f"Throughput, {r['model']}")


def _http_throughput(ax: Any, r: dict[str, Any]) -> None:
    _rps_by_clients(ax, r, "concurrent HTTP clients", "requests / s (findings returned)",
                    "HTTP throughput, radinfer serve, bone_age")


def _rps_by_clients(ax: Any, r: dict[str, Any], xlabel: str, ylabel: str, title: str) -> None:
    """Requests per second against concurrent clients, one line for batching off and one for on."""
    for label in ("off", "on"):
        runs = [v for v in r["runs"].values() if v["batching"] == label]
        ax.plot([v["clients"] for v in runs], [v["rps"] for v in runs], marker="o", label=f"batching {label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)


def _overhead(ax: Any, r: dict[str, Any]) -> None:
    names = list(r["timings_s"])
    colours = {"ours_over_http": "tab:olive", "ours_end_to_end": "tab:green", "bare_model": "tab:gray"}
    ax.bar(names, [r["timings_s"][n] for n in names], color=[colours.get(n, "tab:red") for n in names])
    ax.set_ylabel("seconds")
    ax.tick_params(axis="x", labelsize=7)
    s = r["series"]
    ax.set_title(
        f"End to end (HTTP, in process) vs bare model vs MONAI, CT {s['slices']}x{s['rows']}x{s['columns']}",
        fontsize=9,
    )


def _memory(ax: Any, r: dict[str, Any]) -> None:
    rows = r["rows"]
    volume = [row["float32_volume_mib"] for row in rows]
    ax.plot(volume, [row["peak_mib"] for row in rows], marker="o", label="peak RSS")
    ax.plot(volume, [row["growth_mib"] for row in rows], marker="o", label="peak - after model load")
    ax.plot(volume, [row["target_mib"] for row in rows], linestyle="--", label="3 x volume + weights")
    ax.set_xlabel("float32 volume (MiB)")
    ax.set_ylabel("MiB")
    ax.set_title("Peak memory vs study size", fontsize=9)
    ax.legend(fontsize=8)
