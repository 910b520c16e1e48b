"""DeblurGAN's ResnetGenerator (Kupyn et al., CVPR 2018), laid out so the published weights load unchanged.

The module order (and therefore every state-dict key, `model.<i>...`) follows the authors' reference
`models/networks.py` at KupynOrest/DeblurGAN commit b15a520, with which `latest_net_G.pth` was trained:
InstanceNorm without affine or running stats (so convs carry biases), 9 residual blocks of
pad-conv-IN-ReLU-dropout-pad-conv-IN, two transposed-conv upsamplings, tanh, and the learned residual
clamp(input + output). 11,378,179 parameters. The repository's later HEAD has a broken one-conv block
(6.07 M parameters) that the weights do not fit; it is deliberately not followed.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .common import check_image_batch, crop_to, pad_to_multiple


def _norm(ch: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, use_dropout: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Width `base_channels` (DeblurGAN's ngf), `num_blocks` residual blocks at 4× that width (its n_blocks);
    inputs of any size are reflect-padded to a multiple of 4 (two stride-2 stages) and cropped back."""

    multiple = 4

    def __init__(
        self, base_channels: int = 64, num_blocks: int = 9, use_dropout: bool = True, learn_residual: bool = True
    ):
        super().__init__()
        b = base_channels
        self.learn_residual = learn_residual
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, b, 7), _norm(b), nn.ReLU(True)]
        for i in range(2):
            c = b * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(b * 4, use_dropout) for _ in range(num_blocks)]
        for i in range(2):
            c = b * 2 ** (2 - i)
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(c // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(b, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        padded, size = pad_to_multiple(x, self.multiple)
        out = self.model(padded)
        if self.learn_residual:
            out = torch.clamp(padded + out, -1.0, 1.0)
        return crop_to(out, size)
