"""BoneAgeNet: a small MONAI 2D ResNet on the radiograph plus the patient's sex, regressing bone age.

Image and sex travel as ONE tensor ``x`` of shape (B, 2, H, W): channel 0 is the pre-processed radiograph,
channel 1 a constant plane holding the sex code (1 = male, 0 = female, 0.5 = unknown). One input tensor is
what every radinfer runner (torch, TorchScript, ONNX, dynamic batching) and MONAI's Grad-CAM pass through,
so nothing special is needed to batch many radiographs. ``pack(image, sex)`` builds ``x``.

The ResNet sees only the image; its pooled features are concatenated with the sex code before the MLP head,
as the strongest published bone-age models do (sex enters late, the skeleton is read the same way).
The output is bone age in months (the network predicts months / ``AGE_SCALE``).
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

AGE_SCALE = 100.0


def pack(image: torch.Tensor, sex: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) images and (B,) sex codes -> the (B, 2, H, W) network input."""
    plane = sex.to(image.dtype).reshape(-1, 1, 1, 1).expand(-1, 1, *image.shape[2:])
    return torch.cat([image, plane], dim=1)


class BoneAgeNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), layers: tuple[int, ...] = (1, 1, 1, 1),
                 hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = ResNet(block="basic", layers=list(layers), block_inplanes=list(widths), spatial_dims=2,
                               n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, feed_forward=False)
        self.head = nn.Sequential(
            nn.Linear(widths[-1] + 1, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, H, W) -> (B, 1) bone age in months."""
        features = self.backbone(x[:, :1])
        sex = x[:, 1].mean(dim=(1, 2)).unsqueeze(1)
        return self.head(torch.cat([features, sex], dim=1)) * AGE_SCALE
