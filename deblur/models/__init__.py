"""Models: generators and critics by name, and checkpoint loading for inference.

`build_generator("unet_fpn", base_channels=16)` / `build_critic("patchgan")` are how configs name models;
`load_generator(path_or_uri)` turns either an official DeblurGAN `latest_net_G.pth` or one of this project's
checkpoints into a ready generator.
"""

from __future__ import annotations

from .checkpoint import CheckpointError, generator_checkpoint, load_generator
from .fpn_mobilenet import FPNMobileNetGenerator
from .nafnet import NAFNetGenerator
from .patchgan import PatchGANCritic
from .registry import CRITICS, GENERATORS, build_critic, build_generator, count_parameters
from .resnet import ResnetGenerator
from .unet_fpn import UNetFPNGenerator

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
