"""GAN, perceptual and content losses. Inputs are images in [-1, 1], as the generator produces them.

Adversarial losses come in three kinds, chosen by config: `wgan-gp` (the default: critic maximises
D(real) - D(fake), with a gradient penalty of weight 10 on random interpolates), `lsgan` and `vanilla`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import VGG19_Weights, vgg19

from .pretrained import load_state

ADVERSARIAL = ("wgan-gp", "lsgan", "vanilla")


def _check_kind(kind: str) -> None:
    if kind not in ADVERSARIAL:
        raise ValueError(f"unknown adversarial loss {kind!r}; choose one of {ADVERSARIAL}")


def interpolate(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """x̂ = αx + (1−α)G(z), one α per sample, in float32, ready for an input-gradient."""
    real, fake = real.detach().float(), fake.detach().float()
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    return (alpha * real + (1 - alpha) * fake).requires_grad_(True)


def penalty_from_scores(
    scores: torch.Tensor, x_hat: torch.Tensor, weight: float = 10.0, scale: float = 1.0
) -> torch.Tensor:
    """weight · E[(‖∇_x D(x̂)‖₂ − 1)²] given the critic's scores on x̂ (Gulrajani et al. 2017).

    `create_graph=True` so the penalty itself is differentiated w.r.t. the critic's weights. `scale` is a
    GradScaler's factor under fp16: the scores are scaled before the gradient and the gradient unscaled
    after, so small input-gradients do not underflow. The norm runs in float32.
    """
    (grads,) = torch.autograd.grad(scores.float().sum() * scale, x_hat, create_graph=True)
    norms = (grads.float() / scale).flatten(1).norm(2, dim=1)
    return weight * ((norms - 1) ** 2).mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0
) -> torch.Tensor:
    """The WGAN-GP penalty with its own critic call. Under DDP, the training step instead scores real,
    fake and x̂ in one forward (see deblur.train.step) and calls `penalty_from_scores` directly."""
    x_hat = interpolate(real, fake)
    return penalty_from_scores(critic(x_hat), x_hat, weight)


def critic_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Loss the critic minimises (without the gradient penalty, which `gradient_penalty` adds)."""
    _check_kind(kind)
    real_scores, fake_scores = real_scores.float(), fake_scores.float()
    if kind == "wgan-gp":
        return fake_scores.mean() - real_scores.mean()
    if kind == "lsgan":
        return 0.5 * (
            F.mse_loss(real_scores, torch.ones_like(real_scores))
            + F.mse_loss(fake_scores, torch.zeros_like(fake_scores))
        )
    return F.binary_cross_entropy_with_logits(
        real_scores, torch.ones_like(real_scores)
    ) + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores))


def generator_adversarial_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    _check_kind(kind)
    fake_scores = fake_scores.float()
    if kind == "wgan-gp":
        return -fake_scores.mean()
    if kind == "lsgan":
        return F.mse_loss(fake_scores, torch.ones_like(fake_scores))
    return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))


def content_loss(output: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Pixel-space fidelity: L1 (robust, the usual choice) or MSE (exactly what PSNR measures)."""
    if kind == "l1":
        return F.l1_loss(output.float(), target.float())
    if kind == "mse":
        return F.mse_loss(output.float(), target.float())
    raise ValueError(f"unknown content loss {kind!r}; choose 'l1' or 'mse'")


def frequency_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |FFT(output) − FFT(target)| over real and imaginary parts (MIMO-UNet's FFT loss, Cho et al. 2021).

    A pixel loss alone lets a network trained briefly hedge toward a smooth output: it is unsure how
    much blur there was, and the smooth guess costs little per pixel. Missing high frequencies cost
    a lot here, so the output is pushed to restore them.
    """
    diff = torch.fft.rfft2(output.float()) - torch.fft.rfft2(target.float())
    return torch.view_as_real(diff).abs().mean()


_VGG19_LAYERS = {"relu3_3": 16, "conv3_3": 15}  # slices of torchvision's vgg19().features
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """Distance between VGG19 feature maps (relu3_3 by default; DeblurGAN used conv3_3 with MSE).

    Inputs in [-1, 1] are mapped to [0, 1] and then to ImageNet normalisation, the statistics VGG19 was
    trained with. The network is frozen and kept in eval mode.
    """

    def __init__(
        self,
        layer: str = "relu3_3",
        distance: str = "mse",
        weights_path: str | None = None,
        allow_random_weights: bool = False,
    ):
        super().__init__()
        if layer not in _VGG19_LAYERS:
            raise ValueError(f"unknown VGG19 layer {layer!r}; choose one of {sorted(_VGG19_LAYERS)}")
        if distance not in ("mse", "l1"):
            raise ValueError(f"unknown distance {distance!r}; choose 'mse' or 'l1'")
        net = vgg19(weights=None)
        state = load_state(VGG19_Weights.IMAGENET1K_V1, "perceptual loss (VGG19)", weights_path, allow_random_weights)
        self.pretrained = state is not None
        if state is not None:
            net.load_state_dict(state)
        self.features = net.features[: _VGG19_LAYERS[layer]].eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.distance = F.mse_loss if distance == "mse" else F.l1_loss
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.features.eval()  # frozen feature extractor, whatever the caller's mode
        return self

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2 - self.mean) / self.std

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f_out = self.features(self._normalise(output))
        with torch.no_grad():
            f_tgt = self.features(self._normalise(target))
        return self.distance(f_out.float(), f_tgt.float())
