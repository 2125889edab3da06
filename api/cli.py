"""The ``radinfer`` command line: ``serve``, ``infer PATH`` (no server), ``models``, ``export-onnx``, ``evaluate``, ``compare``.

Output contract: ``infer`` and ``models --json`` print JSON on stdout and everything else (progress, errors) on
stderr, so they can be piped. Exit codes: 0 success, 1 internal or model failure, 2 bad input or configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.config import ConfigError, Settings, load_settings
from dicom_io.errors import InputRejected
from inference.errors import InferenceError
from inference.evaluation.cli import EvalEnvironment
from inference.evaluation.cli import register as register_evaluation
from inference.hashing import sha256_file

app = typer.Typer(help="radinfer: medical-imaging AI inference (research use only).", no_args_is_help=True)
stderr = Console(stderr=True, soft_wrap=True)
PRIVATE_UMASK = 0o077
"""The server's files (studies, results, the job database) are PHI: readable by the service's user only."""


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        stderr.print(f"[red]radinfer: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides RADINFER_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides RADINFER_PORT")] = None,
) -> None:
    """Serve the HTTP API with uvicorn (settings from RADINFER_* variables)."""
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from api.http_protocol import HeaderTimeoutProtocol
    from api.main import create_app

    settings = _settings(host=host, port=port)
    _check_port_free(settings.host, settings.port)
    os.umask(PRIVATE_UMASK)
    try:
        application = create_app(settings)
    except (ConfigError, InferenceError) as exc:
        stderr.print(f"[red]radinfer: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    except SQLAlchemyError as exc:  # the job store: an unreachable or refusing database
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        stderr.print(f"[red]radinfer: RADINFER_DATABASE_URL: cannot open the job store ({type(exc).__name__}: "
                     f"{escape(reason)})[/red]", highlight=False)
        raise typer.Exit(2) from None
    uvicorn.run(
        application, host=settings.host, port=settings.port, http=HeaderTimeoutProtocol, log_config=None,
        access_log=False,
    )


def _check_port_free(host: str, port: int) -> None:
    """Exit with one line when the port is taken, before models and worker threads start: uvicorn only finds out
    after the application's start-up, and the process then sometimes aborted (SIGABRT) with those threads alive."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            stderr.print(f"[red]radinfer: cannot listen on {host}:{port} ({exc.strerror}); stop the other server or "
                         "set RADINFER_PORT / RADINFER_HOST[/red]", highlight=False)
            raise typer.Exit(2) from None


@app.command()
def infer(
    path: Annotated[Path, typer.Argument(exists=True, help="A DICOM file, a folder of DICOM files, or a zip")],
    model: Annotated[str | None, typer.Option(help="Model name; default: chosen by the bundles' rules")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (overrides RADINFER_DEVICE)")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the artifacts (DICOM SEG/SR/SC...)")] = None,
) -> None:
    """Analyse one study without a server; print the findings JSON on stdout."""
    from inference.device import select_devices
    from inference.engine import Engine
    from inference.pipeline import analyze
    from inference.registry import Registry

    settings = _settings(device=device)

    def progress(stage: str, fraction: float | None) -> None:
        stderr.print(f"[dim]{stage}[/dim]" + (f" {fraction:.0%}" if fraction is not None else ""), highlight=False)

    try:
        # a device list (RADINFER_DEVICE=cuda:0,cuda:1, as for serve): one study runs on the first
        engine = Engine(Registry(settings.models_dirs), select_devices(settings.device)[0], runner=settings.runner)
        with tempfile.TemporaryDirectory(prefix="radinfer-infer-") as scratch:
            workdir = out if out is not None else Path(scratch)
            report = analyze([path], engine, model=model, limits=settings.limits(), workdir=workdir, progress=progress)
    except (InputRejected, InferenceError, ValueError) as exc:
        stderr.print(f"[red]radinfer: {exc}[/red]", highlight=False)
        raise typer.Exit(2 if isinstance(exc, (InputRejected, ValueError)) else 1) from None
    typer.echo(report.model_dump_json(indent=2))
    if out is None and report.artifacts:
        stderr.print(f"{len(report.artifacts)} artifact(s) not kept; pass --out DIR to keep them.")


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (overrides RADINFER_DEVICE)")] = None,
) -> None:
    """List the installed models: name, version, task, weights sha256 and the device they would run on."""
    from inference.device import select_devices
    from inference.registry import Registry

    settings = _settings(device=device)
    try:
        registry = Registry(settings.models_dirs)
        run_on = ", ".join(str(d) for d in select_devices(settings.device))
    except (InferenceError, ValueError) as exc:
        stderr.print(f"[red]radinfer: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    rows = [
        {"name": b.name, "version": b.version, "task": b.task, "sha256": sha256_file(b.weights_path), "device": run_on}
        for b in registry.bundles.values()
    ]
    rows += [{"name": n, "version": "", "task": "", "sha256": "", "device": "", "error": e}
             for n, e in registry.errors.items()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="radinfer models (research use only)")
    for column in ("name", "version", "task", "sha256", "device"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["name"], row["version"], row["task"] or f"[red]{row.get('error', '')}[/red]",
                      row["sha256"], row["device"])
    Console().print(table)




@app.command("export-onnx")
def export_onnx(
    model: Annotated[str, typer.Argument(help="Model (bundle) name, as listed by `radinfer models`")],
    tolerance: Annotated[float, typer.Option(help="Largest |onnx - torch| relative to max(1, max|torch|)")] = 1e-4,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
) -> None:
    """Write the bundle's models/model.onnx and check that ONNX Runtime agrees with torch within the tolerance."""
    from inference.onnx_export import export_onnx_command

    settings = _settings()
    try:
        report = export_onnx_command(model, settings.models_dirs, tolerance=tolerance, opset=opset)
    except InferenceError as exc:
        stderr.print(f"[red]radinfer: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(dataclasses.asdict(report), indent=2))
    stderr.print(
        f"max |onnx - torch| = {report.max_abs_diff:.3g}, {report.max_scaled_diff:.3g} of the output scale "
        f"max(1, max |torch|) (tolerance {report.tolerance:g} of it): {report.path}"
    )


def _evaluation_environment(device: str | None) -> EvalEnvironment:
    settings = _settings(device=device)
    return EvalEnvironment(
        models_dirs=settings.models_dirs, device=settings.device, limits=settings.limits(), runner=settings.runner
    )


register_evaluation(app, _evaluation_environment)


if __name__ == "__main__":
    app()
