"""Small MONAI ResNet backbone with two heads: BI-RADS density (4 logits) and suspicion (1 logit).

The forward pass returns one tensor (B, 5) = [density logits A-D, suspicion logit] so that the engine, the
bundle loader and monai.visualize.GradCAM (class_idx=4 for suspicion) treat it as a plain classifier.
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
        features = widths[-1]
        self.density = nn.Linear(2 * features, 4)
        self.suspicion = nn.Linear(2 * features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.act(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return torch.cat([self.density(pooled), self.suspicion(pooled)], dim=1)
