"""Classical baselines that every report shows beside the model, so a number has a reference point.

With the pair's blur kernel known (synthetic data): Wiener deconvolution (skimage), non-blind, which is
an optimistic classical bound. Without it: unsharp masking, the sharpening anyone could apply.
"""
from __future__ import annotations

import numpy as np
from skimage.filters import unsharp_mask
from skimage.restoration import wiener

WIENER_BALANCE = 0.02  # noise-to-signal regulariser; 8-bit quantisation alone needs about this much


def wiener_deconvolve(blur: np.ndarray, kernel: np.ndarray, balance: float = WIENER_BALANCE) -> np.ndarray:
    """uint8 H×W×3 and its (true-convolution) kernel → uint8. Reflect-padded so borders do not ring."""
    k = np.asarray(kernel, np.float64)
    k = k / k.sum()
    pad = max(k.shape)
    img = np.pad(blur.astype(np.float64) / 255.0, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.stack([wiener(img[..., c], k, balance, clip=False) for c in range(3)], axis=-1)
    out = out[pad:-pad, pad:-pad]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def unsharp(blur: np.ndarray, radius: float = 2.0, amount: float = 0.6) -> np.ndarray:
    out = unsharp_mask(blur, radius=radius, amount=amount, channel_axis=-1, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def classical(blur: np.ndarray, kernel: np.ndarray | None) -> tuple[str, np.ndarray]:
    """(name, restored image): Wiener when the kernel is known, else unsharp masking."""
    if kernel is not None and np.size(kernel) > 0:
        return "wiener (known kernel)", wiener_deconvolve(blur, kernel)
    return "unsharp mask", unsharp(blur)
