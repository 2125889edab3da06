"""Train the lung-nodule UNet on procedural chest phantoms (seeded, CPU-friendly).

Run from the bundle folder::

    cd models/lung_nodule && ../../.venv/bin/python -m scripts.train --iterations 360

Phantoms are generated on the fly directly at the bundle spacing (configs/inference.json ``spacing``), kept in
a small pool that is refreshed as training goes, and cut into nodule-centred and background 48^3 crops with
MONAI's RandCropByPosNegLabeld. Loss: Dice + cross-entropy. Writes models/model.pt (state_dict).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, ScaleIntensityRanged

from scripts.phantom import generate_phantom

BUNDLE = Path(__file__).resolve().parents[1]
log = logging.getLogger("train")


def bundle_spacing() -> tuple[float, float, float]:
    """The resampling spacing of configs/inference.json, so training sees what inference sees."""
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    return tuple(float(s) for s in config["spacing"])


def phantom_sample(seed: int, spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> dict:
    """One phantom as a channel-first {image (HU), label (0/1)} pair on the bundle grid."""
    rng = np.random.default_rng(seed)
    p = generate_phantom(seed, shape=shape, spacing=spacing, n_nodules=int(rng.integers(2, 7)))
    return {"image": to_ras(p.hu.astype(np.float32)), "label": to_ras((p.labels > 0).astype(np.float32))}


def to_ras(array_kji: np.ndarray) -> np.ndarray:
    """A phantom [k, j, i] array (LPS axes) as Orientationd(axcodes="RAS") presents it at inference: (1, x, y, z)
    with x toward the patient's right and y anterior."""
    return np.ascontiguousarray(array_kji.transpose(2, 1, 0)[::-1, ::-1, :])[None]


def build_network() -> torch.nn.Module:
    return ConfigParser(json.loads((BUNDLE / "configs" / "inference.json").read_text())).get_parsed_content(
        "network_def"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=360)
    parser.add_argument("--pool", type=int, default=12, help="phantoms kept in memory")
    parser.add_argument("--refresh-every", type=int, default=5, help="iterations per newly generated phantom")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pos", type=int, default=3, help="nodule-centred crops per 4")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--init", type=Path, help="start from these weights (a fine-tuning stage)")
    parser.add_argument("--out", type=Path, default=BUNDLE / "models" / "model.pt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    spacing = bundle_spacing()
    shape = (64, 192, 192)  # 80 x 240 x 240 mm at 1.25 mm

    crops = Compose([
        ScaleIntensityRanged(keys="image", a_min=-1000, a_max=400, b_min=0.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(48, 48, 48),
                               pos=args.pos, neg=4 - args.pos, num_samples=4),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
    ])
    crops.set_random_state(seed=args.seed)
    next_seed = 1_000_000 * (args.seed + 1)
    pool = []
    for _ in range(args.pool):
        pool.append(phantom_sample(next_seed, spacing, shape))
        next_seed += 1

    net = build_network()
    if args.init is not None:
        net.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    net.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.iterations,
                                                    pct_start=0.1)
    start = time.perf_counter()
    running = []
    for it in range(1, args.iterations + 1):
        if it % args.refresh_every == 0:
            pool[int(rng.integers(len(pool)))] = phantom_sample(next_seed, spacing, shape)
            next_seed += 1
        samples = crops(pool[int(rng.integers(len(pool)))])
        image = torch.stack([torch.as_tensor(s["image"]) for s in samples])
        label = torch.stack([torch.as_tensor(s["label"]) for s in samples])
        optimizer.zero_grad()
        loss = loss_fn(net(image), label)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running.append(float(loss.detach()))
        if it % 25 == 0 or it == args.iterations:
            log.info("iteration %d/%d loss %.4f elapsed %.0f s", it, args.iterations, np.mean(running[-25:]),
                     time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    log.info("saved %s after %.0f s", args.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
