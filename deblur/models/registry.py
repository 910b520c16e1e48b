"""Generators and critics by name: how configs and checkpoints name a model.

Constructor arguments follow one convention across models, so a config reads the same whichever model
it names: `base_channels` is the width of the first stage, `num_blocks` a single block count, and no
argument exists that can take only one value (images are always RGB).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from .fpn_mobilenet import FPNMobileNetGenerator
from .nafnet import NAFNetGenerator
from .patchgan import PatchGANCritic
from .resnet import ResnetGenerator
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
