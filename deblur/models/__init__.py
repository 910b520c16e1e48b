"""Models: generators and critics by name, and checkpoint loading for inference.

`build_generator("unet_fpn", base_channels=16)` / `build_critic("patchgan")` are how configs name models;
`load_generator(path_or_uri)` turns either an official DeblurGAN `latest_net_G.pth` or one of this project's
checkpoints into a ready generator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name → the submodule that defines it. Imported on first use (PEP 562): the models need torch, and
#: the ONNX paths of the bulk and video actors reach `models.reference` and `models.shipped` without it.
_WHERE = {
    "CheckpointError": "reference",
    "generator_checkpoint": "checkpoint",
    "load_generator": "checkpoint",
    "FPNMobileNetGenerator": "fpn_mobilenet",
    "NAFNetGenerator": "nafnet",
    "PatchGANCritic": "patchgan",
    "CRITICS": "registry",
    "GENERATORS": "registry",
    "build_critic": "registry",
    "build_generator": "registry",
    "count_parameters": "registry",
    "ResnetGenerator": "resnet",
    "UNetFPNGenerator": "unet_fpn",
}
__all__ = [
    "CRITICS",
    "GENERATORS",
    "CheckpointError",
    "FPNMobileNetGenerator",
    "NAFNetGenerator",
    "PatchGANCritic",
    "ResnetGenerator",
    "UNetFPNGenerator",
    "build_critic",
    "build_generator",
    "count_parameters",
    "generator_checkpoint",
    "load_generator",
]

if TYPE_CHECKING:
    from .checkpoint import generator_checkpoint, load_generator
    from .fpn_mobilenet import FPNMobileNetGenerator
    from .nafnet import NAFNetGenerator
    from .patchgan import PatchGANCritic
    from .reference import CheckpointError
    from .registry import CRITICS, GENERATORS, build_critic, build_generator, count_parameters
    from .resnet import ResnetGenerator
    from .unet_fpn import UNetFPNGenerator


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
