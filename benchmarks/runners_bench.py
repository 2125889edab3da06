"""(b) ONNX Runtime vs torch eager vs TorchScript vs torch.compile on the same network, inputs and thread count.

Networks: the bundled models when present are exported by ``radinfer export-onnx``; here MONAI stand-ins of
a similar size (3D UNet sliding-window patch, 2D DenseNet121) with random weights. Outputs are checked to
agree before anything is timed. On a GPU the runners run there (ONNX Runtime with its CUDA provider when the
``gpu`` extra is installed, else on the CPU, as recorded in ``onnx_device``), plus torch under AMP (fp16,
channels-last) and torch.compile with CUDA graphs ("reduce-overhead"): each call's time includes the
host-to-device copy of the input and the copy back. ``first_call_s`` is the first call of each batch size, where
torch.compile compiles (radinfer.json ``compile`` turns it on for a bundle where it measured faster); the quick
run leaves torch.compile out.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import densenet2d, timed, unet3d, weights_bytes
from inference.onnx_export import export_module
from inference.runners import OnnxRunner, TorchRunner, TorchScriptRunner

CPU = torch.device("cpu")


def _cases(quick: bool) -> list[tuple[str, torch.nn.Module, tuple[int, ...], list[int]]]:
    roi = 64 if quick else 96
    return [
        (f"unet3d_{roi}^3", unet3d(small=quick), (1, roi, roi, roi), [1, 4] if not quick else [1, 2]),
        ("densenet121_2d_256^2", densenet2d(), (1, 256, 256), [1, 8] if not quick else [1, 4]),
    ]


def run(*, quick: bool, repeats: int, threads: int, device: torch.device = CPU) -> dict[str, Any]:
    torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    onnx_device = CPU
    for name, net, sample, batches in _cases(quick):
        with tempfile.TemporaryDirectory() as scratch:
            report = export_module(net, sample, Path(scratch) / "m.onnx")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # traced on the device: freezing inlines weights as constants
                traced = torch.jit.freeze(torch.jit.trace(net.to(device), torch.zeros((1, *sample), device=device)))
            runners = {
                "torch": TorchRunner(net, device),
                "torchscript": TorchScriptRunner(traced, device),
                "onnx": OnnxRunner(Path(scratch) / "m.onnx", device, threads=threads),
            }
            if not quick:  # compiling takes 20-100 s per network and batch size on a CPU
                runners["torch_compile"] = TorchRunner(net, device, compile_mode="default")
            if device.type == "cuda":
                runners["torch_amp_fp16"] = TorchRunner(net, device, amp=torch.float16, channels_last=True)
                if not quick:
                    runners["torch_compile_cuda_graphs"] = TorchRunner(net, device, compile_mode="reduce-overhead")
            onnx_device = runners["onnx"].device
            per_batch: dict[str, Any] = {}
            for batch in batches:
                x = torch.randn((batch, *sample), generator=torch.Generator().manual_seed(batch))
                reference = runners["torch"](x)
                timings = {}
                for kind, runner in runners.items():
                    start = time.perf_counter()
                    diff = float((runner(x) - reference).abs().max())  # a compiled runner compiles here
                    first_call_s = time.perf_counter() - start
                    timing = timed(lambda runner=runner, x=x: runner(x), repeats=repeats)
                    timings[kind] = timing.as_dict() | {
                        "max_abs_diff_vs_torch": diff, "first_call_s": round(first_call_s, 3)
                    }
                fastest = min(timings, key=lambda k: timings[k]["median_s"])
                compiled = timings.get("torch_compile")
                per_batch[str(batch)] = {
                    "timings": timings,
                    "fastest": fastest,
                    "torch_over_onnx": timings["torch"]["median_s"] / timings["onnx"]["median_s"],
                    "torch_over_torchscript": timings["torch"]["median_s"]
                    / timings["torchscript"]["median_s"],
                    "torch_over_torch_compile": timings["torch"]["median_s"] / compiled["median_s"]
                    if compiled else None,
                }
            results[name] = {
                "input": list(sample),
                "weights_mib": round(weights_bytes(net) / 2**20, 2),
                "onnx_export_max_abs_diff": report.max_abs_diff,
                "onnx_dynamic_spatial": report.dynamic_spatial,
                "batches": per_batch,
            }
    precision = "fp32" + (", torch_amp_fp16: autocast fp16, channels-last" if device.type == "cuda" else "")
    return {"device": str(device), "onnx_device": str(onnx_device), "threads": threads, "precision": precision,
            "models": results}
