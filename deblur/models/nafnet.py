"""NAFNet (Chen, Chu, Zhang and Sun, "Simple Baselines for Image Restoration", ECCV 2022): restoration
quality per FLOP, which is what a CPU needs.

A U-Net of NAF blocks. Each block is LayerNorm → 1×1 conv → depthwise 3×3 conv → SimpleGate (split the
channels in two and multiply the halves: the nonlinearity, no activation function anywhere) → simplified
channel attention (global average pool → 1×1 conv → channel-wise scale) → 1×1 conv, then a second
LayerNorm → 1×1 → SimpleGate → 1×1 feed-forward; both branches enter the residual through a learned
per-channel scale that starts at zero, so every block starts as the identity. Downsampling is a 2×2
stride-2 conv, upsampling a 1×1 conv + pixel shuffle. Global residual: output = clamp(input + tail).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_image_batch, crop_to, pad_to_multiple


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an N×C×H×W map (each pixel normalised alone), with a per-channel affine.

    Done as `layer_norm` on the channels-last view: one fused kernel (2× faster on CPU than spelling out
    mean and variance) that ONNX exports as LayerNormalization.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        c, e = channels, channels * expand
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, e, 1)
        self.conv2 = nn.Conv2d(e, e, 3, padding=1, groups=e)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e // 2, e // 2, 1))
        self.conv3 = nn.Conv2d(e // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, e, 1)
        self.conv5 = nn.Conv2d(e // 2, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = simple_gate(self.conv2(self.conv1(self.norm1(x))))
        h = self.conv3(h * self.sca(h))
        y = x + h * self.beta
        h = self.conv5(simple_gate(self.conv4(self.norm2(y))))
        return y + h * self.gamma


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(NAFBlock(channels) for _ in range(blocks)))


class NAFNetGenerator(nn.Module):
    """Width `base_channels`, doubling at each of len(enc_blocks) downsamplings; any input size
    (reflect-padded to a multiple of 2**levels and cropped back)."""

    def __init__(
        self,
        base_channels: int = 16,
        enc_blocks: list[int] | tuple[int, ...] = (1, 1, 1, 8),
        middle_blocks: int = 1,
        dec_blocks: list[int] | tuple[int, ...] = (1, 1, 1, 1),
    ):
        super().__init__()
        if base_channels < 1:
            raise ValueError(f"base_channels must be positive, got {base_channels}")
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"enc_blocks {list(enc_blocks)} and dec_blocks {list(dec_blocks)} need the same length")
        self.multiple = 2 ** len(enc_blocks)
        c = base_channels
        self.intro = nn.Conv2d(3, c, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        for n in enc_blocks:
            self.encoders.append(_stage(c, n))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = _stage(c, middle_blocks)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(_stage(c, n))
        self.ending = nn.Conv2d(c, 3, 3, padding=1)
        # Zero tail: the whole net starts as the identity (its blocks already do, through β and γ), so the
        # first steps refine the blurred input instead of undoing a random residual (what short CPU runs need).
        nn.init.zeros_(self.ending.weight)
        nn.init.zeros_(self.ending.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        padded, size = pad_to_multiple(x, self.multiple)
        h = self.intro(padded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            h = encoder(h)
            skips.append(h)
            h = down(h)
        h = self.middle(h)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            h = decoder(up(h) + skip)
        out = torch.clamp(padded + self.ending(h), -1.0, 1.0)
        return crop_to(out, size)
