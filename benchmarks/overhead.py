"""(d) Serving overhead: our end to end over bare model time on the same tensors, and over the conventional
MONAI path on the same files.

- the shipped lung_nodule task the same way over HTTP (its runner, its findings, SEG, SR and key images)
  against its bare model: the per-task figure for CT.
- ours over HTTP: a real ``radinfer serve`` (subprocess, one worker, same thread count) serving the stand-in
  bundle; from the first byte of ``POST /v1/studies?model=...&wait=...`` with the series as one zip (stored,
  built before the clock starts) to the findings in the response: upload to disk, unpack, header pass, job
  store, the whole task, report. This is the figure the issue's target is for.
- ours in process: ``inference.pipeline.analyze`` on the files (header pass, routing, build_volume, the
  bundle's preprocessing, sliding window through the bundle's default runner, postprocessing, components,
  findings, mask.npz): the same work without HTTP and the job store.
- bare model: only ``inferer(image, runner)`` on the already preprocessed tensor, same runner, the tensor placed
  where a job places it (``segmentation.model_output``: on a GPU, there when the job fits).
- plain MONAI: the bundle's inference.json as written (LoadImaged with PydicomReader, preprocessing,
  SlidingWindowInferer with the eager torch network, postprocessing with Invertd), no file output.
"""

from __future__ import annotations

import http.client
import io
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import OUT, ct_series, write_ct_bundle

LUNG_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "lung_nodule"


def bench_bundle(*, quick: bool, export_onnx: bool) -> Path:
    """The stand-in CT bundle under benchmarks/out/bundles (rewritten every run), exported to ONNX if asked."""
    root = OUT / "bundles"
    shutil.rmtree(root, ignore_errors=True)
    path = write_ct_bundle(root, small=quick, roi=64 if quick else 96)
    if export_onnx:
        from inference.onnx_export import export_onnx_command

        export_onnx_command(path.name, [root])
    return path


def run(
    *, quick: bool, slices: int, size: int, repeats: int, threads: int, runner: str, device: torch.device
) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    from dicom_io.limits import Limits
    from dicom_io.reader import read_headers
    from dicom_io.volume import build_volume
    from inference.engine import Engine
    from inference.pipeline import analyze
    from inference.registry import Registry

    torch.set_num_threads(threads)
    paths = ct_series(slices, size)
    volume = build_volume(read_headers(list(paths), Limits()).series[0], Limits())  # for the bare models
    body = _zip(paths)  # the HTTP uploads
    bundle_path = bench_bundle(quick=quick, export_onnx=runner in ("auto", "onnx"))
    engine = Engine(Registry([bundle_path.parent]), device)
    bundle = engine.registry.get(bundle_path.name)
    bundle.radinfer["runner"] = runner
    engine.load_all()

    ours_times, stages = [], {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            report = analyze(
                [paths[0].parent], engine, model=bundle.name, limits=Limits(), workdir=Path(work)
            )
            ours_times.append(time.perf_counter() - start)
            stages = report.timings_s

    bare_times, image = _bare_model(bundle, volume, repeats)
    inferer = bundle.get("inferer")

    parser = ConfigParser()
    parser.read_config(str(bundle_path / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle_path / "models" / "model.pt", weights_only=True))
    network.to(device).eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    monai_inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")
    monai_times, monai_stages = [], {}
    for _ in range(max(1, repeats - 1)):
        stamps = [time.perf_counter()]
        with torch.no_grad():
            data = preprocessing({"image": str(paths[0].parent)})
            stamps.append(time.perf_counter())
            data["pred"] = monai_inferer(data["image"][None].to(device), network)[0]
            stamps.append(time.perf_counter())
            postprocessing(data)
            stamps.append(time.perf_counter())
        monai_times.append(stamps[-1] - stamps[0])
        monai_stages = {
            name: round(b - a, 4)
            for name, a, b in zip(("load+preprocess", "inference", "postprocess"), stamps, stamps[1:])
        }

    http_times, http_stages = _over_http(
        bundle_path, body, threads=threads, repeats=repeats, runner=runner, device=device
    )
    ours, bare, monai, http = min(ours_times), min(bare_times), min(monai_times), min(http_times)
    return {
        "series": {"slices": slices, "rows": size, "columns": size},
        "device": str(device),
        "threads": threads,
        "precision": "fp32",
        "runner": bundle.runner.name,
        "model_input": list(image.shape),
        "sliding_window": {
            "roi_size": list(inferer.roi_size),
            "sw_batch_size": inferer.sw_batch_size,
            "overlap": inferer.overlap,
        },
        "timings_s": {
            "ours_over_http": round(http, 4),
            "ours_end_to_end": round(ours, 4),
            "bare_model": round(bare, 4),
            "plain_monai_end_to_end": round(monai, 4),
        },
        "our_stages_s": stages,
        "http_job_stages_s": http_stages,
        "monai_stages_s": monai_stages,
        "tasks": {
            "lung_nodule": _shipped_task(LUNG_BUNDLE, volume, body, threads=threads, repeats=repeats, device=device)
        },
        "ratios": {
            "http_over_bare_model": http / bare,
            "ours_over_bare_model": ours / bare,
            "monai_over_ours": monai / ours,
        },
        "targets": {
            "http_over_bare_model": "<= 1.15 (CT >= 200 slices, HTTP included)",
            "monai_over_ours": ">= 1.5",
        },
    }


def _bare_model(bundle: Any, volume: Any, repeats: int) -> tuple[list[float], torch.Tensor]:
    """Seconds of the bundle's inferer alone (its runner) on the tensor a job's preprocessing gives for the
    series (``segmentation.preprocessed``), placed as a job places it (on a GPU, there when it fits:
    ``segmentation.model_output``), and that tensor."""
    from inference.tasks.segmentation import model_output, preprocessed

    image = preprocessed(bundle, volume)["image"].as_tensor()
    inferer = bundle.get("inferer")
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model_output(bundle, inferer, image, volume.shape)
            times.append(time.perf_counter() - start)
    return times, image[None]


def _shipped_task(
    bundle_path: Path, volume: Any, body: bytes, *, threads: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """A shipped CT task as users run it (its own runner and outputs: findings, SEG, SR, key images) over
    HTTP, against its bare model on the same series."""
    from inference.engine import Engine
    from inference.registry import Registry

    with tempfile.TemporaryDirectory(prefix="radinfer-overhead-models-") as tmp:
        models = Path(tmp)
        (models / bundle_path.name).symlink_to(bundle_path)
        engine = Engine(Registry([models]), device)
        engine.load_all()
        bundle = engine.registry.get(bundle_path.name)
        bare_times, image = _bare_model(bundle, volume, repeats)
        http_times, stages = _over_http(models / bundle_path.name, body, threads=threads, repeats=repeats,
                                        device=device)
    bare, http = min(bare_times), min(http_times)
    return {
        "runner": bundle.runner.name,
        "model_input": list(image.shape),
        "timings_s": {"ours_over_http": round(http, 4), "bare_model": round(bare, 4)},
        "http_job_stages_s": stages,
        "http_over_bare_model": http / bare,
    }


def _zip(paths: list[Path]) -> bytes:
    """The series as one stored (uncompressed) zip, built before any clock starts."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in paths:
            archive.write(path, path.name)
    return buffer.getvalue()


def _over_http(
    bundle: Path, body: bytes, *, threads: int, repeats: int, device: torch.device, runner: str | None = None
) -> tuple[list[float], dict]:
    """Seconds from uploading ``body`` (a zip) to the findings through ``radinfer serve`` for each repeat, and
    the last job's stages."""
    from benchmarks.server import Server

    times = []
    with tempfile.TemporaryDirectory(prefix="radinfer-overhead-") as tmp:
        server = Server(bundle.parent, Path(tmp) / "data", threads=threads, workers=1, device=str(device))
        if runner is not None:
            server.env["RADINFER_RUNNER"] = runner
        with server:
            for _ in range(repeats):
                # http.client sends the body with one sendall: httpx's pure-Python framing adds ~0.9 s of
                # client time to a 115 MB upload here, which is not the server's overhead.
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=900)
                start = time.perf_counter()
                connection.request(
                    "POST", f"/v1/studies?model={bundle.name}&wait=300", body=body,
                    headers={**server.headers, "Content-Type": "application/zip"},
                )
                response = connection.getresponse()
                text = response.read()
                times.append(time.perf_counter() - start)
                connection.close()
                if response.status != 200:
                    raise RuntimeError(f"POST /v1/studies answered {response.status}: {text[:300]!r}")
            stages = server.last_job_timings()
    return times, stages
