"""Grad-CAM attention maps for 2D tasks (monai.visualize), scaled so that larger means more attention.

MONAI's default GradCAM post-processing maps each map's (min, max) to (1, 0), i.e. it inverts the map
(Project-MONAI/tutorials#1796); :func:`unit_range` maps (min, max) to (0, 1) instead.
"""

from __future__ import annotations

import copy

import torch
from monai.visualize import GradCAM


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each (C, H, W) map of a batch scaled linearly from its (min, max) to (0, 1); a flat map becomes 0."""
    shape = (-1,) + (1,) * (maps.dim() - 1)
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)
    return (maps - low) / (high - low).clamp_min(torch.finfo(maps.dtype).tiny)


def grad_cam(network: torch.nn.Module, layer: str, batch: torch.Tensor, class_idx: int) -> torch.Tensor:
    """(B, 1, H, W) Grad-CAM maps of output ``class_idx`` at ``layer``, each in [0, 1], on the input grid.

    GradCAM registers hooks it never removes, so it runs on a private copy, never on the serving network.
    """
    private = copy.deepcopy(network)
    with torch.enable_grad():
        heat = GradCAM(nn_module=private, target_layers=layer, postprocessing=unit_range)(batch, class_idx=class_idx)
    return heat.detach().float().cpu()
