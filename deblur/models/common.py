"""Shape helpers shared by every generator and by inference (pad to a multiple, crop back), and the CUDA
settings training and inference share."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def check_image_batch(x: torch.Tensor) -> None:
    """Generators take float RGB batches N×3×H×W; anything else is a user error worth naming."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected an N×3×H×W batch, got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(
            f"expected 3 colour channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}; "
            "convert grayscale/RGBA images to RGB first"
        )
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"empty image batch of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor in [-1, 1], got dtype {x.dtype}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W up to a multiple (bottom/right), by reflection where the image is big enough.

    Reflection avoids the dark border a zero pad would teach the network; it needs pad < size, so tiny
    images fall back to replicate padding. Returns the padded batch and the original (H, W) to crop back to.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


def tune_cuda(fixed_shapes: bool) -> None:
    """The CUDA settings that pay on the GPUs this runs on (no-ops without CUDA): TF32 for fp32 matmuls and
    convolutions (Ampere and later; 10-bit mantissas are far below what an 8-bit image resolves), and cuDNN's
    autotuner when every batch has the same shape (training crops). Off for varied shapes (Serve, bulk),
    where it would re-tune for every new image size."""
    if not torch.cuda.is_available():
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = fixed_shapes


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16). There bf16 speeds training up 1.6-2×
    (autocast; measured on the unet_fpn and nafnet steps) and inference ~1.3× (bf16 weights; the shipped model
    against ONNX Runtime fp32); elsewhere torch emulates bf16 and is slower than fp32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cuda_has_native_bf16(capability: tuple[int, int] | None = None) -> bool:
    """Whether the GPU computes bf16 in hardware: compute capability 8.0 (Ampere) or later. On a V100 (7.0) or a
    T4 (7.5) `torch.cuda.is_bf16_supported()` is True too, but there bf16 is emulated and slower than fp16, so
    these GPUs get fp16 (with a GradScaler in training)."""
    if capability is None:
        if not torch.cuda.is_available():
            return False
        capability = torch.cuda.get_device_capability()
    return tuple(capability) >= (8, 0)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device; on a GPU through pinned memory, so the copy runs asynchronously."""
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or any `.module` wrapper), so its state_dict has plain keys."""
    return getattr(model, "module", model)
