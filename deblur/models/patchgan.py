"""DeblurGAN's PatchGAN critic: scores overlapping patches, so it judges local texture, not layout.

7×7 conv (64 ch, stride 2) + LeakyReLU; four conv + InstanceNorm + LeakyReLU(0.2) blocks, 128 → 256 → 512
→ 1024 (stride 2 for the first three, 1 for the last, as in pix2pix's PatchGAN); a 1×1 conv to one channel.
There is no sigmoid: WGAN-GP needs raw scores, and the LSGAN/vanilla losses apply their own link function.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .common import check_image_batch


class PatchGANCritic(nn.Module):
    def __init__(self, base_channels: int = 64):
        super().__init__()
        b = base_channels
        layers: list[nn.Module] = [nn.Conv2d(3, b, 7, stride=2, padding=3), nn.LeakyReLU(0.2, True)]
        widths = [b, 2 * b, 4 * b, 8 * b, 16 * b]
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            stride = 2 if i < 3 else 1
            layers += [
                nn.Conv2d(cin, cout, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(cout, affine=True),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        return self.model(x)
