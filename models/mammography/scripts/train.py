"""Train MammoNet on procedural mammogram phantoms (seeded, CPU, one thread).

Run from the bundle folder:  ``python -m scripts.train [--steps 900] [--pool 1500] [--refresh 4]``

Training sees single views (CC or MLO, left or right, density A-D uniform, a lesion in half of them) held in
an in-memory pool that is refreshed as training goes: after every step ``--refresh`` views of the pool are
replaced by newly generated ones. Views pass through the bundle's own ``preprocessing``
(configs/inference.json), so training sees what inference sees. Augmentation: horizontal flip (laterality must
not matter), gamma, contrast/brightness, additive noise and, rarely, inversion. Loss: cross-entropy on the
density logits, binary cross-entropy on the suspicion logit and, as the lesion boxes are known, binary
cross-entropy on the network's lesion-logit map against the grid cells the boxes cover. Writes models/model.pt (a state_dict), logs
to docs/training.log and prints the weights' sha256 for the pin in configs/radinfer.json.
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
from torch.nn import functional

from scripts.net import MammoNet
from scripts.phantom import DENSITY_CLASSES, LATERALITIES, LESION_TYPES, VIEWS, Phantom, generate_view

BUNDLE = Path(__file__).resolve().parents[1]
SIZE = 256  # phantom size = network input size: calcifications are drawn at the resolution the network sees
GRID = SIZE // 16  # the lesion-logit map's size (MammoNet.maps)
LESION_SHARE = 0.5
MAP_POS_WEIGHT = 10.0  # lesion cells are few: weight them up in the map loss


def config() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "inference.json")
    return parser


def network() -> MammoNet:
    return config().get_parsed_content("network_def", instantiate=True)


def preprocess(phantom: Phantom, preprocessing) -> torch.Tensor:
    """A phantom's stored image (larger = brighter) through the bundle's preprocessing: (1, S, S) float32."""
    image = MetaTensor(torch.from_numpy(phantom.image.astype(np.float32))[None])
    return torch.as_tensor(preprocessing({"image": image})["image"])


def lesion_cells(phantom: Phantom) -> torch.Tensor:
    """(GRID, GRID) target of the lesion map: 1 where a grid cell overlaps a lesion box."""
    cells = torch.zeros(GRID, GRID)
    step = SIZE / GRID
    for lesion in phantom.lesions:
        r0, c0, r1, c1 = lesion["box"]
        cells[int(r0 // step):int(-(-r1 // step)), int(c0 // step):int(-(-c1 // step))] = 1.0
    return cells


def random_view(rng: np.random.Generator, lesion_share: float = LESION_SHARE) -> Phantom:
    """One training view: uniform density, view and laterality; a random lesion type in ``lesion_share`` of them."""
    lesion = str(rng.choice(LESION_TYPES)) if rng.random() < lesion_share else None
    return generate_view(rng, density=int(rng.integers(len(DENSITY_CLASSES))), view=str(rng.choice(VIEWS)),
                         laterality=str(rng.choice(LATERALITIES)), lesion=lesion, size=SIZE)


class Pool:
    """Pre-processed views with their labels; ``refresh(k)`` replaces k random entries with new views."""

    def __init__(self, n: int, rng: np.random.Generator, lesion_share: float = LESION_SHARE) -> None:
        self.rng = rng
        self.lesion_share = lesion_share
        self.preprocessing = config().get_parsed_content("preprocessing")
        self.images = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.float16)
        self.density = torch.zeros(n, dtype=torch.long)
        self.lesion = torch.zeros(n)
        self.cells = torch.zeros(n, 1, GRID, GRID)
        self.generated = 0
        for k in range(n):
            self._fill(k)

    def _fill(self, k: int) -> None:
        phantom = random_view(self.rng, self.lesion_share)
        self.images[k] = preprocess(phantom, self.preprocessing).to(torch.float16)
        self.density[k] = phantom.density
        self.lesion[k] = float(phantom.lesion_present)
        self.cells[k, 0] = lesion_cells(phantom)
        self.generated += 1

    def refresh(self, k: int) -> None:
        for index in self.rng.choice(len(self.images), size=k, replace=False):
            self._fill(int(index))


def augment(x: torch.Tensor, cells: torch.Tensor, generator: torch.Generator,
            invert_p: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip (images and lesion cells), gamma, contrast/brightness, noise and rare inversion on a (B, 1, H, W)
    batch scaled to [0, 1] between its 0.5 and 99.5 percentiles. Values above 1 (a mass over dense tissue, a
    calcification) are kept: clipping them would hide exactly what the suspicion head must find."""
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=generator)

    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    cells = torch.where(flip.view(b, 1, 1, 1), cells.flip(-1), cells)
    x = x.clamp(min=0) ** torch.exp(torch.randn(b, 1, 1, 1, generator=generator) * 0.2)
    x = (x - 0.5) * uniform(0.8, 1.2) + 0.5 + uniform(-0.06, 0.06)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.02)
    x = x.clamp(min=0)
    invert = (torch.rand(b, generator=generator) < invert_p).view(b, 1, 1, 1)
    return torch.where(invert, 1.0 - x, x), cells


def loss_terms(density_logits: torch.Tensor, lesion_map: torch.Tensor, density: torch.Tensor,
               lesion: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Density cross-entropy, suspicion BCE (on the map's maximum, the network's suspicion logit), map BCE."""
    ce = functional.cross_entropy(density_logits, density)
    bce = functional.binary_cross_entropy_with_logits(lesion_map.amax(dim=(2, 3))[:, 0], lesion)
    map_bce = functional.binary_cross_entropy_with_logits(lesion_map, cells,
                                                          pos_weight=torch.tensor(MAP_POS_WEIGHT))
    return ce, bce, map_bce


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    log_path = args.log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("w")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    start = time.perf_counter()
    log(f"args {json.dumps({k: str(v) for k, v in vars(args).items()})}")
    pool = Pool(args.pool, np.random.default_rng(args.seed), args.lesion_share)
    log(f"pool of {args.pool} views generated in {time.perf_counter() - start:.0f} s")
    net = network()
    if args.init is not None:
        net.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
        log(f"initialised from {args.init} (sha256 {hashlib.sha256(args.init.read_bytes()).hexdigest()})")
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=args.steps,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    window: list[tuple[float, ...]] = []
    net.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(pool.images), (args.batch,), generator=generator)
        x, cells = augment(pool.images[idx].float(), pool.cells[idx], generator)
        density_logits, lesion_map = net.maps(x)
        ce, bce, map_bce = loss_terms(density_logits, lesion_map, pool.density[idx], pool.lesion[idx], cells)
        optimiser.zero_grad()
        (ce + bce + map_bce).backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            accuracy = (density_logits.argmax(1) == pool.density[idx]).float().mean().item()
            suspicious = (lesion_map.amax(dim=(1, 2, 3)) > 0).float()
            lesion_acc = (suspicious == pool.lesion[idx]).float().mean().item()
        window.append((ce.item(), bce.item(), map_bce.item(), accuracy, lesion_acc))
        pool.refresh(args.refresh)
        out_of_time = args.max_seconds is not None and time.perf_counter() - start > args.max_seconds
        if step % args.log_every == 0 or step == args.steps or out_of_time:
            ce_m, bce_m, map_m, acc_m, les_m = np.mean(window, axis=0)
            window.clear()
            log(f"step {step}/{args.steps} ce {ce_m:.3f} bce {bce_m:.3f} map_bce {map_m:.3f} density_acc {acc_m:.3f} "
                f"lesion_acc {les_m:.3f} lr {schedule.get_last_lr()[0]:.2e} views {pool.generated} "
                f"elapsed {time.perf_counter() - start:.0f} s")
        if out_of_time:
            log(f"stopped at step {step}: --max-seconds {args.max_seconds} reached")
            break
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    summary = {"steps": step, "batch": args.batch, "pool": args.pool, "refresh": args.refresh,
               "views_generated": pool.generated, "seed": args.seed,
               "wall_s": round(time.perf_counter() - start, 1), "sha256": digest}
    log(json.dumps(summary))
    log_file.close()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pool", type=int, default=1500, help="pre-processed views kept in memory")
    parser.add_argument("--refresh", type=int, default=4, help="views replaced by new ones after every step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=20251122)
    parser.add_argument("--lesion-share", type=float, default=LESION_SHARE, help="share of views with a lesion")
    parser.add_argument("--init", type=Path, default=None, help="state_dict to continue training from")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop (and save) after this much wall time, even before --steps")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=BUNDLE / "models" / "model.pt")
    parser.add_argument("--log", type=Path, default=BUNDLE / "docs" / "training.log")
    args = parser.parse_args()
    train(args)


if __name__ == "__main__":
    main()
