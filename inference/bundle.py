"""One MONAI bundle on disk: configuration, safely loaded weights, runner and parsed components.

Layout (MONAI bundle convention plus our ``configs/radinfer.json``)::

    <name>/configs/metadata.json     version, network_data_format (input channels / spatial shape)
    <name>/configs/inference.json    network_def, preprocessing, inferer, postprocessing (ConfigParser syntax)
    <name>/configs/radinfer.json     task, selection rules, intended use, synthetic flag, optional weights pin
    <name>/models/model.pt           state_dict (or {"model"|"state_dict": state_dict}); or models/model.ts
    <name>/scripts/                  bundle-local Python referenced as ``scripts.<module>.<Class>``

Weights are read with ``torch.load(weights_only=True)`` (tensors only, never arbitrary objects) or
``torch.jit.load``. Note that ``$`` expressions and ``scripts`` in a bundle's configuration are Python code
run by MONAI's ConfigParser: only install bundles you trust, like any other code. A bundle's ``scripts``
package is importable only while its components are instantiated (``Bundle.imports``), so bundle code must
import what it needs at module level; the top-level name ``scripts`` is reserved for bundles.

``LoadImage(d)`` and ``SaveImage(d)`` are removed from every transform list at read time: radinfer decodes
DICOM itself and hands transforms a MetaTensor (see ``inference.tasks.segmentation.volume_to_metatensor``);
results are written by tasks, not by the bundle.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from inference.cuda import OomRetryRunner, amp_dtype, synchronize, use_channels_last
from inference.errors import BundleError
from inference.hashing import sha256_file
from inference.onnx_export import ONNX_FILE, verified_onnx
from inference.runners import (
    OnnxRunner,
    Runner,
    TorchRunner,
    TorchScriptRunner,
    compile_mode,
    onnx_runs_on,
)

log = logging.getLogger(__name__)
IO_TRANSFORMS = frozenset({"LoadImage", "LoadImaged", "SaveImage", "SaveImaged"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WEIGHT_FILES = ("models/model.pt", "models/model.ts")
_STATE_DICT_KEYS = ("model", "state_dict")
RUNNER_KINDS = ("auto", "torch", "torchscript", "onnx")
# sys.path / sys.modules are process-global: one bundle's ``scripts`` package is importable at a time.
_IMPORT_LOCK = threading.RLock()


class Bundle:
    """A bundle read from ``path``. Configuration is read at construction; ``load()`` reads the weights.

    ``expected_sha256`` pins the weights file (besides an optional ``weights_sha256`` in radinfer.json);
    a mismatch raises BundleError at ``load()``.
    """

    def __init__(self, path: Path, *, expected_sha256: str | None = None) -> None:
        self.path = Path(path).resolve()
        self.name = self.path.name
        self.metadata: dict[str, Any] = _read_json(self.path / "configs" / "metadata.json", self.name)
        self.radinfer: dict[str, Any] = _read_json(self.path / "configs" / "radinfer.json", self.name)
        self.version = str(self.metadata.get("version", "0.0.0"))
        self.task = self._require("task", str)
        self.intended_use = self._require("intended_use", str)
        self.trained_on_synthetic_data = self._require("trained_on_synthetic_data", bool)
        self._pins = {
            source: _normalise_sha256(value, self.name, source)
            for source, value in (
                ("radinfer.json", self.radinfer.get("weights_sha256")),
                ("caller", expected_sha256),
            )
            if value
        }
        self.weights_path = self._find_weights()
        self.parser = self._read_inference_config()
        self.device = torch.device("cpu")
        self.weights_sha256: str | None = None
        self.network: torch.nn.Module | None = None
        self.runner: Runner | None = None

    def __repr__(self) -> str:
        return f"Bundle({self.name!r}, version={self.version!r}, task={self.task!r})"

    @property
    def loaded(self) -> bool:
        return self.runner is not None

    @property
    def runs_on(self) -> torch.device:
        """Where the network really runs: the runner's device once loaded (an ONNX Runtime session without a
        working CUDA provider runs on the CPU, whatever device was asked for), else the configured device."""
        return getattr(self.runner, "device", self.device)

    # -- configuration -------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The instantiated component ``key`` of inference.json (cached), or ``default`` when absent."""
        if key not in self.parser:
            return default
        with self.imports():
            try:
                return self.parser.get_parsed_content(key)
            except Exception as exc:
                raise BundleError(
                    f"Bundle {self.name!r}: configs/inference.json key {key!r} could not be instantiated "
                    f"({type(exc).__name__}: {exc}); fix that entry."
                ) from exc

    @contextmanager
    def imports(self) -> Iterator[None]:
        """Make this bundle's ``scripts`` package importable (and no other bundle's) inside the block."""
        root = str(self.path)
        with _IMPORT_LOCK:
            _purge_scripts_modules()
            sys.path.insert(0, root)
            try:
                yield
            finally:
                sys.path.remove(root)
                _purge_scripts_modules()

    # -- weights -------------------------------------------------------------------------------------

    def load(self, device: torch.device, *, runner: str | None = None) -> None:
        """Verify the weights hash, build the network on ``device`` and create its runner.

        ``runner`` (else radinfer.json ``runner``, default ``"auto"``): ``"torch"``, ``"torchscript"``
        (``models/model.ts``, or the network traced at its input size), ``"onnx"`` (``models/model.onnx``
        from ``radinfer export-onnx``, required) or ``"auto"`` (the ONNX export when it matches these weights
        and ONNX Runtime can run on ``device``, else torch).
        """
        kind = runner or str(self.radinfer.get("runner", "auto"))
        if kind not in RUNNER_KINDS:
            raise BundleError(
                f"Bundle {self.name!r}: runner {kind!r} is unknown; use one of {', '.join(RUNNER_KINDS)}."
            )
        self.weights_sha256 = sha256_file(self.weights_path)
        for source, expected in self._pins.items():
            if expected != self.weights_sha256:
                raise BundleError(
                    f"Bundle {self.name!r}: {self.weights_path.name} has sha256 {self.weights_sha256} but "
                    f"{source} pins {expected}; restore the pinned weights file or update the pin."
                )
        self.device = device
        self.parser["device"] = f"$torch.device({str(device)!r})"  # resets the parser's cache
        amp = amp_dtype(self.radinfer.get("amp", False), device)
        compiled = compile_mode(self.radinfer.get("compile"))  # checked whichever runner is chosen
        if self.weights_path.suffix == ".ts":
            try:
                module = torch.jit.load(str(self.weights_path), map_location=device)
            except RuntimeError as exc:
                raise BundleError(
                    f"Bundle {self.name!r}: {self.weights_path} is not a loadable TorchScript archive "
                    f"({exc}); "
                    "re-export it with torch.jit.save."
                ) from exc
        else:
            module = self.get("network_def")
            if not isinstance(module, torch.nn.Module):
                raise BundleError(
                    f"Bundle {self.name!r}: configs/inference.json 'network_def' must build a "
                    "torch.nn.Module, "
                    f"got {type(module).__name__}."
                )
            self._load_state_dict(module)
        options = {
            "amp": amp,
            "channels_last": use_channels_last(
                self.radinfer.get("channels_last"), device, module, amp is not None
            ),
        }
        onnx_path, why_not = verified_onnx(self.path, self.weights_sha256)
        if kind == "onnx" and onnx_path is None:
            raise BundleError(
                f"Bundle {self.name!r}: runner 'onnx' was requested but {why_not}; run "
                f"`radinfer export-onnx {self.name}`."
            )
        if kind == "auto" and onnx_path is None and (self.path / ONNX_FILE).is_file():
            # e.g. real weights dropped into a bundle that shipped an export of its phantom weights
            log.warning(
                "bundle %s: %s; serving it with torch until `radinfer export-onnx %s`", self.name, why_not, self.name
            )
        use_onnx = onnx_path is not None and (kind == "onnx" or (kind == "auto" and onnx_runs_on(device)))
        built: Runner | None = self._onnx_runner(onnx_path, device, kind, fp16=amp is not None) if use_onnx else None
        if built is not None:
            module = module.to(device).eval()
        elif isinstance(module, torch.jit.ScriptModule):
            built = TorchScriptRunner(module, device, **options)
        elif kind == "torchscript":
            built = TorchScriptRunner(self._trace(module), device, **options)
        else:
            built = TorchRunner(module, device, compile_mode=compiled, **options)
        self.network = getattr(built, "module", module)
        self.runner = OomRetryRunner(built) if device.type == "cuda" else built

    def _onnx_runner(self, onnx_path: Path, device: torch.device, kind: str, *, fp16: bool) -> OnnxRunner | None:
        """The ONNX Runtime runner; None when ``kind`` is "auto" and its session fell back to the CPU on a GPU
        device (the CUDA provider is in the build but did not load, e.g. CUDA or cuDNN libraries missing):
        torch then runs on the GPU instead of ONNX Runtime leaving it idle."""
        runner = OnnxRunner(
            onnx_path,
            device,
            tensorrt=bool(self.radinfer.get("onnx_tensorrt", False)),
            fp16=fp16,
            cache_dir=self._tensorrt_cache(),
        )
        if kind == "auto" and runner.device != device:
            log.warning("bundle %s: ONNX Runtime could not run on %s; using the torch runner", self.name, device)
            return None
        return runner

    def _tensorrt_cache(self) -> Path:
        """Where TensorRT keeps its built engines: next to the weights, or a temporary folder named by the weights'
        hash when the bundle folder is read-only (a mounted bundle; the Docker image's models, owned by root)."""
        beside = self.path / "models"
        if os.access(beside, os.W_OK):
            return beside / "trt_cache"
        tag = (self.weights_sha256 or "unhashed")[:16]
        return Path(tempfile.gettempdir()) / "radinfer-trt-cache" / f"{self.name}-{tag}"

    def _trace(self, module: torch.nn.Module) -> torch.jit.ScriptModule:
        """``module`` traced and frozen on this bundle's device: freezing inlines the weights as constants, which
        a later ``.to(device)`` would not move."""
        example = torch.zeros((1, self.input_channels(), *self.input_spatial_shape()), device=self.device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks inside MONAI/torch layers
            return torch.jit.freeze(torch.jit.trace(module.to(self.device).eval(), example))

    def _load_state_dict(self, network: torch.nn.Module) -> None:
        try:
            checkpoint = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError for full pickled modules or unknown globals
            raise BundleError(
                f"Bundle {self.name!r}: {self.weights_path} cannot be read with "
                "torch.load(weights_only=True) "
                f"({type(exc).__name__}); save a state_dict with torch.save(model.state_dict(), path)."
            ) from exc
        for key in _STATE_DICT_KEYS:
            if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
        if not isinstance(checkpoint, dict):
            raise BundleError(
                f"Bundle {self.name!r}: {self.weights_path} holds a {type(checkpoint).__name__}, "
                "not a state_dict."
            )
        try:
            network.load_state_dict(checkpoint, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise BundleError(
                f"Bundle {self.name!r}: {self.weights_path.name} does not match 'network_def' ({detail}); "
                "check the network parameters in configs/inference.json."
            ) from exc

    # -- warm-up -------------------------------------------------------------------------------------

    def warmup(self) -> float:
        """Run one dummy batch of the network's input size (first CUDA call, autotune); return seconds."""
        if self.runner is None:
            raise BundleError(f"Bundle {self.name!r} must be loaded before warm-up.")
        shape = (1, self.input_channels(), *self.input_spatial_shape())
        start = time.perf_counter()
        self.runner(torch.zeros(shape, dtype=torch.float32))
        synchronize(self.device)
        return time.perf_counter() - start

    def input_channels(self) -> int:
        declared = self._input_format().get("num_channels")
        if isinstance(declared, int):
            return declared
        in_channels = self.parser.get("network_def", {}).get("in_channels", 1)
        return in_channels if isinstance(in_channels, int) else 1

    def output_channels(self) -> int:
        """The network's declared output channels (metadata's ``num_channels`` of its first output, else
        ``network_def.out_channels``); 2 when neither is an integer."""
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        first = next(iter(outputs.values()), {}) if isinstance(outputs, dict) else {}
        declared = first.get("num_channels") if isinstance(first, dict) else None
        if not isinstance(declared, int):
            network = self.parser.get("network_def", {})
            declared = network.get("out_channels") if isinstance(network, dict) else None
        return declared if isinstance(declared, int) and declared > 0 else 2

    def input_spatial_shape(self) -> tuple[int, ...]:
        """The network's input size: the inferer's ``roi_size``, metadata's ``spatial_shape`` or
        radinfer.json's ``input_size``, the first that is a list of positive integers."""
        candidates = [
            getattr(self.get("inferer"), "roi_size", None),
            self._input_format().get("spatial_shape"),
            self.radinfer.get("input_size"),
        ]
        for shape in candidates:
            if (
                isinstance(shape, (list, tuple))
                and shape
                and all(isinstance(v, int) and v > 0 for v in shape)
            ):
                return tuple(shape)
        raise BundleError(
            f"Bundle {self.name!r}: cannot tell the network's input size; set integer "
            "network_data_format.inputs.<name>.spatial_shape in metadata.json or 'input_size' in "
            "radinfer.json."
        )

    def _input_format(self) -> dict[str, Any]:
        inputs = self.metadata.get("network_data_format", {}).get("inputs", {})
        first = next(iter(inputs.values()), {}) if isinstance(inputs, dict) else {}
        return first if isinstance(first, dict) else {}

    # -- reading -------------------------------------------------------------------------------------

    def _require(self, key: str, kind: type) -> Any:
        value = self.radinfer.get(key)
        if not isinstance(value, kind):
            raise BundleError(
                f"Bundle {self.name!r}: configs/radinfer.json needs {key!r} as a {kind.__name__}, "
                f"got {value!r}."
            )
        return value

    def _find_weights(self) -> Path:
        for relative in _WEIGHT_FILES:
            if (self.path / relative).is_file():
                return self.path / relative
        raise BundleError(
            f"Bundle {self.name!r}: no weights at {self.path}/models/model.pt or models/model.ts."
        )

    def _read_inference_config(self) -> ConfigParser:
        config_path = next(
            (
                p
                for p in (self.path / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml"))
                if p.is_file()
            ),
            None,
        )
        if config_path is None:
            raise BundleError(f"Bundle {self.name!r}: configs/inference.json is missing.")
        try:
            config = ConfigParser.load_config_file(config_path)
        except Exception as exc:
            raise BundleError(f"Bundle {self.name!r}: {config_path.name} is not valid ({exc}).") from exc
        parser = ConfigParser()
        parser.read_meta(self.metadata)
        parser.read_config(strip_io_transforms(config))
        parser["bundle_root"] = str(self.path)
        parser["device"] = "$torch.device('cpu')"
        return parser


def strip_io_transforms(config: Any) -> Any:
    """Return ``config`` without list entries whose ``_target_`` is LoadImage(d) or SaveImage(d)."""
    if isinstance(config, dict):
        return {key: strip_io_transforms(value) for key, value in config.items()}
    if isinstance(config, list):
        return [strip_io_transforms(item) for item in config if not _is_io_transform(item)]
    return config


def _is_io_transform(item: Any) -> bool:
    target = item.get("_target_") if isinstance(item, dict) else None
    return isinstance(target, str) and target.rsplit(".", 1)[-1] in IO_TRANSFORMS


def _purge_scripts_modules() -> None:
    for module in [m for m in list(sys.modules) if m == "scripts" or m.startswith("scripts.")]:  # list(): threads import
        del sys.modules[module]


def _read_json(path: Path, bundle: str) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"Bundle {bundle!r}: {path.name} is missing at {path}.")
    try:
        content = ConfigParser.load_config_file(path)
    except Exception as exc:
        raise BundleError(f"Bundle {bundle!r}: {path} is not valid JSON ({exc}).") from exc
    if not isinstance(content, dict):
        raise BundleError(f"Bundle {bundle!r}: {path} must hold a JSON object.")
    return content


def _normalise_sha256(value: Any, bundle: str, source: str) -> str:
    text = str(value).strip().lower()
    if not _SHA256.match(text):
        raise BundleError(
            f"Bundle {bundle!r}: the weights_sha256 pin from {source} is not 64 hex digits: {value!r}."
        )
    return text




def write_bundle(
    path: Path,
    *,
    metadata: dict[str, Any],
    inference: dict[str, Any],
    radinfer: dict[str, Any],
    state_dict: dict[str, Any] | None = None,
    readme: str | None = None,
) -> Path:
    """Lay out a bundle folder: ``configs/{metadata,inference,radinfer}.json``, ``models/model.pt`` (when
    ``state_dict`` is given) and ``docs/README.md`` (when ``readme`` is). For training scripts, tests and benchmarks."""
    (path / "configs").mkdir(parents=True)
    (path / "models").mkdir()
    for name, content in (("metadata.json", metadata), ("inference.json", inference), ("radinfer.json", radinfer)):
        (path / "configs" / name).write_text(json.dumps(content, indent=1))
    if state_dict is not None:
        torch.save(state_dict, path / "models" / "model.pt")
    if readme is not None:
        (path / "docs").mkdir()
        (path / "docs" / "README.md").write_text(readme)
    return path
