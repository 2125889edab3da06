"""Export a bundle's network to ``models/model.onnx`` and check ONNX Runtime agrees with PyTorch.

The export has a dynamic batch axis, and dynamic spatial axes when the exported graph still agrees with
torch on a second, larger input (else the spatial size is fixed to the network's input size, which is all
a sliding-window inferer ever feeds it). Agreement is checked on the CPU in float32 with random inputs:
``max |onnx - torch| <= tolerance * max(1, max |torch|)`` (default tolerance 1e-4).

A sidecar ``models/model.onnx.json`` records the sha256 of the source weights and of the ONNX file, the
measured difference and the tolerance; ``Bundle.load`` uses the ONNX file only when the sidecar matches
the weights it verified, so a stale export is never served.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from inference.errors import BundleError
from inference.hashing import sha256_file

if TYPE_CHECKING:
    from inference.bundle import Bundle

ONNX_FILE = "models/model.onnx"
SIDECAR_FILE = "models/model.onnx.json"
DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"


@dataclass
class ExportReport:
    path: str
    source_sha256: str
    onnx_sha256: str
    opset: int
    dynamic_spatial: bool
    checked_shapes: list[list[int]]
    max_abs_diff: float
    max_scaled_diff: float  # max_abs_diff over max(1, max |torch|): what ``tolerance`` bounds
    tolerance: float
    torch_version: str
    onnxruntime_version: str


def export_bundle(
    bundle: Bundle, *, tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET
) -> ExportReport:
    """Export ``bundle``'s network to its ``models/model.onnx`` and verify it.

    The network is loaded afresh on the CPU, so a bundle that is serving is not touched. Raises BundleError
    when ONNX Runtime's outputs differ from torch by more than the tolerance; no file is left behind then.
    """
    from inference.bundle import Bundle  # at call time: inference.bundle imports this module

    fresh = Bundle(bundle.path)
    fresh.load(torch.device("cpu"), runner="torch")
    shape = (fresh.input_channels(), *fresh.input_spatial_shape())
    target = fresh.path / ONNX_FILE
    report = export_module(
        fresh.network.eval(), shape, target, tolerance=tolerance, opset=opset, name=fresh.name
    )
    report.source_sha256 = fresh.weights_sha256
    # the path inside the bundle, so the record holds for a bundle copied, mounted or shipped in the repository
    record = asdict(report) | {"path": ONNX_FILE}
    (fresh.path / SIDECAR_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return report


def export_module(
    module: torch.nn.Module,
    sample_shape: tuple[int, ...],
    target: Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    name: str = "model",
) -> ExportReport:
    """Export ``module`` for inputs (batch, *sample_shape) to ``target`` and check it against torch."""
    import onnxruntime

    larger = (sample_shape[0], *(2 * s for s in sample_shape[1:]))
    checks = [(1, *sample_shape), (3, *sample_shape)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        candidate = Path(scratch) / "model.onnx"
        _export(module, (1, *sample_shape), candidate, dynamic_spatial=True, opset=opset)
        dynamic = _difference(module, candidate, [(2, *larger)])[1] <= tolerance
        if dynamic:
            checks.append((2, *larger))
        else:
            _export(module, (1, *sample_shape), candidate, dynamic_spatial=False, opset=opset)
        max_abs, scaled = _difference(module, candidate, checks)
        if scaled > tolerance:
            raise BundleError(
                f"Bundle {name!r}: ONNX Runtime differs from torch by {max_abs:.3g} ({scaled:.3g} of the "
                f"output scale, tolerance {tolerance:g}) for inputs {checks}; the network may use an operator "
                "the exporter does not translate faithfully: keep the torch runner for it."
            )
        os.replace(candidate, target)
    return ExportReport(
        path=str(target),
        source_sha256="",
        onnx_sha256=sha256_file(target),
        opset=opset,
        dynamic_spatial=dynamic,
        checked_shapes=[list(s) for s in checks],
        max_abs_diff=max_abs,
        max_scaled_diff=scaled,
        tolerance=tolerance,
        torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__,
    )


def verified_onnx(bundle_path: Path, weights_sha256: str) -> tuple[Path | None, str]:
    """``(path, "")`` when the bundle's ONNX export matches ``weights_sha256``, else ``(None, reason)``."""
    onnx_path, sidecar = bundle_path / ONNX_FILE, bundle_path / SIDECAR_FILE
    if not onnx_path.is_file():
        return None, f"no {ONNX_FILE}"
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None, f"{SIDECAR_FILE} is missing or not JSON; run `radinfer export-onnx` again"
    if record.get("source_sha256") != weights_sha256:
        return None, f"{ONNX_FILE} was exported from other weights; run `radinfer export-onnx` again"
    if record.get("onnx_sha256") != sha256_file(onnx_path):
        return None, f"{ONNX_FILE} does not match the sha256 in {SIDECAR_FILE}; export it again"
    return onnx_path, ""


def export_onnx_command(
    model: str,
    models_dirs: list[Path],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
) -> ExportReport:
    """What ``radinfer export-onnx MODEL`` runs: find bundle ``model`` under ``models_dirs``, export, verify.

    Raises ModelNotFoundError for an unknown name and BundleError when the check fails.
    """
    from inference.registry import Registry

    bundle = Registry(models_dirs).get(model)
    return export_bundle(bundle, tolerance=tolerance, opset=opset)




def _export(
    module: torch.nn.Module, shape: tuple[int, ...], path: Path, *, dynamic_spatial: bool, opset: int
) -> None:
    axes = {0: "batch"} | ({d: f"d{d}" for d in range(2, len(shape))} if dynamic_spatial else {})
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: the torch.export one needs onnxscript and fails on MONAI's
        # data-dependent branches. It warns about its own deprecation and about eval-mode instance norm.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
        )


def _difference(module: torch.nn.Module, path: Path, shapes: list[tuple[int, ...]]) -> tuple[float, float]:
    """(max |onnx - torch|, the same divided by max(1, max |torch|)) over random inputs of ``shapes``;
    infinite when ONNX Runtime rejects a shape (a fixed-size export) or returns another shape."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    max_abs = scaled = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        with torch.inference_mode():
            expected = module(x).float().numpy()
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        except Exception:  # noqa: BLE001 - onnxruntime raises its own types for shape mismatches
            return float("inf"), float("inf")
        if got.shape != expected.shape:
            return float("inf"), float("inf")
        diff = float(np.max(np.abs(got - expected)))
        max_abs = max(max_abs, diff)
        scaled = max(scaled, diff / max(1.0, float(np.max(np.abs(expected)))))
    return max_abs, scaled
