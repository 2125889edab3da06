"""Evaluation outputs: aggregate metrics, per-case CSV, metrics JSON, PNG plots and one HTML report.

Plots use matplotlib's Agg backend (no display); the HTML report embeds them as base64 data URIs so the one
file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inference.evaluation.compare import case_match
from inference.evaluation.labels import MODEL_FAILURE, LabelIssue
from inference.evaluation.metrics import (
    classification_metrics,
    froc,
    latency_metrics,
    multiclass_metrics,
    regression_metrics,
    summarize,
)
from inference.evaluation.runner import EvaluationSpec
from inference.findings import RESEARCH_USE_DISCLAIMER, SYNTHETIC_TRAINING_DISCLAIMER

CASES_CSV = "cases.csv"
METRICS_JSON = "metrics.json"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"


def aggregate(spec: EvaluationSpec, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Data-set metrics of the ``ok`` records for ``spec.kind``."""
    ok = [r for r in records if r["status"] == "ok"]
    if spec.kind == "classification":
        return classification_metrics(
            [r["truth"]["label"] for r in ok],
            [r["prediction"]["score"] for r in ok],
            threshold=spec.threshold,
            n_resamples=spec.bootstrap_resamples,
            seed=spec.seed,
        )
    if spec.kind == "multiclass":
        return multiclass_metrics(
            [r["truth"]["label"] for r in ok],
            [r["prediction"]["label"] for r in ok],
            n_resamples=spec.bootstrap_resamples,
            seed=spec.seed,
        )
    if spec.kind == "regression":
        return regression_metrics(
            [r["truth"]["value"] for r in ok],
            [r["prediction"]["value"] for r in ok],
            within=spec.within,
            n_resamples=spec.bootstrap_resamples,
            seed=spec.seed,
        )
    if spec.kind == "detection":
        return froc([case_match(r) for r in ok])
    labels = sorted({k for r in ok for k in r["metrics"]["dice"]}, key=int)
    return {
        "cases": len(ok),
        "surface_tolerance_mm": spec.surface_tolerance_mm,
        "per_label": {
            label: {
                name: summarize([r["metrics"][name].get(label) for r in ok if label in r["metrics"][name]])
                for name in ("dice", "hd95", "surface_dice")
            }
            for label in labels
        },
    }


def software_versions(*, onnxruntime: bool = False) -> dict[str, str]:
    """Versions of the software that computed the figures; ``onnxruntime`` when ONNX Runtime ran the model."""
    import monai
    import torch

    from dicom_io.writers.provenance import radinfer_version

    versions = {
        "radinfer": radinfer_version(),
        "monai": monai.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if onnxruntime:
        import onnxruntime as ort

        versions["onnxruntime"] = ort.__version__
    return versions


def account_summary(account: list[dict[str, Any]], examples: int = 3) -> list[str]:
    """One line per kind of a label account: how many, and the first few case ids."""
    by_kind: dict[str, list[str]] = {}
    for entry in account:
        by_kind.setdefault(entry["kind"], []).append(entry["case_id"])
    lines = []
    for kind, cases in by_kind.items():
        named = [c for c in cases if c is not None]
        shown = ", ".join(named[:examples]) + (", ..." if len(named) > examples else "")
        lines.append(f"{kind}: {len(cases)}" + (f" (e.g. {shown})" if shown else ""))
    return lines


def build_metrics(
    spec: EvaluationSpec,
    records: list[dict[str, Any]],
    issues: list[LabelIssue],
    *,
    model: dict[str, Any],
    dataset: dict[str, Any],
    labels: dict[str, Any],
    device: str,
    throughput: tuple[int, float],
) -> dict[str, Any]:
    """The metrics JSON document: provenance, counts, the label account, task metrics and latency.

    ``model`` as evaluate() describes it (name, version, weights_sha256, task, runner, ONNX Runtime
    ``providers`` or None, ...); the software versions include onnxruntime's when it ran the model.
    """
    cases, wall_s = throughput
    # the cases that ran to a report (scored or not): a failure answered in milliseconds would pull the median down
    latency = latency_metrics(
        [r["latency_s"] for r in records if "report_status" in r and r.get("latency_s") is not None], None
    )
    rate = cases / wall_s if wall_s > 0 else None
    latency.update(
        wall_s=wall_s or None, throughput_per_s=rate, throughput_per_h=None if rate is None else rate * 3600
    )
    account = [i.as_dict() for i in issues] + [
        {
            "kind": r.get("error_kind") or (MODEL_FAILURE if r["status"] == "failed" else r["status"]),
            "case_id": r["case_id"],
            "detail": r["error"],
        }
        for r in records
        if r["status"] != "ok"
    ]
    counts: dict[str, int] = {"evaluated": len(records), "scored": sum(r["status"] == "ok" for r in records)}
    for entry in account:
        counts[entry["kind"]] = counts.get(entry["kind"], 0) + 1
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": spec.kind,
        "model": model,
        "dataset": dataset,
        "labels": labels,
        "software": software_versions(onnxruntime=model.get("providers") is not None),
        "device": device,
        "spec": {k: v for k, v in vars(spec).items()},
        "counts": counts,
        "metrics": aggregate(spec, records),
        "latency": latency,
        "label_account": account,
        "disclaimer": disclaimer(model),
    }


def disclaimer(model: dict[str, Any]) -> str:
    if model.get("trained_on_synthetic_data"):
        return f"{RESEARCH_USE_DISCLAIMER} {SYNTHETIC_TRAINING_DISCLAIMER}"
    return RESEARCH_USE_DISCLAIMER


# --- files ------------------------------------------------------------------------------------------


def case_rows(kind: str, records: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Flat per-case rows for the CSV and the HTML table."""
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "case_id": r["case_id"],
            "status": r["status"],
            "latency_s": _round(r.get("latency_s")),
        }
        if r["status"] == "ok":
            if kind == "classification":
                row.update(label=r["truth"]["label"], score=_round(r["prediction"]["score"]))
            elif kind == "multiclass":
                row.update(label=r["truth"]["label"], predicted=r["prediction"]["label"])
            elif kind == "regression":
                row.update(
                    truth=r["truth"]["value"],
                    predicted=_round(r["prediction"]["value"]),
                    difference=_round(r["metrics"]["error"]),  # predicted - truth; "error" is the failure column
                )
            elif kind == "detection":
                tp = r["metrics"]["tp_scores"]
                row.update(
                    nodules=len(tp),
                    detected=sum(s is not None for s in tp),
                    candidates=len(r["prediction"]["candidates"]),
                    false_positives=len(r["metrics"]["fp_scores"]),
                )
            else:
                for name in ("dice", "hd95", "surface_dice"):
                    row.update({f"{name}_{k}": _round(v) for k, v in r["metrics"][name].items()})
        row["error"] = r.get("error") or ""
        rows.append(row)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    columns = [c for c in columns if c != "error"] + ["error"]
    return columns, rows


def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def write_outputs(out_dir: Path, metrics: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Path]:
    """Write cases.csv, metrics.json, plots/*.png and report.html into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    columns, rows = case_rows(metrics["kind"], records)
    with open(out_dir / CASES_CSV, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / METRICS_JSON).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    plots = render_plots(metrics, records)
    (out_dir / PLOTS_DIR).mkdir(exist_ok=True)
    paths = {"cases_csv": out_dir / CASES_CSV, "metrics_json": out_dir / METRICS_JSON}
    for name, png in plots.items():
        (out_dir / PLOTS_DIR / f"{name}.png").write_bytes(png)
        paths[f"plot_{name}"] = out_dir / PLOTS_DIR / f"{name}.png"
    (out_dir / REPORT_HTML).write_text(render_html(metrics, columns, rows, plots), encoding="utf-8")
    paths["report_html"] = out_dir / REPORT_HTML
    return paths


# --- plots ------------------------------------------------------------------------------------------


def render_plots(metrics: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, bytes]:
    """PNG bytes by plot name: the task's plot(s) and the latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    plots: dict[str, bytes] = {}
    kind, m = metrics["kind"], metrics["metrics"]
    ok = [r for r in records if r["status"] == "ok"]

    def figure() -> tuple[Any, Any]:
        fig = Figure(figsize=(5.5, 4.2), dpi=100)
        return fig, fig.add_subplot()

    if kind == "classification" and m["roc"]["fpr"]:
        fig, ax = figure()
        ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], lw=2, label=f"AUC {m['auc']:.3f}")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower right")
        plots["roc"] = _png(fig)
    if kind == "detection" and m["fps_per_scan"]:
        fig, ax = figure()
        rates = [float(k) for k in m["sensitivity_at"]]
        grid = np.geomspace(rates[0], rates[-1], 200)  # the curve as LUNA16 interpolates and plots it
        ax.plot(grid, np.interp(grid, m["fps_per_scan"], m["sensitivity"]), lw=2)
        ax.plot(rates, list(m["sensitivity_at"].values()), "o", label=f"CPM {m['cpm']:.3f}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.set(xlabel="false positives per scan", ylabel="sensitivity", title="FROC", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        plots["froc"] = _png(fig)
    if kind == "regression" and len(ok) > 1:
        truth = np.asarray([r["truth"]["value"] for r in ok], dtype=float)
        pred = np.asarray([r["prediction"]["value"] for r in ok], dtype=float)
        fig, ax = figure()
        ax.scatter((truth + pred) / 2, pred - truth, s=14, alpha=0.7)
        for value, style in ((m["bias"], "-"), (m["loa_low"], "--"), (m["loa_high"], "--")):
            ax.axhline(value, ls=style, c="C3", lw=1)
        unit = (metrics["model"].get("output") or {}).get("unit")
        in_unit = f" ({unit})" if unit else ""
        ax.set(
            xlabel=f"mean of predicted and reference{in_unit}",
            ylabel=f"predicted - reference{in_unit}",
            title=f"Bland-Altman (bias {m['bias']:.2f}, LoA {m['loa_low']:.2f} to {m['loa_high']:.2f})",
        )
        plots["bland_altman"] = _png(fig)
    if kind == "segmentation" and m["per_label"]:
        fig, ax = figure()
        for label in m["per_label"]:
            values = [r["metrics"]["dice"][label] for r in ok if r["metrics"]["dice"].get(label) is not None]
            ax.hist(values, bins=np.linspace(0, 1, 21), alpha=0.6, label=f"label {label}")
        ax.set(xlabel="Dice", ylabel="cases", title="Dice per case")
        ax.legend()
        plots["dice_histogram"] = _png(fig)
    latencies = [r["latency_s"] for r in records if r.get("latency_s") is not None]
    if latencies:
        fig, ax = figure()
        ax.hist(latencies, bins=min(30, max(5, len(latencies))), color="C2")
        ax.set(xlabel="seconds per case", ylabel="cases", title="Latency")
        plots["latency_histogram"] = _png(fig)
    return plots


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# --- HTML -------------------------------------------------------------------------------------------

_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}
th{background:#f3f3f3}.warn{background:#fff3cd;border:1px solid #e0c060;padding:.7rem;margin:1rem 0}
.plots img{max-width:32rem;margin:.5rem;border:1px solid #ddd}code{font-size:.9em}"""
# Marks <html data-plots="ok|broken"> once the page has loaded, so a headless browser can check the plots.
_PLOT_CHECK = """window.addEventListener('load',function(){var i=document.images,ok=i.length>0;
for(var k=0;k<i.length;k++){if(!(i[k].complete&&i[k].naturalWidth>0)){ok=false;}}
document.documentElement.setAttribute('data-plots',ok?'ok':'broken');});"""


def _table(rows: list[tuple[str, Any]]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _cell(value: Any) -> str:
    """A per-case value as cases.csv holds it (already rounded): 4 significant digits would turn a truth of
    168.96 into 169, and figures recomputed from the table would not match the metrics."""
    return str(value) if isinstance(value, float) else _text(value)


def _runner(model: dict[str, Any]) -> str:
    """What ran the network, e.g. "onnx+batching (CPUExecutionProvider)"."""
    providers = model.get("providers")
    return f"{model.get('runner')} ({', '.join(providers)})" if providers else str(model.get("runner") or "")


def _headline(kind: str, m: dict[str, Any]) -> list[tuple[str, Any]]:
    if kind == "classification":
        return [
            ("cases (positive / negative)", f"{m['n']} ({m['positives']} / {m['negatives']})"),
            (
                "AUC [95% bootstrap CI]",
                f"{_text(m['auc'])} [{_text(m['auc_ci95'][0])}, {_text(m['auc_ci95'][1])}]",
            ),
            (f"sensitivity at {m['threshold']}", m["sensitivity"]),
            (f"specificity at {m['threshold']}", m["specificity"]),
            ("confusion matrix", m["confusion_matrix"]),
            ("Brier score", m["brier"]),
        ]
    if kind == "multiclass":
        return [
            ("cases", m["n"]),
            ("classes", ", ".join(m["classes"])),
            (
                "accuracy [95% bootstrap CI]",
                f"{_text(m['accuracy'])} [{_text(m['accuracy_ci95'][0])}, {_text(m['accuracy_ci95'][1])}]",
            ),
            ("Cohen's kappa", m["kappa"]),
            ("quadratic-weighted kappa", m["quadratic_kappa"]),
            ("confusion matrix (rows truth)", m["confusion_matrix"]),
        ] + [(f"recall of {c}", v["recall"]) for c, v in m["per_class"].items()]
    if kind == "regression":
        return [
            ("cases", m["n"]),
            (
                "MAE [95% bootstrap CI]",
                f"{_text(m['mae'])} [{_text(m['mae_ci95'][0])}, {_text(m['mae_ci95'][1])}]",
            ),
            ("RMSE", m["rmse"]),
            ("bias (predicted - reference)", m["bias"]),
            ("Bland-Altman 95% limits", f"{_text(m['loa_low'])} to {_text(m['loa_high'])}"),
            (f"share within {_text(m['within'])}", m["share_within"]),
        ]
    if kind == "detection":
        return [
            ("scans", m["scans"]),
            ("nodules (detected)", f"{m['nodules']} ({m['detected_nodules']})"),
            ("false positives", m["false_positives"]),
            ("CPM (LUNA16)", m["cpm"]),
        ] + [(f"sensitivity at {rate} FP/scan", value) for rate, value in m["sensitivity_at"].items()]
    rows: list[tuple[str, Any]] = [("cases", m["cases"])]
    for label, values in m["per_label"].items():
        for name, summary in values.items():
            rows.append(
                (
                    f"label {label} {name} mean (SD) [n]",
                    (
                        f"{_text(summary['mean'])} ({_text(summary['sd'])}) "
                        f"[{summary['n']}, undefined {summary['undefined']}]"
                    ),
                )
            )
    return rows


def render_html(
    metrics: dict[str, Any], columns: list[str], rows: list[dict[str, Any]], plots: dict[str, bytes]
) -> str:
    """The self-contained report: provenance, headline metrics, label account, plots and per-case table."""
    model, latency = metrics["model"], metrics["latency"]
    esc = html.escape
    warning = ""
    if model.get("trained_on_synthetic_data"):
        warning = f'<div class="warn" id="synthetic-disclaimer">{esc(SYNTHETIC_TRAINING_DISCLAIMER)}</div>'
    provenance = _table(
        [
            ("model", f"{model['name']} {model['version']}"),
            ("weights sha256", model["weights_sha256"]),
            ("task / evaluation", f"{model.get('task')} / {metrics['kind']}"),
            ("data set sha256", metrics["dataset"]["sha256"]),
            ("data set cases", metrics["dataset"]["cases"]),
            ("labels", f"{metrics['labels']['file']} (sha256 {metrics['labels']['sha256'][:16]}...)"),
            ("device", metrics["device"]),
            ("runner", _runner(model)),
            ("software", metrics["software"]),
            ("created", metrics["created_at"]),
        ]
    )
    latency_rows = [
        (k, latency.get(k))
        for k in ("n", "mean_s", "p50_s", "p90_s", "p95_s", "p99_s", "max_s", "wall_s", "throughput_per_h")
    ]
    account = metrics["label_account"]
    if account:
        warning += (
            '<div class="warn" id="label-summary">Cases not scored or with label problems (see the label '
            "account below):<ul>"
            + "".join(f"<li>{esc(line)}</li>" for line in account_summary(account))
            + "</ul></div>"
        )
    account_html = (
        "<p>No label problems.</p>"
        if not account
        else (
            "<table><tr><th>problem</th><th>case</th><th>detail</th></tr>"
            + "".join(
                f"<tr><td>{esc(a['kind'])}</td><td>{esc(a['case_id'] or '')}</td><td>{esc(a['detail'] or '')}</td></tr>"
                for a in account
            )
            + "</table>"
        )
    )
    images = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{esc(name.replace('_', ' '))}</figcaption></figure>"
        for name, png in plots.items()
    )
    table = (
        "<table><tr>"
        + "".join(f"<th>{esc(c)}</th>" for c in columns)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{esc(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
        )
        + "</table>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>radinfer evaluation: {esc(model["name"])}</title>
<style>{_STYLE}</style><script>{_PLOT_CHECK}</script></head><body>
<h1>Evaluation of {esc(model["name"])} {esc(model["version"])}</h1>
<p><strong>{esc(RESEARCH_USE_DISCLAIMER)}</strong></p>{warning}
<h2>Provenance</h2>{provenance}
<h2>Metrics ({esc(metrics["kind"])})</h2>{_table(_headline(metrics["kind"], metrics["metrics"]))}
<h2>Counts</h2>{_table(list(metrics["counts"].items()))}
<h2>Latency and throughput</h2>{_table(latency_rows)}
<h2>Plots</h2><div class="plots">{images}</div>
<h2>Label account</h2>{account_html}
<h2>Per case</h2>{table}
</body></html>
"""
