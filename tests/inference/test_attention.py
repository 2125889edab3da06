"""Grad-CAM maps are scaled so that the largest value marks the most attention (not MONAI's inverted default)."""

from __future__ import annotations

import pytest
import torch

from inference.attention import _cam_for, grad_cam, unit_range


class _SumOfActivations(torch.nn.Module):
    """Score = the sum of a 1x1 convolution's (identity) output: Grad-CAM should equal the input."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Conv2d(1, 1, 1)
        torch.nn.init.ones_(self.layer.weight)
        torch.nn.init.zeros_(self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).sum(dim=(1, 2, 3))[:, None]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_heat_map_is_largest_where_the_network_attends_not_inverted() -> None:
    x = torch.rand(2, 1, 16, 16) * 0.1
    x[0, 0, 3, 4] = x[1, 0, 10, 12] = 5.0
    network = _SumOfActivations()
    heat = grad_cam(network, "layer", x, class_idx=0)
    assert heat.shape == (2, 1, 16, 16)
    assert [divmod(int(h.argmax()), 16) for h in heat] == [(3, 4), (10, 12)]
    assert float(heat.max()) == pytest.approx(1.0) and float(heat.min()) == pytest.approx(0.0)
    assert not network.layer._forward_hooks and not network.layer._backward_hooks  # the serving copy is untouched


def test_unit_range_scales_each_map_and_leaves_a_flat_map_at_zero() -> None:
    maps = torch.stack([torch.arange(4.0).reshape(1, 2, 2), torch.full((1, 2, 2), 3.0)])
    scaled = unit_range(maps)
    assert scaled[0].flatten().tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert scaled[1].abs().max() == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_private_copy_is_made_once_and_keeps_nothing_between_calls() -> None:
    network = _SumOfActivations()
    x = torch.rand(1, 1, 8, 8)
    first = grad_cam(network, "layer", x, class_idx=0)
    cam, _ = _cam_for(network, "layer")
    hooked = cam.nn_module
    second = grad_cam(network, "layer", x, class_idx=0)
    assert _cam_for(network, "layer")[0] is cam and cam.nn_module is hooked
    assert torch.equal(first, second)  # no hooks piled up, no gradients carried over
    assert len(hooked.model.layer._forward_hooks) == 1 and len(hooked.model.layer._backward_hooks) == 1
    assert not hooked.activations and not hooked.gradients
    assert all(p.grad is None for p in hooked.model.parameters())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_changed_serving_network_gets_a_new_copy() -> None:
    """Another network object (a reloaded bundle) never sees a stale copy's weights."""
    x = torch.rand(1, 1, 8, 8)
    a, b = _SumOfActivations(), _SumOfActivations()
    torch.nn.init.constant_(b.layer.weight, -1.0)
    grad_cam(a, "layer", x, class_idx=0)
    assert _cam_for(b, "layer")[0] is not _cam_for(a, "layer")[0]
    assert float(_cam_for(b, "layer")[0].nn_module.model.layer.weight) == -1.0
