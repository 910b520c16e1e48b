"""How a deblurred image is scored against its ground truth, per benchmark protocol.

- `gopro` (default): PSNR on uint8 RGB and the MATLAB-style 3-D Gaussian SSIM, as the GoPro/HIDE
  tables (DeblurGAN, DeblurGAN-v2) report them.
- `basicsr`: PSNR on uint8 RGB and per-channel 2-D Gaussian SSIM (skimage / BasicSR).
- `realblur`: RealBlur's official evaluation. Its ground truth is captured by a second camera, so the
  output is first matched to it: a least-squares intensity scale, then an ECC homography (OpenCV
  `findTransformECC`, 100 iterations) warps the output onto the ground truth; PSNR over the warped
  area only, and SSIM (Gaussian σ1.5, no sample covariance, data range 1) averaged over that area
  cropped by the window radius (5 px).
- `shift`: the blind-deblurring protocol of Levin et al.'s recorded-shake benchmark (their
  `comp_upto_shift`, on integer shifts as later blind-deblurring tables score it). A blind method's output
  may sit a few pixels off the truth, since a recorded kernel is not centred and the method cannot know
  where its centre was; so the output is scored in gray (MATLAB `rgb2gray` weights) at the integer shift,
  within ±`SHIFT_WINDOW` px, that gives the least squared error, over the truth cropped by `SHIFT_BORDER`
  px on every side. SSIM (Gaussian σ1.5, no sample covariance) is taken on the same aligned crops.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from .. import metrics

PROTOCOLS = ("gopro", "basicsr", "realblur", "shift")
SHIFT_WINDOW = 10  # px each way: covers the offset of Levin's recorded kernels (up to 27 px across)
SHIFT_BORDER = 15  # px cropped from the truth on every side, as Levin's comp_upto_shift does


def describe(protocol: str) -> str:
    if protocol == "realblur":
        return (
            "RealBlur protocol: least-squares intensity match + ECC homography (100 iterations) of the output to "
            "the ground truth; PSNR over the warped area; SSIM (Gaussian σ1.5, no sample covariance, data range 1) "
            "over the warped area cropped by 5 px; RGB in [0, 1]"
        )
    if protocol == "shift":
        return (
            f"blind-deblurring protocol (Levin et al.'s comp_upto_shift, integer shifts): gray (MATLAB rgb2gray), "
            f"the output at its best integer shift within ±{SHIFT_WINDOW} px, the truth cropped by {SHIFT_BORDER} px; "
            "PSNR and SSIM (Gaussian σ1.5, no sample covariance, data range 255) over that crop"
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


def gray(img: np.ndarray) -> np.ndarray:
    """uint8 RGB (or already gray) → float64 gray in 0..255 with MATLAB `rgb2gray`'s weights."""
    img = np.asarray(img, np.float64)
    return img if img.ndim == 2 else img[..., :3] @ np.array([0.2989, 0.5870, 0.1140])


def best_shift(
    output: np.ndarray, target: np.ndarray, window: int = SHIFT_WINDOW, border: int = SHIFT_BORDER
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(dy, dx, output crop, target crop): the integer shift of `output` within ±window that best matches the
    target cropped by `border` (least squared error); gray float images of one size."""
    h, w = target.shape
    if border < window:
        raise ValueError(f"border ({border}) must be at least the search window ({window})")
    if min(h, w) <= 2 * border + 1:
        raise ValueError(f"image {w}×{h} too small for the shift protocol's {border} px border")
    t = target[border : h - border, border : w - border]
    best = None
    for dy in range(-window, window + 1):
        for dx in range(-window, window + 1):
            o = output[border + dy : h - border + dy, border + dx : w - border + dx]
            err = float(np.mean((o - t) ** 2))
            if best is None or err < best[0]:
                best = (err, dy, dx, o)
    _, dy, dx, o = best
    return dy, dx, o, t


def _shift_scores(output: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    _, _, o, t = best_shift(gray(output), gray(target))
    err = float(np.mean((o - t) ** 2))
    psnr = metrics.PSNR_CAP if err == 0 else min(metrics.PSNR_CAP, 10 * np.log10(255.0**2 / err))
    ssim = structural_similarity(t, o, gaussian_weights=True, use_sample_covariance=False, data_range=255.0)
    return float(psnr), float(ssim)


def score(output: np.ndarray, target: np.ndarray, protocol: str = "gopro") -> tuple[float, float]:
    """(PSNR dB, SSIM) of one uint8 H×W×3 output against its target under a protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if protocol == "realblur":
        return _realblur_scores(output, target)
    if protocol == "shift":
        return _shift_scores(output, target)
    return metrics.score(output, target, convention=protocol)
