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

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_image_batch, crop_to, pad_to_multiple


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an N×C×H×W map (each pixel normalised alone), with a per-channel affine.

    Done as `layer_norm` on the channels-last view: one fused kernel in torch (2× faster on CPU than
    spelling out mean and variance). The ONNX export spells it out instead (`ChannelNorm`): ONNX Runtime's
    fused kernel does not scale over threads on rows this short.
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

    @torch.no_grad()
    def for_inference(self) -> NAFNetGenerator:
        """An equivalent copy (to fp32 rounding) whose ONNX graph ONNX Runtime runs faster: what the
        ONNX export uses; training and the torch engine keep the blocks as they are.

        Each block is rewritten by `InferenceNAFBlock`. Measured on the shipped model, one 800×800 image on
        this 2-core machine (ONNX Runtime 1.32, side by side): 0.85-0.87 s → 0.57-0.61 s with two threads,
        1.13 s → 0.97-1.06 s with one. The two-thread gain is mostly the LayerNorm: ONNX Runtime's
        LayerNormalization kernel over NAFNet's short rows (16-128 channels per pixel) gets *slower* with a
        second thread (25 ms → 40-50 ms on 800×800×16), so a multi-threaded engine spent 30 % of its time
        there.
        """
        model = copy.deepcopy(self)
        for stage in [*model.encoders, model.middle, *model.decoders]:
            for i, block in enumerate(stage):
                stage[i] = InferenceNAFBlock(block)
        return model.eval()


class ChannelNorm(nn.Module):
    """LayerNorm2d's normalisation without its affine, spelled as mean and variance over the channel axis
    of the N×C×H×W map: elementwise passes and reductions that ONNX Runtime spreads over its threads,
    where its fused LayerNormalization kernel does not (see `NAFNetGenerator.for_inference`).

    For fp16 (TensorRT): the scale is capped at 1/√eps, which it never exceeds in fp32, so a pixel whose
    channels are all equal gives 0, not 0·∞ = NaN, where eps (1e-6) flushes to zero; and the shipped model's
    |x − mean| stayed below 2.5 on real photos (3 Köhler, 3 Lai), so the squares are far from fp16's limit.
    `deblur compile` checks a TensorRT engine against ONNX Runtime fp32 before keeping it."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(1, keepdim=True)
        scale = torch.rsqrt((centred * centred).mean(1, keepdim=True) + self.eps)
        return centred * scale.clamp(max=self.eps**-0.5)


def _conv_from(weight: torch.Tensor, bias: torch.Tensor, like: nn.Conv2d, groups: int = 1) -> nn.Conv2d:
    """A conv holding `weight` and `bias`, on their device and dtype; built on the meta device, so no
    random initialisation runs (an export leaves torch's random state as it found it)."""
    in_channels = weight.shape[1] * groups
    conv = nn.Conv2d(
        in_channels,
        weight.shape[0],
        like.kernel_size,
        padding=like.padding,
        groups=groups,
        device="meta",
        dtype=weight.dtype,
    ).to_empty(device=weight.device)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def _fold_norm(norm: LayerNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """conv(w·n + b) as one 1×1 conv of n: the LayerNorm's per-channel affine moves into the conv."""
    w = conv.weight[:, :, 0, 0]
    return _conv_from((w * norm.weight)[:, :, None, None], conv.bias + w @ norm.bias, conv)


def _halves(conv: nn.Conv2d) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The conv producing the first and the second half of `conv`'s output channels (depthwise convs stay
    depthwise), so SimpleGate multiplies two outputs instead of splitting one."""
    n = conv.out_channels // 2
    groups = n if conv.groups > 1 else 1
    return tuple(_conv_from(conv.weight[s], conv.bias[s], conv, groups) for s in (slice(0, n), slice(n, 2 * n)))


def _scaled(conv: nn.Conv2d, scale: torch.Tensor) -> nn.Conv2d:
    """conv(h) · scale (per output channel) as one conv."""
    s = scale.reshape(-1)
    return _conv_from(conv.weight * s[:, None, None, None], conv.bias * s, conv, conv.groups)


class InferenceNAFBlock(nn.Module):
    """A NAFBlock with the same output, rearranged for ONNX Runtime (see `NAFNetGenerator.for_inference`):
    the LayerNorms' affines folded into the 1×1 convs after them and β, γ into the convs before them (four
    elementwise passes fewer per block); SimpleGate's halves computed by two convs each, so no Split (which
    ONNX Runtime cannot run in its blocked NCHWc layout, so every split paid two layout reorders); the
    normalisation as `ChannelNorm`."""

    def __init__(self, block: NAFBlock):
        super().__init__()
        self.norm1, self.norm2 = ChannelNorm(block.norm1.eps), ChannelNorm(block.norm2.eps)
        self.conv1a, self.conv1b = _halves(_fold_norm(block.norm1, block.conv1))
        self.conv2a, self.conv2b = _halves(block.conv2)
        self.sca = copy.deepcopy(block.sca)
        self.conv3 = _scaled(block.conv3, block.beta)
        self.conv4a, self.conv4b = _halves(_fold_norm(block.norm2, block.conv4))
        self.conv5 = _scaled(block.conv5, block.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm1(x)
        h = self.conv2a(self.conv1a(n)) * self.conv2b(self.conv1b(n))
        y = x + self.conv3(h * self.sca(h))
        n = self.norm2(y)
        return y + self.conv5(self.conv4a(n) * self.conv4b(n))
