"""Grad-CAM maps are scaled so that the largest value marks the most attention (not MONAI's inverted default)."""

from __future__ import annotations

import pytest
import torch

from inference.attention import grad_cam, unit_range


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
