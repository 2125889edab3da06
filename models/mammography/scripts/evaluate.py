"""Held-out evaluation of the trained bundle on freshly generated four-view phantom studies; sets the operating point.

Run from the bundle folder (radinfer installed in the environment):
``python -m scripts.evaluate [--val-studies 150] [--test-studies 300] [--write-operating-point]``.

Two generated sets with seeds training never used: VALIDATION picks the operating threshold (the highest
suspicion threshold whose per-breast sensitivity is at least ``--target-sensitivity``); TEST reports the
figures. Scores as the radinfer task forms them: per image the sigmoid of the suspicion logit and the softmax
of the density logits; per breast the maximum suspicion over its CC and MLO views and the mean of their
density probabilities; per study the most suspicious breast. Metrics (inference.evaluation.metrics): AUC with
a 95% percentile-bootstrap CI, sensitivity/specificity at the threshold, density accuracy with CI, confusion
matrix, Cohen's linear- and quadratic-weighted kappa. Writes docs/evaluation.json; with
``--write-operating-point`` also the threshold, its test sensitivity/specificity and the weights' sha256 into
configs/radinfer.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score

from inference.evaluation.metrics import classification_metrics, multiclass_metrics
from scripts.phantom import DENSITY_CLASSES, generate_study
from scripts.train import BUNDLE, SIZE, config, network, preprocess

VALIDATION_SEED = 880001
TEST_SEED = 990001


def generate_set(n_studies: int, seed: int, cache: Path | None = None) -> dict[str, torch.Tensor]:
    """Pre-processed views and truth of ``n_studies`` generated studies (four views each, in generate_study's
    order); kept in ``cache`` (a folder) when given, so that several weights can be scored on the same set."""
    cached = cache / f"studies_{n_studies}_seed_{seed}.pt" if cache is not None else None
    if cached is not None and cached.exists():
        return torch.load(cached, weights_only=True)
    preprocessing = config().get_parsed_content("preprocessing")
    rng = np.random.default_rng(seed)
    images, density, lesion = [], [], []
    for _ in range(n_studies):
        for phantom in generate_study(rng, size=SIZE):
            images.append(preprocess(phantom, preprocessing))
            density.append(phantom.density)
            lesion.append(int(phantom.lesion_present))
    data = {"x": torch.stack(images).as_subclass(torch.Tensor), "density": torch.tensor(density), "lesion": torch.tensor(lesion)}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, cached)
    return data


def predict(data: dict[str, torch.Tensor], net: torch.nn.Module) -> dict[str, np.ndarray]:
    """Scores and truth of a generated set (``generate_set``)."""
    x = data["x"]
    with torch.no_grad():
        logits = torch.cat([net(x[k:k + 32]) for k in range(0, len(x), 32)])
    return {
        "density_probabilities": torch.softmax(logits[:, :4], dim=1).numpy(),
        "suspicion": torch.sigmoid(logits[:, 4]).numpy(),
        "density": data["density"].numpy(),
        "lesion": data["lesion"].numpy(),
    }


def levels(p: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per image, per breast (views 0-1 right, 2-3 left) and per study: suspicion score and truth, density."""
    breast_susp = p["suspicion"].reshape(-1, 2).max(axis=1)
    breast_lesion = p["lesion"].reshape(-1, 2).max(axis=1)
    breast_density = p["density_probabilities"].reshape(-1, 2, 4).mean(axis=1)
    return {
        "image": {"score": p["suspicion"], "truth": p["lesion"],
                  "density_pred": p["density_probabilities"].argmax(1), "density_truth": p["density"]},
        "breast": {"score": breast_susp, "truth": breast_lesion, "density_pred": breast_density.argmax(1),
                   "density_truth": p["density"][::2]},
        "study": {"score": breast_susp.reshape(-1, 2).max(axis=1), "truth": breast_lesion.reshape(-1, 2).max(axis=1)},
    }


def threshold_for_sensitivity(score: np.ndarray, truth: np.ndarray, target: float) -> float:
    """The highest threshold t (positive when score >= t) whose sensitivity is at least ``target``."""
    positives = np.sort(score[truth == 1])[::-1]
    return float(positives[int(np.ceil(target * positives.size)) - 1])


def suspicion_metrics(level: dict[str, np.ndarray], threshold: float) -> dict:
    result = classification_metrics(level["truth"], level["score"], threshold=threshold)
    return {k: v for k, v in result.items() if k not in ("roc", "calibration")}


def density_metrics(level: dict[str, np.ndarray]) -> dict:
    truth = [DENSITY_CLASSES[k] for k in level["density_truth"]]
    pred = [DENSITY_CLASSES[k] for k in level["density_pred"]]
    result = multiclass_metrics(truth, pred)
    result["linear_kappa"] = float(cohen_kappa_score(truth, pred, labels=list(DENSITY_CLASSES), weights="linear"))
    return result


def evaluate(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    net = network()
    net.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    net.eval()
    start = time.perf_counter()
    validation = levels(predict(generate_set(args.val_studies, args.val_seed, args.cache), net))
    threshold = threshold_for_sensitivity(validation["breast"]["score"], validation["breast"]["truth"],
                                          args.target_sensitivity)
    test = levels(predict(generate_set(args.test_studies, args.test_seed, args.cache), net))
    return {
        "weights_sha256": hashlib.sha256(args.weights.read_bytes()).hexdigest(),
        "trained_on_synthetic_data": True,
        "note": "Held-out procedural phantoms from the training generator: says nothing about real mammograms.",
        "validation": {"studies": args.val_studies, "seed": args.val_seed,
                       "target_breast_sensitivity": args.target_sensitivity,
                       "breast_auc": suspicion_metrics(validation["breast"], threshold)["auc"]},
        "operating_point": {"threshold": round(threshold, 4), "chosen_on": "validation, per breast"},
        "test": {
            "studies": args.test_studies, "seed": args.test_seed,
            "suspicion": {name: suspicion_metrics(level, threshold) for name, level in test.items()},
            "density": {name: density_metrics(test[name]) for name in ("image", "breast")},
        },
        "wall_s": round(time.perf_counter() - start, 1),
    }


def write_operating_point(result: dict, path: Path) -> None:
    """Pin the weights and store the operating point with its held-out TEST figures in radinfer.json."""
    radinfer = json.loads(path.read_text())
    breast = result["test"]["suspicion"]["breast"]
    test = result["test"]
    radinfer["weights_sha256"] = result["weights_sha256"]
    radinfer["operating_point"] = {
        "threshold": result["operating_point"]["threshold"],
        "sensitivity": round(breast["sensitivity"], 3),
        "specificity": round(breast["specificity"], 3),
        "per": "breast (maximum suspicion over its CC and MLO views)",
        "measured_on": f"{breast['n']} held-out phantom breasts ({test['studies']} four-view studies, seed "
                       f"{test['seed']}); threshold chosen for sensitivity >= "
                       f"{result['validation']['target_breast_sensitivity']} on {result['validation']['studies']} "
                       f"other studies (seed {result['validation']['seed']}); synthetic phantoms only",
    }
    radinfer["evaluation"]["threshold"] = result["operating_point"]["threshold"]
    path.write_text(json.dumps(radinfer, indent=4) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-studies", type=int, default=150)
    parser.add_argument("--val-seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--test-studies", type=int, default=300)
    parser.add_argument("--test-seed", type=int, default=TEST_SEED)
    parser.add_argument("--target-sensitivity", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=BUNDLE / "models" / "model.pt")
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs" / "evaluation.json")
    parser.add_argument("--write-operating-point", action="store_true")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping the generated, pre-processed sets for later runs")
    args = parser.parse_args()
    result = evaluate(args)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_operating_point:
        write_operating_point(result, BUNDLE / "configs" / "radinfer.json")
    print(json.dumps({"operating_point": result["operating_point"], "validation": result["validation"],
                      **{f"test_{k}": {m: v.get(m) for m in ("auc", "auc_ci95", "sensitivity", "specificity")}
                         for k, v in result["test"]["suspicion"].items()},
                      **{f"density_{k}": {m: v[m] for m in ("accuracy", "linear_kappa")}
                         for k, v in result["test"]["density"].items()}}, indent=2))


if __name__ == "__main__":
    main()
