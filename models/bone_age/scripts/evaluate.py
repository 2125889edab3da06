"""Held-out mean absolute error of the trained bundle on freshly generated phantoms (a seed training never used).

Run from the bundle folder:  ``python -m scripts.evaluate [--n 400] [--seed 777001]``; prints JSON and writes
docs/evaluation.json. Uses the bundle's own preprocessing (configs/inference.json) and models/model.pt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from scripts.net import pack
from scripts.train import BUNDLE, network, prepare

AGE_BANDS_MONTHS = ((0, 36), (36, 96), (96, 156), (156, 216))


def evaluate(n: int, seed: int, weights: Path) -> dict:
    torch.set_num_threads(2)
    images, ages, sexes = prepare(n, seed)
    net = network()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    predictions = []
    start = time.perf_counter()
    with torch.no_grad():
        for k in range(0, n, 32):
            predictions.append(net(pack(images[k:k + 32].float(), sexes[k:k + 32]))[:, 0])
    seconds_per_image = (time.perf_counter() - start) / n
    pred = torch.cat(predictions).numpy()
    error = np.abs(pred - ages.numpy())
    sex = sexes.numpy()
    result = {
        "n": n,
        "seed": seed,
        "mae_months": round(float(error.mean()), 2),
        "rmse_months": round(float(np.sqrt((error**2).mean())), 2),
        "p90_abs_error_months": round(float(np.percentile(error, 90)), 2),
        "share_within_12_months": round(float((error <= 12).mean()), 3),
        "mae_months_by_sex": {"M": round(float(error[sex == 1].mean()), 2), "F": round(float(error[sex == 0].mean()), 2)},
        "mae_months_by_bone_age": {
            f"{lo}-{hi}": round(float(error[(ages.numpy() >= lo) & (ages.numpy() < hi)].mean()), 2)
            for lo, hi in AGE_BANDS_MONTHS
        },
        "network_seconds_per_image_cpu_batch32": round(seconds_per_image, 4),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=777001)
    parser.add_argument("--weights", type=Path, default=BUNDLE / "models" / "model.pt")
    parser.add_argument("--out", type=Path, default=BUNDLE / "docs" / "evaluation.json")
    args = parser.parse_args()
    result = evaluate(args.n, args.seed, args.weights)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
