"""The mammography bundle's training helpers: lesion-map targets and augmentation that keeps them aligned."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "mammography"
sys.path.insert(0, str(BUNDLE))
from scripts.net import MammoNet
from scripts.phantom import Phantom
from scripts.train import GRID, SIZE, augment, lesion_cells

sys.path.remove(str(BUNDLE))
for _name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
    del sys.modules[_name]  # the bundle loader imports its own ``scripts`` package


def _phantom(boxes: list[tuple[int, int, int, int]]) -> Phantom:
    return Phantom(np.zeros((SIZE, SIZE), np.uint16), density=0, view="CC", laterality="L",
                   lesions=[{"type": "round_mass", "box": b} for b in boxes])


def test_lesion_cells_cover_exactly_the_cells_a_box_overlaps() -> None:
    cells = lesion_cells(_phantom([(92, 182, 108, 195)]))
    assert cells.nonzero().tolist() == [[5, 11], [5, 12], [6, 11], [6, 12]]
    assert lesion_cells(_phantom([])).sum() == 0


def test_augment_flips_image_and_lesion_cells_together() -> None:
    x = torch.zeros(64, 1, SIZE, SIZE)
    x[:, :, :, :16] = 1.0  # a bright stripe in grid column 0
    cells = torch.zeros(64, 1, GRID, GRID)
    cells[:, :, :, 0] = 1.0
    out, out_cells = augment(x, cells, torch.Generator().manual_seed(0), invert_p=0.0)
    left_brighter = out[:, 0, :, :16].mean(dim=(1, 2)) > out[:, 0, :, -16:].mean(dim=(1, 2))
    assert torch.equal(left_brighter, out_cells[:, 0, 0, 0] == 1)
    assert 0 < left_brighter.sum() < 64  # both flipped and unflipped samples occur


def test_network_suspicion_is_the_maximum_of_its_lesion_map() -> None:
    net = MammoNet().eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        density, lesion_map = net.maps(x)
        out = net(x)
    assert lesion_map.shape == (2, 1, GRID, GRID)
    assert torch.allclose(out, torch.cat([density, lesion_map.amax(dim=(2, 3))], dim=1))
