"""One GAN training step, in pure torch (no Ray): testable alone, identical on 1 or N DDP workers.

Critic update (`critic_steps` times per generator update, on the same batch, as DeblurGAN does):
real, fake and their random interpolates go through the critic in ONE forward pass. Under DDP that keeps
one forward per backward (DDP's reducer expects exactly that), and the gradient penalty's double
backward then all-reduces like any other gradient. The instance norms in PatchGAN are per sample, so
batching the three does not mix them.

Generator update: the critic is frozen and called without its DDP wrapper (no gradients for it, no
reducer bookkeeping), and the generator loss is λ_adv·adversarial + λ_per·perceptual + λ_l1·L1 + λ_fft·FFT.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import Config
from ..losses import (
    PerceptualLoss,
    content_loss,
    critic_loss,
    frequency_loss,
    generator_adversarial_loss,
    interpolate,
    penalty_from_scores,
)
from ..models.common import cpu_has_native_bf16, cuda_has_native_bf16, unwrap


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware has it (a GPU of compute capability ≥ 8.0, or a CPU with AMX/AVX512-BF16; no
    scaler needed), fp16 on older GPUs (V100, T4: their bf16 is emulated); full precision on other CPUs unless
    asked."""
    if setting == "off":
        return None
    if device.type != "cuda":
        if setting == "auto":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or cuda_has_native_bf16():
        return torch.bfloat16
    return torch.float16


@dataclass
class StepOutput:
    loss_d: float
    gp: float
    loss_g: float
    loss_adv: float
    loss_per: float
    loss_l1: float
    loss_fft: float


class GANStep:
    def __init__(self, cfg: Config, generator: nn.Module, critic: nn.Module, device: torch.device):
        self.cfg, self.g, self.d, self.device = cfg, generator, critic, device
        o = cfg.optim
        # fused: one kernel for all parameters (CPU and CUDA); the per-tensor loop took 10 % of a CPU NAFNet step
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=o.lr_g, betas=o.betas, fused=True)
        self.opt_d = torch.optim.Adam(critic.parameters(), lr=o.lr_d, betas=o.betas, fused=True)
        self.dtype = amp_dtype(cfg.train.amp, device)
        fp16 = self.dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
        lc = cfg.loss
        self.perceptual = (
            PerceptualLoss(lc.perceptual_layer, lc.perceptual_distance, lc.vgg_weights_path, lc.allow_random_vgg).to(
                device
            )
            if lc.lambda_per > 0
            else None
        )

    def lr_factor(self, progress: float, step: int = 0) -> float:
        """The rates' multiplier `progress` epochs into the run (fractional, so linear and cosine decay move
        every step where the loop knows an epoch's length) after `step` steps (the warm-up counts steps).

        A pure function of where the run is, not a scheduler's state: a resumed run gets the same rate."""
        o, total = self.cfg.optim, self.cfg.train.epochs
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        if o.schedule == "step":
            return warm * o.gamma ** (int(progress) // o.step_epochs)
        if o.schedule in ("linear", "cosine") and progress >= o.decay_start:
            t = min(1.0, (progress - o.decay_start) / max(1, total - o.decay_start))
            return warm * (1.0 - t if o.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t)))
        return warm

    def set_progress(self, progress: float, step: int) -> None:
        """Set both optimisers' rates for the step about to be taken (see `lr_factor`)."""
        factor = self.lr_factor(progress, step)
        for opt, base in ((self.opt_g, self.cfg.optim.lr_g), (self.opt_d, self.cfg.optim.lr_d)):
            for group in opt.param_groups:
                group["lr"] = base * factor

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def critic_update(self, blur: torch.Tensor, sharp: torch.Tensor, fake: torch.Tensor) -> tuple[float, float]:
        lc = self.cfg.loss
        n = sharp.shape[0]
        fake = fake.detach()
        parts = [sharp, fake]
        x_hat = None
        if lc.adversarial == "wgan-gp":
            x_hat = interpolate(sharp, fake)
            parts.append(x_hat)
        with self._autocast():
            scores = self.d(torch.cat(parts)).float()
        loss = critic_loss(lc.adversarial, scores[:n], scores[n : 2 * n])
        gp = torch.zeros((), device=sharp.device)
        if x_hat is not None:
            scale = self.scaler_d.get_scale() if self.scaler_d.is_enabled() else 1.0
            gp = penalty_from_scores(scores[2 * n :], x_hat, lc.gp_weight, scale)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss + gp).backward()
        self._clip(self.d, self.opt_d, self.scaler_d)
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        return float(loss.detach()), float(gp.detach())

    def _clip(self, model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        if self.cfg.optim.grad_clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.optim.grad_clip)

    def __call__(self, blur: torch.Tensor, sharp: torch.Tensor) -> StepOutput:
        self.g.train()
        self.d.train()
        blur = blur.contiguous(memory_format=torch.channels_last)
        sharp = sharp.contiguous(memory_format=torch.channels_last)
        lc = self.cfg.loss
        loss_d = gp = 0.0
        # One generator forward serves both updates: the critic steps see it detached, and the generator
        # has not changed by the time its own loss is taken (a second forward would give the same
        # images and cost a third of the generator's share of the step).
        with self._autocast():
            fake = self.g(blur)
        fake = fake.float()
        if self.cfg.optim.critic_steps and lc.lambda_adv > 0:
            for _ in range(self.cfg.optim.critic_steps):
                loss_d, gp = self.critic_update(blur, sharp, fake)

        critic = unwrap(self.d)
        critic.requires_grad_(False)
        try:
            zero = torch.zeros((), device=blur.device)
            adv = zero
            if lc.lambda_adv > 0:
                with self._autocast():
                    adv = generator_adversarial_loss(lc.adversarial, critic(fake))
            per = self.perceptual(fake, sharp) if self.perceptual is not None else zero
            l1 = content_loss(fake, sharp, lc.content) if lc.lambda_l1 > 0 else zero
            fft = frequency_loss(fake, sharp) if lc.lambda_fft > 0 else zero
            loss_g = lc.lambda_adv * adv + lc.lambda_per * per + lc.lambda_l1 * l1 + lc.lambda_fft * fft
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(loss_g).backward()
            self._clip(self.g, self.opt_g, self.scaler_g)
            self.scaler_g.step(self.opt_g)
            self.scaler_g.update()
        finally:
            critic.requires_grad_(True)
        return StepOutput(
            loss_d,
            gp,
            float(loss_g.detach()),
            float(adv.detach()),
            float(per.detach()),
            float(l1.detach()),
            float(fft.detach()),
        )

    def state_dict(self) -> dict:
        return {
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
