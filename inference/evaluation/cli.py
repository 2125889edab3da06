"""``radinfer evaluate`` and ``radinfer compare``: typer commands added to the main CLI by ``register``.

The commands never read the environment themselves: the caller passes an ``environment(device)`` function
returning the model folders, device and limits from its settings (api/cli.py builds it from Settings).
Output contract as for ``radinfer infer``: JSON on stdout, progress, errors and a summary of the label
problems on stderr; exit 0 on success, 1 when no case could be scored, 2 for bad input or options (with
``--strict``, also for any label problem).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dicom_io.limits import Limits
from inference.errors import InferenceError
from inference.evaluation.labels import FORMATS, MODEL_FAILURE

stderr = Console(stderr=True)


@dataclass(frozen=True)
class EvalEnvironment:
    """What the evaluation needs from the deployment's settings."""

    models_dirs: list[Path]
    device: str
    limits: Limits
    runner: str | None = None  # RADINFER_RUNNER: evaluate with the runner the server would use


EnvironmentFactory = Callable[[str | None], EvalEnvironment]


def default_workers() -> int:
    """Cases analysed at once: two overlap DICOM decoding with inference without oversubscribing small hosts."""
    return max(1, min(2, os.cpu_count() or 1))


def _fail(message: str, code: int) -> typer.Exit:
    stderr.print(f"[red]radinfer: {escape(message)}[/red]", highlight=False)
    return typer.Exit(code)


def register(app: typer.Typer, environment: EnvironmentFactory) -> None:
    """Add the ``evaluate`` and ``compare`` commands to ``app``."""

    @app.command("evaluate", epilog=escape(FORMATS))
    def evaluate_command(
        model: Annotated[str, typer.Option(help="Model (bundle) name (`radinfer models`)")],
        data: Annotated[Path, typer.Option(help="Folder, one case per entry: folder, zip or DICOM")],
        labels: Annotated[Path, typer.Option(help="CSV, nodule JSON or folder of masks (below)")],
        out: Annotated[Path, typer.Option(help="Output folder; run again to resume")],
        kind: Annotated[
            str | None,
            typer.Option(
                help="classification, multiclass, regression, detection or segmentation (default: by task)"
            ),
        ] = None,
        prediction: Annotated[
            str | None, typer.Option(help="Report value scored: summary.<key> or max_confidence")
        ] = None,
        positive: Annotated[str | None, typer.Option(help="Positive class if labels are not 0/1")] = None,
        threshold: Annotated[float | None, typer.Option(help="Score threshold (sensitivity)")] = None,
        within: Annotated[float | None, typer.Option(help="Regression tolerance, e.g. 12")] = None,
        surface_tolerance_mm: Annotated[float | None, typer.Option(help="Surface Dice tolerance")] = None,
        finding_label: Annotated[str | None, typer.Option(help="Detection: findings' label")] = None,
        resamples: Annotated[int | None, typer.Option(help="Bootstrap resamples (CIs)")] = None,
        workers: Annotated[
            int, typer.Option(min=1, max=16, metavar="N", help="Cases analysed at once")
        ] = default_workers(),
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N")] = None,
        retry_failed: Annotated[
            bool, typer.Option("--retry-failed", help="Resume: rerun failed cases")
        ] = False,
        discard_artifacts: Annotated[
            bool, typer.Option("--no-keep-artifacts", help="Delete OUT/cases/* once scored")
        ] = False,
        strict: Annotated[bool, typer.Option("--strict", help="Exit 2 on any label problem")] = False,
    ) -> None:
        """Evaluate a model on a labelled test set: per-case CSV, metrics JSON, plots and an HTML report.

        Label problems are summarised on stderr and in the report. --device overrides RADINFER_DEVICE.
        """
        from inference.engine import Engine
        from inference.evaluation.evaluate import evaluate
        from inference.evaluation.report import account_summary
        from inference.evaluation.runner import PipelineAnalyzer
        from inference.registry import Registry

        overrides: dict[str, Any] = {
            "kind": kind,
            "prediction": prediction,
            "positive": positive,
            "threshold": threshold,
            "within": within,
            "surface_tolerance_mm": surface_tolerance_mm,
            "finding_label": finding_label,
            "bootstrap_resamples": resamples,
        }
        env = environment(device)
        try:
            engine = Engine(Registry(env.models_dirs), env.device, runner=env.runner)
            bundle = engine.registry.get(model)
            engine.ensure_loaded(bundle)
        except (InferenceError, ValueError) as exc:
            raise _fail(str(exc), 2) from None
        analyzer = PipelineAnalyzer(engine, bundle.name, env.limits)
        columns = (
            TextColumn("[bold]evaluate[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        try:
            with Progress(*columns, console=stderr, transient=False) as bar:
                task = bar.add_task(bundle.name, total=None)

                def progress(done: int, total: int, record: dict[str, Any] | None) -> None:
                    bar.update(task, completed=done, total=total)
                    if record is not None and record["status"] != "ok":
                        bar.console.print(
                            f"[yellow]{escape(record['case_id'])}: {record['status']}: "
                            f"{escape(record['error'] or '')}[/yellow]",
                            highlight=False,
                        )

                metrics, paths = evaluate(
                    bundle,
                    analyzer,
                    data,
                    labels,
                    out,
                    overrides=overrides,
                    workers=workers,
                    retry_failed=retry_failed,
                    keep_artifacts=not discard_artifacts,
                    strict=strict,
                    progress=progress,
                )
        except (ValueError, FileNotFoundError) as exc:
            raise _fail(str(exc), 2) from None
        typer.echo(
            json.dumps(
                {
                    "kind": metrics["kind"],
                    "counts": metrics["counts"],
                    "outputs": {name: str(path) for name, path in paths.items()},
                },
                indent=2,
            )
        )
        for line in account_summary(metrics["label_account"]):
            stderr.print(f"[yellow]label account: {escape(line)}[/yellow]", highlight=False)
        if metrics["counts"]["scored"] == 0:
            raise _fail("no case could be scored; see the label account in the report.", 1)
        if strict and any(a["kind"] != MODEL_FAILURE for a in metrics["label_account"]):
            raise _fail("label problems found (--strict); see the label account in the report.", 2)

    @app.command("compare")
    def compare_command(
        run_a: Annotated[Path, typer.Argument(help="Output folder of the first evaluation (model a)")],
        run_b: Annotated[
            Path,
            typer.Argument(help="Output folder of a second evaluation, or a CSV of stored predictions (b)"),
        ],
        out: Annotated[Path | None, typer.Option(help="Write comparison.json into this folder")] = None,
        resamples: Annotated[int, typer.Option(help="Bootstrap resamples")] = 2000,
        seed: Annotated[int, typer.Option(help="Bootstrap seed")] = 0,
    ) -> None:
        """Compare two evaluations of the same cases: DeLong for AUC, paired bootstrap for MAE, Dice and CPM."""
        from inference.evaluation.compare import compare_runs, records_from_predictions
        from inference.evaluation.runner import RUN_FILE, read_records

        try:
            run = json.loads((run_a / RUN_FILE).read_text(encoding="utf-8"))
            kind, records_a = run["spec"]["kind"], read_records(run_a)
            if run_b.is_file():
                other = {"predictions": run_b.name}
                records_b = records_from_predictions(run_b, records_a, kind)
            else:
                stored = json.loads((run_b / RUN_FILE).read_text(encoding="utf-8"))
                if stored["spec"]["kind"] != kind:
                    raise ValueError(f"the runs evaluate different kinds ({kind}, {stored['spec']['kind']})")
                if stored["dataset_sha256"] != run["dataset_sha256"]:
                    raise ValueError("the runs used different data sets (dataset sha256 differs)")
                other, records_b = _model(stored), read_records(run_b)
        except (OSError, KeyError, json.JSONDecodeError, ValueError) as exc:
            raise _fail(
                f"{exc}; pass an output folder of `radinfer evaluate` and another or a predictions CSV.", 2
            )
        result = compare_runs(kind, records_a, records_b, n_resamples=resamples, seed=seed)
        result.update(a=_model(run), b=other, dataset_sha256=run["dataset_sha256"])
        text = json.dumps(result, indent=2)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "comparison.json").write_text(text, encoding="utf-8")
        typer.echo(text)
        if "error" in result:
            raise _fail(result["error"], 2)


def _model(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run[k] for k in ("model", "model_version", "weights_sha256")}
