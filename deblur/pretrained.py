"""ImageNet backbones without surprise downloads.

VGG19 (perceptual loss) and AlexNet (LPIPS) want torchvision's ImageNet weights. On a machine that has
them (torchvision's cache, or an explicit `weights_path`) they load; where they are absent we never
download behind the user's back. Then we either refuse with a clear message (the default for real runs)
or, when the caller allows it (tests, offline smoke runs), use random weights and say so once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)
_warned: set[str] = set()


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights that are not on this machine (a missing file: the jobs print it as one line)."""


def cached_weights_file(weights: Any) -> str:
    """Where torchvision keeps `weights` once downloaded (whether or not it is there)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def check_available(weights: Any, what: str, weights_path: str | None = None) -> None:
    """Raise PretrainedWeightsMissing now (before Ray starts) when `weights` cannot be loaded here."""
    load_state(weights, what, weights_path, allow_random=False, load=False)


def load_state(weights: Any, what: str, weights_path: str | None, allow_random: bool, load: bool = True) -> dict | None:
    """The backbone state dict, or None (random features) when allowed and nothing is available."""
    path = weights_path or cached_weights_file(weights)
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu", weights_only=True) if load else None
    message = (
        f"{what}: ImageNet weights not found at {path}. Put torchvision's {os.path.basename(weights.url)} there "
        f"(or pass weights_path=...)"
    )
    if weights_path or not allow_random:
        raise PretrainedWeightsMissing(message + "; or allow random features explicitly (allow_random_weights).")
    if what not in _warned:
        _warned.add(what)
        log.warning("%s; using RANDOM features instead: values are not comparable with published ones.", message)
    return None
