"""Model registry: generators and critics by name, and checkpoint loading for inference.

`build_generator("unet_fpn", base_channels=16)` / `build_critic("patchgan")` are how configs name models;
`load_generator(path_or_uri)` turns either an official DeblurGAN `latest_net_G.pth` or one of this project's
checkpoints into a ready generator.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from .patchgan import PatchGANCritic
from .resnet import ResnetGenerator
from .fpn_mobilenet import FPNMobileNetGenerator
from .nafnet import NAFNetGenerator
from .unet_fpn import UNetFPNGenerator

GENERATORS: dict[str, Callable[..., nn.Module]] = {
    "unet_fpn": UNetFPNGenerator,
    "resnet": ResnetGenerator,
    "fpn_mobilenet": FPNMobileNetGenerator,
    "nafnet": NAFNetGenerator,
}
CRITICS: dict[str, Callable[..., nn.Module]] = {
    "patchgan": PatchGANCritic,
}


def _build(table: dict[str, Callable[..., nn.Module]], kind: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    try:
        return table[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for {kind} {name!r}: {e}") from None


def build_generator(name: str = "unet_fpn", **kwargs: Any) -> nn.Module:
    return _build(GENERATORS, "generator", name, kwargs)


def build_critic(name: str = "patchgan", **kwargs: Any) -> nn.Module:
    return _build(CRITICS, "critic", name, kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from .checkpoint import CheckpointError, load_generator, generator_checkpoint  # noqa: E402

__all__ = [
    "GENERATORS",
    "CRITICS",
    "build_generator",
    "build_critic",
    "count_parameters",
    "load_generator",
    "generator_checkpoint",
    "CheckpointError",
    "UNetFPNGenerator",
    "ResnetGenerator",
    "FPNMobileNetGenerator",
    "NAFNetGenerator",
    "PatchGANCritic",
]
