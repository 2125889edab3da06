"""Grad-CAM attention maps for 2D tasks (monai.visualize), scaled so that larger means more attention.

MONAI's default GradCAM post-processing maps each map's (min, max) to (1, 0), i.e. it inverts the map
(Project-MONAI/tutorials#1796); :func:`unit_range` maps (min, max) to (0, 1) instead.
"""

from __future__ import annotations

import copy
import threading
import weakref

import torch
from monai.visualize import GradCAM

_cams: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, tuple[GradCAM, threading.Lock]]] = (
    weakref.WeakKeyDictionary()
)
_cams_lock = threading.Lock()


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each (C, H, W) map of a batch scaled linearly from its (min, max) to (0, 1); a flat map becomes 0."""
    shape = (-1,) + (1,) * (maps.dim() - 1)
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)
    return (maps - low) / (high - low).clamp_min(torch.finfo(maps.dtype).tiny)


def grad_cam(network: torch.nn.Module, layer: str, batch: torch.Tensor, class_idx: int) -> torch.Tensor:
    """(B, 1, H, W) Grad-CAM maps of output ``class_idx`` at ``layer``, each in [0, 1], on the input grid.

    GradCAM registers hooks it never removes, so it runs on a private copy of ``network``, never on the serving
    one. The copy is made once per network and layer (a deep copy per request cost more than the map on small
    networks) and used by one request at a time: its hooks keep the last call's activations and gradients.
    """
    cam, lock = _cam_for(network, layer)
    with lock:
        try:
            with torch.enable_grad():
                heat = cam(batch, class_idx=class_idx)
            return heat.detach().float().cpu()
        finally:  # hold no activations, gradients or weight gradients between requests
            cam.nn_module.activations.clear()
            cam.nn_module.gradients.clear()
            cam.nn_module.score = None
            cam.nn_module.model.zero_grad(set_to_none=True)


def _cam_for(network: torch.nn.Module, layer: str) -> tuple[GradCAM, threading.Lock]:
    with _cams_lock:
        per_layer = _cams.setdefault(network, {})
        if layer not in per_layer:
            private = copy.deepcopy(network)
            per_layer[layer] = (GradCAM(nn_module=private, target_layers=layer, postprocessing=unit_range),
                                threading.Lock())
        return per_layer[layer]
