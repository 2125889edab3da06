"""Train the lung-nodule UNet on procedural chest phantoms (seeded; CPU or GPU).

Run from the bundle folder::

    cd models/lung_nodule && ../../.venv/bin/python -m scripts.train --iterations 360

Phantoms are generated on the fly directly at the bundle spacing (configs/inference.json ``spacing``) by
``--workers`` data-loader processes, each keeping a small pool that it refreshes as training goes. Each pool
phantom is cut into ``--crops`` 48^3 crops by MONAI's RandCropByLabelClassesd, centred (within ``--jitter``
voxels) on background, nodule and "hard negative" voxels (dense lung tissue that is not nodule: vessels, airway walls, pleura) in the ratio
``--ratios``; a fourth ratio adds crops centred on *thick* hard negatives (more than ``THICK_HARD_MM`` deep in
dense non-nodule lung tissue: inside vessels wider than 4 mm, which look most like nodules). ``--small-share`` of phantoms draw their nodules from 3-10 mm only (small nodules over-sampled),
and, independently, ``--subsolid-share`` of them only part-solid and ground-glass nodules.
Loss: Dice + cross-entropy. Writes models/model.pt (state_dict).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    RandCropByLabelClassesd,
    RandFlipd,
    RandSpatialCropd,
    ScaleIntensityRanged,
)
from scipy import ndimage
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scripts.phantom import NODULE_TYPES, generate_phantom

BUNDLE = Path(__file__).resolve().parents[1]
PHANTOM_SHAPE = (64, 192, 192)  # 80 x 240 x 240 mm at 1.25 mm
CROP = (48, 48, 48)
SMALL_RANGE_MM = (3.0, 10.0)
SUBSOLID_TYPES = ("part-solid", "ground-glass")
HARD_NEGATIVE_HU = -500.0
THICK_HARD_MM = 2.0
log = logging.getLogger("train")


def bundle_spacing() -> tuple[float, float, float]:
    """The resampling spacing of configs/inference.json, so training sees what inference sees."""
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    return tuple(float(s) for s in config["spacing"])


def phantom_sample(seed: int, spacing: tuple[float, float, float], small: bool, subsolid_share: float = 0.0,
                   thick_class: bool = False) -> dict:
    """One phantom as a channel-first {image (HU), label} pair on the bundle grid.

    With probability ``subsolid_share`` (drawn from the phantom's own seed) its nodules are all part-solid or
    ground-glass.

    ``label`` holds crop classes: 0 background, 1 nodule, 2 hard negative (lung voxels above -500 HU that are
    not nodule) and, with ``thick_class``, 3 for those more than ``THICK_HARD_MM`` deep in that tissue; the loss
    sees ``label == 1``.
    """
    rng = np.random.default_rng(seed)
    n_nodules = int(rng.integers(2, 7))
    types = SUBSOLID_TYPES if rng.random() < subsolid_share else NODULE_TYPES
    p = generate_phantom(seed, shape=PHANTOM_SHAPE, spacing=spacing, n_nodules=n_nodules, nodule_types=types,
                         diameter_range_mm=SMALL_RANGE_MM if small else (3.0, 30.0))
    classes = (p.labels > 0).astype(np.float32)
    hard = (classes == 0) & p.lungs & (p.hu > HARD_NEGATIVE_HU)
    classes[hard] = 2.0
    if thick_class:
        classes[ndimage.distance_transform_edt(hard, sampling=spacing) > THICK_HARD_MM] = 3.0
    return {"image": to_ras(p.hu.astype(np.float32)), "label": to_ras(classes)}


def to_ras(array_kji: np.ndarray) -> np.ndarray:
    """A phantom [k, j, i] array (LPS axes) as Orientationd(axcodes="RAS") presents it at inference: (1, x, y, z)
    with x toward the patient's right and y anterior."""
    return np.ascontiguousarray(array_kji.transpose(2, 1, 0)[::-1, ::-1, :])[None]


def build_network() -> torch.nn.Module:
    return ConfigParser(json.loads((BUNDLE / "configs" / "inference.json").read_text())).get_parsed_content(
        "network_def"
    )


class PhantomCrops(IterableDataset):
    """Endless (image, label) crop stacks; every worker has its own seeds, pool and random state."""

    def __init__(self, args: argparse.Namespace, spacing: tuple[float, float, float]) -> None:
        self.args, self.spacing = args, spacing

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        args = self.args
        seed = args.seed * 1000 + worker
        rng = np.random.default_rng(seed)
        crops = Compose([
            ScaleIntensityRanged(keys="image", a_min=-1000, a_max=400, b_min=0.0, b_max=1.0, clip=True),
            RandCropByLabelClassesd(keys=["image", "label"], label_key="label",
                                    spatial_size=tuple(c + 2 * args.jitter for c in CROP),
                                    ratios=args.ratios, num_classes=len(args.ratios), num_samples=args.crops, warn=False,
                                    allow_smaller=True),  # a jittered crop may be taller than the phantom
            RandSpatialCropd(keys=["image", "label"], roi_size=CROP, random_size=False),
            RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        ])
        crops.set_random_state(seed=seed)
        next_seed = 1_000_000 * (args.seed + 1) + 10_000 * worker

        def fresh() -> dict:
            nonlocal next_seed
            next_seed += 1
            return phantom_sample(next_seed - 1, self.spacing, bool(rng.random() < args.small_share),
                                  args.subsolid_share, thick_class=len(args.ratios) == 4)

        pool = [fresh() for _ in range(args.pool)]
        for step in range(1, 1 << 62):
            if step % args.refresh_every == 0:
                pool[int(rng.integers(len(pool)))] = fresh()
            samples = crops(pool[int(rng.integers(len(pool)))])
            image = torch.stack([torch.as_tensor(s["image"]) for s in samples])
            label = torch.stack([torch.as_tensor(s["label"]) == 1 for s in samples]).float()
            yield image, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=360)
    parser.add_argument("--pool", type=int, default=12, help="phantoms kept in memory per worker")
    parser.add_argument("--refresh-every", type=int, default=5, help="crop stacks per newly generated phantom")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="data-loader processes (0: in the main process)")
    parser.add_argument("--batch", type=int, default=1, help="phantom crop stacks per iteration")
    parser.add_argument("--crops", type=int, default=4, help="crops per phantom crop stack")
    parser.add_argument("--jitter", type=int, default=0,
                        help="voxels by which the crop's centre class voxel may sit off the crop centre (the "
                        "sliding window meets nodules anywhere in it)")
    parser.add_argument("--ratios", type=float, nargs="+", default=(1.0, 3.0, 0.0),
                        help="crop-centre class ratios: background, nodule, hard negative[, thick hard negative]")
    parser.add_argument("--small-share", type=float, default=0.0, help="share of phantoms with 3-10 mm nodules")
    parser.add_argument("--subsolid-share", type=float, default=0.0,
                        help="share of phantoms with part-solid and ground-glass nodules only")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init", type=Path, help="start from these weights (a fine-tuning stage)")
    parser.add_argument("--out", type=Path, default=BUNDLE / "models" / "model.pt")
    args = parser.parse_args()
    if len(args.ratios) not in (3, 4):
        parser.error(f"--ratios takes 3 or 4 values, got {len(args.ratios)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    log.info("arguments %s", vars(args))

    loader = DataLoader(PhantomCrops(args, bundle_spacing()), batch_size=args.batch, num_workers=args.workers,
                        persistent_workers=args.workers > 0)
    net = build_network()
    if args.init is not None:
        net.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    net.to(device).train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.iterations,
                                                    pct_start=0.1)
    start = time.perf_counter()
    running = []
    batches = iter(loader)
    for it in range(1, args.iterations + 1):
        image, label = next(batches)
        image, label = image.flatten(0, 1).to(device), label.flatten(0, 1).to(device)
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
    torch.save(net.cpu().state_dict(), args.out)
    log.info("saved %s after %.0f s", args.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
