"""One command for every benchmark, run from the repository root: ``python -m benchmarks [--quick] [--only NAME ...]``.

Prints each measured ratio next to its target (benchmarks/RESULTS.md), writes ``benchmarks/out/results.json``
and ``results.png`` (``results-quick.*`` with ``--quick``). ``--quick`` uses smaller series and networks (about
4 minutes on two CPU cores); the full run uses the 220-slice 512x512 series (about 12 minutes, plus 4-5 compiling
for the torch.compile row) and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from typing import Any

import torch

from benchmarks.common import OUT

STEPS = ("dicom_load", "runners", "throughput", "http_throughput", "overhead", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small inputs, no torch.compile row; about 4 minutes on 2 vCPUs")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N (default auto: the first GPU when there is one)"
    )
    parser.add_argument(
        "--runner",
        default="auto",
        choices=("auto", "torch", "torchscript", "onnx"),
        help="runner for the end-to-end bundle (auto: its ONNX export)",
    )
    args = parser.parse_args(argv)
    from inference.device import select_device

    device = select_device(args.device)
    warnings.simplefilter("ignore")  # monai/nvImageCodec and exporter chatter would bury the figures
    OUT.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    started = time.perf_counter()
    results: dict[str, Any] = {"environment": _environment(args, device)}
    for step in args.only:
        step_start = time.perf_counter()
        results[step] = _run_step(step, quick=quick, threads=args.threads, runner=args.runner, device=device)
        results[step]["elapsed_s"] = round(time.perf_counter() - step_start, 1)
        _print_step(step, results[step])
    results["environment"]["total_s"] = round(time.perf_counter() - started, 1)
    stem = "results-quick" if quick else "results"
    (OUT / f"{stem}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    from benchmarks.plots import plot

    plot(results, OUT / f"{stem}.png")
    print(
        f"\nwrote {OUT / f'{stem}.json'} and {OUT / f'{stem}.png'} in {results['environment']['total_s']} s"
    )
    return 0


def _run_step(step: str, *, quick: bool, threads: int, runner: str, device: torch.device) -> dict[str, Any]:
    if step == "dicom_load":
        from benchmarks import dicom_load

        return dicom_load.run(slices=64 if quick else 220, size=512, repeats=3 if quick else 5)
    if step == "runners":
        from benchmarks import runners_bench

        return runners_bench.run(quick=quick, repeats=3 if quick else 7, threads=threads, device=device)
    if step == "throughput":
        from benchmarks import throughput

        return throughput.run(quick=quick, threads=threads, device=device)
    if step == "http_throughput":
        from benchmarks import http_throughput

        return http_throughput.run(quick=quick, threads=threads, device=device)
    if step == "overhead":
        from benchmarks import overhead

        slices, size = (48, 256) if quick else (220, 512)
        return overhead.run(
            quick=quick, slices=slices, size=size, repeats=2, threads=threads, runner=runner, device=device
        )
    from benchmarks import memory, overhead

    bundle = overhead.bench_bundle(quick=quick, export_onnx=runner in ("auto", "onnx"))
    sizes = [(24, 256), (48, 256)] if quick else [(55, 512), (110, 512), (220, 512), (300, 512)]
    return memory.run(sizes=sizes, threads=threads, bundle=bundle, tasks=(overhead.LUNG_BUNDLE,), device=device)


def _environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import onnxruntime

    return {
        "command": " ".join(
            ["python -m benchmarks"] + (["--quick"] if args.quick else []) + ["--only", *args.only]
            + ["--threads", str(args.threads), "--runner", args.runner, "--device", str(device)]
        ),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "python": platform.python_version(),
    }


def _print_step(step: str, result: dict[str, Any]) -> None:
    print(f"\n== {step} ({result['elapsed_s']} s)")
    if step == "dicom_load":
        s = result["series"]
        print(
            f"series {s['slices']}x{s['rows']}x{s['columns']}, {s['bytes'] / 2**20:.0f} MiB in {s['files']} files"
        )
        for name, t in result["timings"].items():
            print(f"  {name:32s} {t['median_s']:8.3f} s (best {t['best_s']:.3f})")
        _print_ratios(result)
    elif step == "runners":
        for model, info in result["models"].items():
            for batch, row in info["batches"].items():
                medians = "  ".join(f"{k} {t['median_s'] * 1000:7.1f} ms" for k, t in row["timings"].items())
                print(
                    f"  {model:22s} batch {batch:>2}: {medians}  fastest {row['fastest']}"
                    f"  torch/onnx {row['torch_over_onnx']:.2f}  torch/ts {row['torch_over_torchscript']:.2f}"
                    + (f"  torch/compiled {row['torch_over_torch_compile']:.2f}"
                       f" (compiling {row['timings']['torch_compile']['first_call_s']:.0f} s)"
                       if row["torch_over_torch_compile"] else "")
                )
    elif step == "http_throughput":
        print(f"  {result['model']}, {result['duration_s_per_run']} s per run, batching on = {result['batching_on']}")
        for run in result["runs"].values():
            print(
                f"  batching {run['batching']:3s} clients {run['clients']:>2}: {run['rps']:6.2f} req/s"
                f"  ({run['requests']} in {run['elapsed_s']} s)  p50 {run['p50_latency_s']} s"
                f"  p95 {run['p95_latency_s']} s  failures {len(run['failures'])}"
            )
            print("    last job stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in run["last_job_stages_s"].items()))
        bare = result["bare_model"]
        print(f"  bare model ({bare['runner']}, input {bare['input']}): {bare['median_s'] * 1000:.1f} ms median; "
              f"Grad-CAM on the same input {bare['attention_map']['median_s'] * 1000:.1f} ms")
        _print_ratios(result)
    elif step == "throughput":
        for run in result["runs"].values():
            print(
                f"  batching {run['batching']:3s} clients {run['clients']:>2}: {run['rps']:6.2f} req/s"
                f"  p50 {run['p50_latency_s'] * 1000:6.0f} ms  mean batch {run['mean_batch']}"
            )
        _print_ratios(result)
    elif step == "overhead":
        print(f"  runner {result['runner']}, model input {result['model_input']}")
        for name, seconds in result["timings_s"].items():
            print(f"  {name:28s} {seconds:8.3f} s")
        print("  our stages: " + ", ".join(f"{k} {v:.2f}" for k, v in result["our_stages_s"].items()))
        print("  HTTP job stages: " + ", ".join(f"{k} {v:.2f}" for k, v in result["http_job_stages_s"].items()))
        for task, row in result["tasks"].items():
            print(
                f"  task {task} ({row['runner']}, model input {row['model_input']}): over HTTP "
                f"{row['timings_s']['ours_over_http']:.2f} s, bare model {row['timings_s']['bare_model']:.2f} s, "
                f"ratio {row['http_over_bare_model']:.2f} (target <= 1.15)"
            )
            print("    HTTP job stages: " + ", ".join(f"{k} {v:.2f}" for k, v in row["http_job_stages_s"].items()))
        print("  MONAI stages: " + ", ".join(f"{k} {v:.2f}" for k, v in result["monai_stages_s"].items()))
        _print_ratios(result)
    elif step == "memory":
        named = [(result["bundle"], row) for row in result["rows"]] + list(result.get("tasks", {}).items())
        for name, row in named:
            print(
                f"  {name} {row['slices']:>3}x{row['size']}: volume {row['float32_volume_mib']:7.1f} MiB, peak RSS "
                f"{row['peak_mib']:7.1f} MiB, growth {row['growth_mib']:7.1f} MiB = "
                f"{row['growth_over_target']:.2f} x target (3 x volume + weights)"
            )
            stages = row.get("stage_growth_mib", {})
            print("    growth by stage (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()))


def _print_ratios(result: dict[str, Any]) -> None:
    targets = result.get("targets", {})
    for name, value in result["ratios"].items():
        target = f"  (target {targets[name]})" if name in targets else ""
        print(f"  ratio {name:28s} {value:7.2f}{target}")


if __name__ == "__main__":
    raise SystemExit(main())
