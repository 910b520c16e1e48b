"""Which file a model reference names, and its hash: all a cached ONNX export needs, without torch.

Kept apart from `checkpoint` (which loads weights, and so imports torch) because every Ray actor of the
bulk and video jobs resolves its model: with an ONNX export already cached, it need not pay torch's
import (~1.6 s each) to find it.
"""

from __future__ import annotations

import hashlib
import json

from .. import storage
from .shipped import shipped_path

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def resolve_checkpoint(uri: str) -> str:
    """A shipped model's name, a checkpoint file, a Ray checkpoint directory, or a run directory (its
    `best.json`) → the file."""
    uri = str(uri)
    shipped = shipped_path(uri)
    if shipped:
        return shipped
    fs, path = storage.filesystem(uri)
    if fs.isdir(path) and fs.exists(storage.join(path, "best.json")):
        try:
            best = json.loads(fs.cat_file(storage.join(path, "best.json")))["checkpoint"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{storage.join(uri, 'best.json')}: unreadable ({e})") from None
        if not best:
            raise CheckpointError(f"{uri}: the run has no checkpoint yet (best.json names none)")
        return resolve_checkpoint(best)
    if fs.isdir(path):
        for candidate in (CHECKPOINT_FILE, "latest_net_G.pth"):
            if fs.exists(storage.join(path, candidate)):
                return storage.join(uri, candidate)
        raise CheckpointError(f"{uri}: a directory without {CHECKPOINT_FILE} or latest_net_G.pth")
    if not fs.exists(path):
        from ..kernel.route import route_recipe

        if recipe := route_recipe(uri):
            raise CheckpointError(
                f"{uri} is a kernel-aware route (blind deconvolution beside a network), not a checkpoint: "
                f"its network is {recipe.network}"
            )
        raise CheckpointError(f"{uri}: checkpoint not found")
    return uri


def checkpoint_hash(uri: str) -> str:
    """sha256 of the checkpoint file (first 16 hex digits): names a model in engine metadata and replies."""
    return hashlib.sha256(storage.read_bytes(resolve_checkpoint(uri))).hexdigest()[:16]
