"""How a deblurred image is scored against its ground truth, per benchmark protocol.

- `gopro` (default): PSNR on uint8 RGB and the MATLAB-style 3-D Gaussian SSIM, as the GoPro/HIDE
  tables (DeblurGAN, DeblurGAN-v2) report them.
- `basicsr`: PSNR on uint8 RGB and per-channel 2-D Gaussian SSIM (skimage / BasicSR).
- `realblur`: RealBlur's official evaluation. Its ground truth is captured by a second camera, so the
  output is first matched to it: a least-squares intensity scale, then an ECC homography (OpenCV
  `findTransformECC`, 100 iterations) warps the output onto the ground truth; PSNR over the warped
  area only, and SSIM (Gaussian σ1.5, no sample covariance, data range 1) averaged over that area
  cropped by the window radius (5 px).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from .. import metrics

PROTOCOLS = ("gopro", "basicsr", "realblur")


def describe(protocol: str) -> str:
    if protocol == "realblur":
        return (
            "RealBlur protocol: least-squares intensity match + ECC homography (100 iterations) of the output to "
            "the ground truth; PSNR over the warped area; SSIM (Gaussian σ1.5, no sample covariance, data range 1) "
            "over the warped area cropped by 5 px; RGB in [0, 1]"
        )
    return metrics.describe_convention(protocol)


def realblur_align(output: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float [0,1] output and target → (aligned output·mask, target·mask, mask, 3×3 warp); images H×W×3."""
    z, x = output.astype(np.float32), target.astype(np.float32)
    zs = z * float(np.sum(x * z) / max(np.sum(z * z), 1e-12))  # intensity match (least squares)
    warp = np.eye(3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 0)
    try:
        _, warp = cv2.findTransformECC(
            cv2.cvtColor(x, cv2.COLOR_RGB2GRAY),
            cv2.cvtColor(zs, cv2.COLOR_RGB2GRAY),
            warp,
            cv2.MOTION_HOMOGRAPHY,
            criteria,
            None,
            5,
        )
    except cv2.error:  # ECC did not converge (e.g. a flat image): score unaligned, as the identity warp
        warp = np.eye(3, dtype=np.float32)
    h, w = x.shape[:2]
    flags = cv2.WARP_INVERSE_MAP
    zr = cv2.warpPerspective(zs, warp, (w, h), flags=cv2.INTER_CUBIC + flags, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpPerspective(
        np.ones_like(zs), warp, (w, h), flags=cv2.INTER_NEAREST + flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return zr * mask, x * mask, mask, warp


def _realblur_scores(output: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    zr, xr, mask, _ = realblur_align(output.astype(np.float32) / 255.0, target.astype(np.float32) / 255.0)
    err = float(np.sum((xr - zr) ** 2, dtype=np.float64) / max(np.sum(mask), 1.0))
    psnr = metrics.PSNR_CAP if err == 0 else min(metrics.PSNR_CAP, 10 * np.log10(1.0 / err))
    _, smap = structural_similarity(
        xr, zr, channel_axis=2, gaussian_weights=True, use_sample_covariance=False, data_range=1.0, full=True
    )
    pad = 5  # the Gaussian window's radius: int(3.5 σ + 0.5) with σ = 1.5
    smap, m = (smap * mask)[pad:-pad, pad:-pad], mask[pad:-pad, pad:-pad]
    ssim = float(np.mean(smap.sum(axis=(0, 1)) / np.maximum(m.sum(axis=(0, 1)), 1.0)))
    return float(psnr), ssim


def score(output: np.ndarray, target: np.ndarray, protocol: str = "gopro") -> tuple[float, float]:
    """(PSNR dB, SSIM) of one uint8 H×W×3 output against its target under a protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if protocol == "realblur":
        return _realblur_scores(output, target)
    return metrics.score(output, target, convention=protocol)
