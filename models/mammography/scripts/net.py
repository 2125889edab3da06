"""MammoNet: a small MONAI ResNet with two outputs, BI-RADS density (4 logits) and suspicion (1 logit).

The forward pass returns one tensor (B, 5) = [density logits A-D, suspicion logit] so that the engine, the
bundle loader and monai.visualize.GradCAM (class_idx=4 for suspicion) treat it as a plain classifier.

Density comes from the globally pooled (mean and max) last-stage features. Suspicion is local, as a lesion is
a few millimetres of a breast: a 3x3 convolution on the ``layer3`` features (1/16 of the input, 16 x 16 for
256 x 256) gives a lesion-logit map, and the suspicion logit is its maximum (multiple-instance pooling: the
view is as suspicious as its most suspicious region). ``maps(x)`` returns the density logits and that map;
training supervises the map with the phantoms' lesion boxes. Grad-CAM on ``lesion_map`` (the bundle's
``gradcam_layer``) for the suspicion logit is that map, rectified and upsampled: it points at the region that
drove the score.
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn


class MammoNet(nn.Module):
    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.backbone = ResNet(
            block="basic", layers=[1, 1, 1, 1], block_inplanes=list(widths), spatial_dims=2,
            n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, feed_forward=False,
        )
        self.density = nn.Linear(2 * widths[-1], 4)
        self.lesion_map = nn.Conv2d(widths[2], 1, kernel_size=3, padding=1)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> density logits (B, 4) and lesion-logit map (B, 1, H/16, W/16)."""
        b = self.backbone
        x = b.maxpool(b.act(b.bn1(b.conv1(x))))
        local = b.layer3(b.layer2(b.layer1(x)))
        deep = b.layer4(local)
        pooled = torch.cat([deep.mean(dim=(2, 3)), deep.amax(dim=(2, 3))], dim=1)
        return self.density(pooled), self.lesion_map(local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        density, lesion = self.maps(x)
        return torch.cat([density, lesion.amax(dim=(2, 3))], dim=1)
