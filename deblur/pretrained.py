"""ImageNet backbones, fetched the way torchvision fetches them, and a clear refusal where they cannot be.

VGG19 (perceptual loss) and AlexNet (LPIPS) want torchvision's ImageNet weights. Where they are on the machine
(torchvision's cache under torch.hub's folder, or an explicit `weights_path`) they load. Where they are not,
they are downloaded into that cache as torchvision does (`torch.hub.load_state_dict_from_url`: its URL, the
hash in its name checked, a progress bar on a terminal, a line each side elsewhere). Offline (the download
fails, or DEBLUR_OFFLINE=1 says not to try), the caller either refuses with one line naming the file and
where to put it (the default for real runs) or, when it allows that (tests, offline smoke runs), uses random
weights and says so once.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Any

import torch

from .progress import on_terminal

log = logging.getLogger(__name__)
_warned: set[str] = set()
#: set to 1 on machines that must not reach the network for weights (the tests set it)
OFFLINE_ENV = "DEBLUR_OFFLINE"


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights that are not on this machine (a missing file: the jobs print it as one line)."""


def cached_weights_file(weights: Any) -> str:
    """Where torchvision keeps `weights` once downloaded (whether or not it is there)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def download(weights: Any, what: str, timeout_s: float = 60.0) -> str | None:
    """Fetch `weights` into torchvision's cache as torchvision does (`torch.hub`: a temporary file renamed once
    whole, the hash in its name checked, a bar on a terminal); None when it is there, else why it is not. A
    network that drops packets is given up after `timeout_s` without an answer, rather than waited on forever."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return f"{OFFLINE_ENV} is set"
    path = cached_weights_file(weights)
    digest = torch.hub.HASH_REGEX.search(os.path.basename(path))
    print(f"{what}: downloading {weights.url} to {path}", file=sys.stderr, flush=True)
    t0, before = time.monotonic(), socket.getdefaulttimeout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    socket.setdefaulttimeout(timeout_s)  # urllib's, inside torch.hub, which takes no timeout of its own
    try:
        torch.hub.download_url_to_file(weights.url, path, digest.group(1) if digest else None, on_terminal())
    except Exception as e:  # no network, no DNS, a proxy's error page, a hash that does not match
        return f"the download failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        socket.setdefaulttimeout(before)
    print(f"{what}: {os.path.getsize(path) / 1e6:.0f} MB in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return None


def check_available(weights: Any, what: str, weights_path: str | None = None) -> None:
    """Download `weights` where needed, or raise PretrainedWeightsMissing now (before Ray starts)."""
    load_state(weights, what, weights_path, allow_random=False, load=False)


def load_state(weights: Any, what: str, weights_path: str | None, allow_random: bool, load: bool = True) -> dict | None:
    """The backbone state dict (downloaded first where it is not here), or None (random features) when allowed
    and it cannot be had."""
    path = weights_path or cached_weights_file(weights)
    why = None
    if not os.path.isfile(path) and not weights_path:
        why = download(weights, what)
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu", weights_only=True) if load else None
    message = (
        f"{what}: ImageNet weights not found at {path}"
        + (f" ({why})" if why else "")
        + f". Put torchvision's {os.path.basename(weights.url)} there (from {weights.url}; or pass weights_path=...)"
    )
    if weights_path or not allow_random:
        raise PretrainedWeightsMissing(message + "; or allow random features explicitly (allow_random_weights).")
    if what not in _warned:
        _warned.add(what)
        log.warning("%s; using RANDOM features instead: values are not comparable with published ones.", message)
    return None
