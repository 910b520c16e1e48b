"""Recognise and load generator checkpoints safely (`weights_only=True`: a checkpoint may be untrusted).

Three kinds are understood:
- this project's: a dict with `"format": "deblur"`, the generator's registry name and kwargs and its
  state dict (training checkpoints are a superset; a Ray Train checkpoint directory holds one as
  `checkpoint.pt`);
- DeblurGAN's published `latest_net_G.pth`: a bare ResnetGenerator state dict, saved by PyTorch <= 0.3,
  so every InstanceNorm carries `running_mean` / `running_var` buffers that PyTorch >= 0.4 no longer has
  (and that were never used: those InstanceNorms always normalised with the image's own statistics);
  `module.` prefixes from DataParallel;
- DeblurGAN-v2's published `fpn_mobilenet.h5`: `{"model": state_dict}` with `module.` prefixes.
Everything else about the keys is strict. Anything else fails with a one-line `CheckpointError` saying why.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.nn as nn

from .. import storage
from .common import unwrap
from .reference import CheckpointError, resolve_checkpoint
from .registry import build_generator

FORMAT = "deblur"


# A saved checkpoint outlives the constructor signature it was written with, so the generator kwargs it
# stores pass through these two tables (in `checkpoint_kwargs`, the one place they are read) on loading.
# generator name → {argument name a checkpoint may store: the constructor's name for it}
RENAMED_KWARGS: dict[str, dict[str, str]] = {
    "resnet": {"ngf": "base_channels", "n_blocks": "num_blocks"},
}
# generator name → {stored argument the constructor no longer takes: the only value it could have held}
# (generators take RGB images, so a channel count is always 3)
FIXED_KWARGS: dict[str, dict[str, Any]] = {
    "unet_fpn": {"in_channels": 3},
}


def generator_checkpoint(model: nn.Module, name: str, kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dict this project saves for a generator (training adds critic, optimizers, ...)."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {"format": FORMAT, "generator_name": name, "generator_kwargs": dict(kwargs), "generator": state, **extra}


def read_checkpoint(uri: str) -> dict[str, Any]:
    """Load a checkpoint dict with weights_only=True from a local path or URI."""
    uri = resolve_checkpoint(str(uri))
    data = storage.read_bytes(uri)
    if not data:
        raise CheckpointError(f"{uri}: empty file")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # arbitrary bytes fail in arbitrary ways inside the unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{uri}: not a loadable PyTorch checkpoint ({first[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{uri}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def checkpoint_kwargs(name: str, kwargs: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint's stored generator kwargs → the arguments the constructor takes (RENAMED_KWARGS, FIXED_KWARGS)."""
    renamed, fixed = RENAMED_KWARGS.get(name, {}), FIXED_KWARGS.get(name, {})
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in fixed:
            if value != fixed[key]:
                raise CheckpointError(f"{where}: {name} with {key}={value!r} is not supported (only {fixed[key]!r})")
            continue
        key = renamed.get(key, key)
        if key in out:
            raise CheckpointError(f"{where}: {name} kwargs name {key!r} twice (under its old and its new name)")
        out[key] = value
    return out


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _drop_untracked_norm_stats(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Remove the running statistics PyTorch <= 0.3 saved for InstanceNorms that (now) track none."""
    stale = {
        f"{name}.{buffer}"
        for name, m in model.named_modules()
        if isinstance(m, nn.InstanceNorm2d) and not m.track_running_stats
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }
    return {k: v for k, v in state.items() if k not in stale}


def _published(path_or_uri: str, obj: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(generator name, state dict) for a published DeblurGAN / DeblurGAN-v2 file, else None."""
    state = obj["model"] if set(obj) == {"model"} and isinstance(obj["model"], dict) else obj
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    state = _strip_module(state)
    if any(k.startswith("fpn.inception") for k in state):
        raise CheckpointError(f"{path_or_uri}: DeblurGAN-v2's fpn_inception is not supported; its fpn_mobilenet.h5 is")
    return ("fpn_mobilenet" if any(k.startswith("fpn.features.") for k in state) else "resnet"), state


def load_generator(path_or_uri: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build and load the generator a checkpoint describes, in eval mode, on `device`."""
    obj = read_checkpoint(path_or_uri)
    published = None if obj.get("format") == FORMAT else _published(path_or_uri, obj)
    if obj.get("format") == FORMAT:
        name, kwargs, state = obj.get("generator_name"), obj.get("generator_kwargs", {}), obj.get("generator")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path_or_uri}: deblur checkpoint without a generator state dict")
        model = build_generator(name, **checkpoint_kwargs(name, kwargs, path_or_uri))
    elif published is not None:
        name, state = published
        model = build_generator(name)
        state = _drop_untracked_norm_stats(model, state)
        expected = set(model.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise CheckpointError(
                f"{path_or_uri}: a bare state dict that is neither DeblurGAN's ResnetGenerator nor DeblurGAN-v2's "
                f"FPNMobileNet (as {name}: {len(missing)} keys missing e.g. {missing[:2]}, {len(unexpected)} "
                f"unexpected e.g. {unexpected[:2]})"
            )
    else:
        raise CheckpointError(
            f"{path_or_uri}: neither a published DeblurGAN/DeblurGAN-v2 generator nor a deblur checkpoint "
            f"(top-level keys: {sorted(map(str, obj))[:5]})"
        )
    try:
        model.load_state_dict(_strip_module(state), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path_or_uri}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()
