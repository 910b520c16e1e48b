"""DeblurGAN-v2's FPN-MobileNet generator (Kupyn, Martyniuk, Wu and Wang, ICCV 2019), laid out so the
published `fpn_mobilenet.h5` loads strictly: DeblurGAN-v2's "light" generator.

A MobileNetV2 backbone (inverted residuals, BatchNorm, ReLU6) feeds a feature pyramid: lateral 1×1 convs
on five encoder levels, a top-down path with nearest ×2 upsampling and 3×3 conv + InstanceNorm + ReLU
smoothing, four two-conv heads upsampled to 1/4 resolution and concatenated, then two upsample-and-fuse
stages back to full size, a 3×3 conv, tanh, and the global residual clamp(input + output).

Layout facts of the published file (VITA-Group/DeblurGANv2, `models/fpn_mobilenet.py` and
`models/mobilenet_v2.py`), all reproduced here because strict loading needs them:
- the backbone is registered twice: as `fpn.features` (all 19 MobileNetV2 stages, the last three unused, so
  frozen here)
  and as `fpn.enc0` … `fpn.enc4`, slices holding the same modules, so every used stage's tensors appear
  under both names;
- InstanceNorms are `affine=False, track_running_stats=True` (buffers, no weights); BatchNorms are
  affine with running buffers; biases only on the top-down, smoothing and final convs.

How it runs, as the authors' predictor does (`model.train(True)`: "GAN inference should be in train mode
to use actual stats in norm layers"): every norm layer normalises with the statistics of the image in
hand, never with stored running statistics. The predictor feeds one image at a time, so its BatchNorms
see one image's statistics; here each image of a batch is normalised by its own (an instance norm with
BatchNorm's affine), so a picture's output never depends on what else is in the batch, and `eval()` and
`train()` behave the same. Inputs are padded as that predictor pads them: with zeros (mid-grey in
[-1, 1]) at the bottom and right up to the next multiple of 32 strictly above the size (at least 64),
then cropped back;
the padding enters the norm statistics, so padding differently would change the output.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_image_batch

# MobileNetV2 (Sandler et al., 2018) stages after the stem: (expansion t, output channels c, repeats n, stride s)
MOBILENET_V2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# which backbone stages form encoder levels 0..4 (strides 2, 4, 8, 16, 32); stages 16-18 are never run
ENCODER_SLICES = ((0, 2), (2, 4), (4, 7), (7, 11), (11, 16))
ALIGN = 32


class ImageStatsBatchNorm(nn.BatchNorm2d):
    """BatchNorm's weights and buffers (so the published keys load), normalised with each image's own statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)


class ImageStatsInstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm with the running buffers the published file carries; always the image's own statistics."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, use_input_stats=True, eps=self.eps)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        ImageStatsBatchNorm(cout),
    ]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block: (1×1 expand) → depthwise 3×3 → 1×1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = round(cin * expand)
        self.residual = stride == 1 and cin == cout
        layers = [] if expand == 1 else _conv_bn(cin, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, 1, act=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenet_v2_features() -> nn.Sequential:
    stages: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, stride=2))]
    cin = 32
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            stages.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    stages.append(nn.Sequential(*_conv_bn(cin, 1280, 1)))
    return nn.Sequential(*stages)


def _smooth(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), ImageStatsInstanceNorm(cout), nn.ReLU(inplace=True))


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest") if factor > 1 else x


class FPN(nn.Module):
    def __init__(self, pyramid: int = 128):
        super().__init__()
        self.features = mobilenet_v2_features()
        for level, (a, b) in enumerate(ENCODER_SLICES):
            stages = list(self.features)[a:b]  # the same modules, registered a second time (numbered from 0)
            setattr(self, f"enc{level}", nn.Sequential(*stages))
        # The stages past the last slice never run: kept so the published file loads strictly, frozen so they are
        # no parameters to train. DistributedDataParallel expects a gradient for every trainable parameter and
        # stops with "Expected to have finished reduction" on two or more workers when one never gets one.
        for stage in list(self.features)[ENCODER_SLICES[-1][1] :]:
            stage.requires_grad_(False)
        self.td1, self.td2, self.td3 = (_smooth(pyramid, pyramid) for _ in range(3))
        widths = [self.features[b - 1].conv[-1].num_features for _, b in ENCODER_SLICES]  # 16, 24, 32, 64, 160
        for level in (4, 3, 2, 1):
            setattr(self, f"lateral{level}", nn.Conv2d(widths[level], pyramid, 1, bias=False))
        self.lateral0 = nn.Conv2d(widths[0], pyramid // 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = []
        for level in range(len(ENCODER_SLICES)):
            x = getattr(self, f"enc{level}")(x)
            enc.append(x)
        map4 = self.lateral4(enc[4])
        map3 = self.td1(self.lateral3(enc[3]) + _up(map4, 2))
        map2 = self.td2(self.lateral2(enc[2]) + _up(map3, 2))
        map1 = self.td3(self.lateral1(enc[1]) + _up(map2, 2))
        return self.lateral0(enc[0]), map1, map2, map3, map4


class FPNHead(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.block0 = nn.Conv2d(cin, mid, 3, padding=1, bias=False)
        self.block1 = nn.Conv2d(mid, cout, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block1(F.relu(self.block0(x))))


def _padded_size(n: int) -> int:
    """The authors' predictor pads n to (n // 32 + 1) · 32; at least 64 here, since below that the
    stride-32 maps are 1×1 and have no statistics to normalise with (the authors' code fails there)."""
    return max((n // ALIGN + 1) * ALIGN, 2 * ALIGN)


class FPNMobileNetGenerator(nn.Module):
    """DeblurGAN-v2 FPN-MobileNet; any input size (padded as the authors' predictor pads, cropped back)."""

    # The model pads for itself (the padding is part of its output, see the module docstring), so
    # engines need not align inputs first.
    multiple = 1

    def __init__(self, base_channels: int = 64, pyramid_channels: int = 128):
        super().__init__()
        self.fpn = FPN(pyramid_channels)
        for k in range(1, 5):
            setattr(self, f"head{k}", FPNHead(pyramid_channels, base_channels, base_channels))
        self.smooth = _smooth(4 * base_channels, base_channels)
        self.smooth2 = _smooth(base_channels, base_channels // 2)
        self.final = nn.Conv2d(base_channels // 2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x)
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, _padded_size(w) - w, 0, _padded_size(h) - h))
        map0, map1, map2, map3, map4 = self.fpn(padded)
        heads = [_up(self.head4(map4), 8), _up(self.head3(map3), 4), _up(self.head2(map2), 2), self.head1(map1)]
        smoothed = _up(self.smooth(torch.cat(heads, dim=1)), 2)
        smoothed = _up(self.smooth2(smoothed + map0), 2)
        out = torch.clamp(torch.tanh(self.final(smoothed)) + padded, -1.0, 1.0)
        return out[..., :h, :w]
