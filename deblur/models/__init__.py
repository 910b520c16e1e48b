"""Models: generators and critics by name, and checkpoint loading for inference.

`build_generator("unet_fpn", base_channels=16)` / `build_critic("patchgan")` are how configs name models;
`load_generator(path_or_uri)` turns either an official DeblurGAN `latest_net_G.pth` or one of this project's
checkpoints into a ready generator. Names import on first use: the models need torch, and the ONNX paths of
the bulk and video actors reach `models.reference` and `models.shipped` without it.
"""

# ruff: noqa: F401

from typing import TYPE_CHECKING

from ..lazy import exports

__getattr__, __dir__, __all__ = exports(
    __name__,
    {
        "checkpoint": ["generator_checkpoint", "load_generator"],
        "fpn_mobilenet": ["FPNMobileNetGenerator"],
        "nafnet": ["NAFNetGenerator"],
        "patchgan": ["PatchGANCritic"],
        "reference": ["CheckpointError"],
        "registry": ["CRITICS", "GENERATORS", "build_critic", "build_generator", "count_parameters"],
        "resnet": ["ResnetGenerator"],
        "unet_fpn": ["UNetFPNGenerator"],
    },
)

if TYPE_CHECKING:  # for type checkers and editors
    from .checkpoint import generator_checkpoint, load_generator
    from .fpn_mobilenet import FPNMobileNetGenerator
    from .nafnet import NAFNetGenerator
    from .patchgan import PatchGANCritic
    from .reference import CheckpointError
    from .registry import CRITICS, GENERATORS, build_critic, build_generator, count_parameters
    from .resnet import ResnetGenerator
    from .unet_fpn import UNetFPNGenerator
