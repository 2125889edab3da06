"""Train BoneAgeNet on procedural hand phantoms (seeded, CPU, minutes).

Run from the bundle folder:  ``python -m scripts.train [--n 4000] [--epochs 6] [--seed 20251122]``

Phantoms are rendered once into memory and passed through the bundle's own ``preprocessing`` from
configs/inference.json, so training sees exactly what inference sees. Writes models/model.pt (a state_dict)
and prints its sha256 for the pin in configs/radinfer.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from scripts.net import AGE_SCALE, BoneAgeNet, pack
from scripts.phantom import REFERENCE_SIZE, render, sample_params

BUNDLE = Path(__file__).resolve().parents[1]


def config() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    return parser


def prepare(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` pre-processed phantoms (n, 1, S, S) float16, bone ages (months) and sex codes (1 M, 0 F)."""
    preprocessing = config().get_parsed_content("preprocessing")
    rng = np.random.default_rng(seed)
    images, ages, sexes = [], [], []
    for _ in range(n):
        params = sample_params(rng)
        image = render(params, REFERENCE_SIZE, rng)
        data = preprocessing({"image": MetaTensor(torch.from_numpy(image)[None])})
        images.append(torch.as_tensor(data["image"]).to(torch.float16))
        ages.append(params.bone_age_months)
        sexes.append(1.0 if params.sex == "M" else 0.0)
    return torch.stack(images), torch.tensor(ages), torch.tensor(sexes)


def network() -> BoneAgeNet:
    return config().get_parsed_content("network_def", instantiate=True)


def train(n: int, epochs: int, batch: int, lr: float, seed: int, out: Path) -> dict[str, float]:
    torch.set_num_threads(2)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    start = time.perf_counter()
    images, ages, sexes = prepare(n, seed)
    prepared_s = time.perf_counter() - start
    print(f"prepared {n} phantoms in {prepared_s:.0f} s", flush=True)
    net = network()
    steps = epochs * (n // batch)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=generator)
        losses = []
        for step in range(n // batch):
            idx = order[step * batch:(step + 1) * batch]
            x = images[idx].float()
            gamma = torch.exp(torch.randn(len(idx), 1, 1, 1, generator=generator) * 0.1)
            x = x.clamp(0, 1) ** gamma  # exposure/processing variation beyond the phantom's own
            pred = net(pack(x, sexes[idx]))[:, 0]
            loss = torch.nn.functional.smooth_l1_loss(pred / AGE_SCALE, ages[idx] / AGE_SCALE, beta=0.05)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f} elapsed {time.perf_counter() - start:.0f} s",
              flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    summary = {"n": n, "epochs": epochs, "seed": seed, "prepare_s": round(prepared_s, 1),
               "wall_s": round(time.perf_counter() - start, 1), "sha256": digest}
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="phantoms rendered (cached in memory)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=20251122)
    parser.add_argument("--out", type=Path, default=BUNDLE / "models" / "model.pt")
    args = parser.parse_args()
    train(args.n, args.epochs, args.batch, args.lr, args.seed, args.out)


if __name__ == "__main__":
    main()
