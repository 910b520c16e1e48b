"""The generator of "DeblurGAN:深度解析与图像去模糊复现实践" (DeblurGAN: an analysis and a reproduction), the
article this project started from, whose training recipe is deblur/configs/gopro.yaml: a 7-level U-Net with a
dilated feature pyramid and a no-checkerboard decoder.

Encoder: 7 stride-2 conv+ReLU blocks, widths b, 2b, 4b, 8b, 8b, 8b, 8b (b = base_channels; the
article's 64 gives 64 → 512). A feature pyramid takes levels 3 and 5 through dilated 3×3 convs (dilation 2 and 4),
maps both to the level-3 width with lateral 1×1 convs, upsamples level 5 to level-3 size, adds them and
smooths with a 3×3 conv; the result is added to the level-3 skip. (The article's sketch adds 256- and
512-channel maps of different sizes, which cannot work; lateral convs are the FPN way to make it consistent.)
Decoder: 7 blocks of bilinear ×2 upsampling + 3×3 conv (never transposed convs: the article's fix for
checkerboard artefacts), each followed by concatenation with the matching skip and a 3×3 fusing conv.
A full-resolution stem conv (on by default) gives the last decoder block image-resolution features to
fuse with, instead of the raw RGB input; without it the finest detail has a single 3×3 conv to go through.
Global residual: output = clamp(input + tanh(head)), so the network learns the correction, in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_image_batch, crop_to, pad_to_multiple

LEVELS = 7


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
        nn.ReLU(inplace=True),
    )


class FeaturePyramid(nn.Module):
    """Dilated context on encoder levels 3 and 5, merged at level-3 resolution and width."""

    def __init__(self, c3: int, c5: int):
        super().__init__()
        self.dilated3 = _conv(c3, c3, dilation=2)
        self.dilated5 = _conv(c5, c5, dilation=4)
        self.lateral3 = nn.Conv2d(c3, c3, 1)
        self.lateral5 = nn.Conv2d(c5, c3, 1)
        self.smooth = _conv(c3, c3)

    def forward(self, x3: torch.Tensor, x5: torch.Tensor) -> torch.Tensor:
        p3 = self.lateral3(self.dilated3(x3))
        p5 = self.lateral5(self.dilated5(x5))
        p5 = F.interpolate(p5, size=p3.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(p3 + p5)


class UpBlock(nn.Module):
    """Bilinear ×2 + 3×3 conv, then fuse with the skip connection."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up_conv = _conv(cin, cout)
        self.fuse = _conv(cout + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([self.up_conv(x), skip], dim=1))


class UNetFPNGenerator(nn.Module):
    """Any input size: reflect-padded to a multiple of 2**7 = 128 and cropped back."""

    multiple = 2**LEVELS

    def __init__(self, base_channels: int = 64, stem: bool = True):
        super().__init__()
        if base_channels < 1:
            raise ValueError(f"base_channels must be positive, got {base_channels}")
        b = base_channels
        self.widths = [b, 2 * b, 4 * b, 8 * b, 8 * b, 8 * b, 8 * b]
        self.base_channels = b
        # Level 0: full-resolution features (a stem conv) or, without the stem, the input image itself.
        level0 = b if stem else 3
        self.stem = _conv(3, level0) if stem else nn.Identity()
        cins = [level0] + self.widths[:-1]
        self.encoder = nn.ModuleList(_conv(ci, co, stride=2) for ci, co in zip(cins, self.widths))
        self.pyramid = FeaturePyramid(self.widths[2], self.widths[4])
        # Decoder level k goes from encoder level k+1's resolution up to level k's (level 0 = full size).
        skips = [level0] + self.widths[:-1]
        outs = [b] + self.widths[:-1]
        self.decoder = nn.ModuleList(
            UpBlock(self.widths[k] if k == LEVELS - 1 else outs[k + 1], skips[k], outs[k]) for k in range(LEVELS)
        )
        self.head = nn.Conv2d(outs[0], 3, 3, padding=1)
        # Start as the identity map (tanh(0) = 0 residual): training begins at the blurred input's PSNR
        # instead of at noise, which matters for short CPU runs.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        padded, size = pad_to_multiple(x, self.multiple)
        feats = []
        h = level0 = self.stem(padded)
        for block in self.encoder:
            h = block(h)
            feats.append(h)
        feats[2] = feats[2] + self.pyramid(feats[2], feats[4])
        skips = [level0] + feats[:-1]
        h = feats[-1]
        for k in reversed(range(LEVELS)):
            h = self.decoder[k](h, skips[k])
        out = torch.clamp(padded + torch.tanh(self.head(h)), -1.0, 1.0)
        return crop_to(out, size)
