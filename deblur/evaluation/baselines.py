"""Classical baselines that every report shows beside the model, so a number has a reference point.

With the pair's blur kernel known (synthetic data): Wiener deconvolution, non-blind, an optimistic
classical bound. Without it: unsharp masking, the sharpening anyone could apply. Both are written out
here as formulas (and checked against independent implementations in the tests): scikit-image 0.26's
`unsharp_mask` rescales uint8 input to [0, 1] whatever `preserve_range` says, and its `wiener`
regularises with a Laplacian whose weight has a different scale, either of which silently turned the
reference into something far worse than the blurred input.
"""

from __future__ import annotations

import cv2
import numpy as np

# Noise-to-signal ratio of the Wiener filter: 8-bit quantisation alone needs about this much; measured
# best of 1e-3 … 3e-2 on photos with 9-21 px linear motion blur (+4 dB there with the true kernel).
WIENER_NSR = 0.01
UNSHARP_SIGMA, UNSHARP_AMOUNT = 2.0, 0.6


def wiener_deconvolve(blur: np.ndarray, kernel: np.ndarray, nsr: float = WIENER_NSR) -> np.ndarray:
    """uint8 H×W×3 and its (true-convolution) kernel → uint8: conj(K) / (|K|² + nsr) in the Fourier domain.

    The image is reflect-padded by twice the kernel size so the circular FFT does not wrap borders around (where
    the two sides' padding meet, the jump still rings a little into the borders: the route's
    `deblur.kernel.deconvolve.wiener` fades its padding out, this reference stays the textbook filter).
    """
    k = np.asarray(kernel, np.float64)
    k = k / k.sum()
    pad = 2 * max(k.shape)
    img = np.pad(blur.astype(np.float64) / 255.0, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    psf = np.zeros((h, w))
    psf[: k.shape[0], : k.shape[1]] = k
    psf = np.roll(psf, (-(k.shape[0] // 2), -(k.shape[1] // 2)), axis=(0, 1))  # kernel centre at the origin
    transfer = np.fft.rfft2(psf)
    inverse = np.conj(transfer) / (np.abs(transfer) ** 2 + nsr)
    out = np.fft.irfft2(np.fft.rfft2(img, axes=(0, 1)) * inverse[..., None], s=(h, w), axes=(0, 1))
    out = out[pad:-pad, pad:-pad]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def unsharp(blur: np.ndarray, sigma: float = UNSHARP_SIGMA, amount: float = UNSHARP_AMOUNT) -> np.ndarray:
    """x + amount · (x − G_σ ∗ x), clipped to uint8: the classic unsharp mask."""
    x = blur.astype(np.float32)
    smooth = cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return np.clip(np.rint(x + amount * (x - smooth)), 0, 255).astype(np.uint8)
