"""Researchers' evaluation: run a model over a labelled test set; metrics, per-case results, plots, report.

``evaluate.evaluate`` runs one evaluation (used by ``radinfer evaluate`` and ``POST /v1/evaluations``);
``compare.compare_runs`` compares two runs on the same cases with paired statistics.
"""
