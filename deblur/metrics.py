"""PSNR, SSIM and LPIPS, computed the way the papers compute them, with the convention always named.

Inputs are uint8 RGB images H×W×3, or float tensors in [-1, 1] (3×H×W or N×3×H×W) which are rounded
through uint8 first, exactly as a saved output would be. A batch gives an array of per-image values.

SSIM conventions:
- `gopro` (default): what the GoPro/HIDE tables report, computed in MATLAB with `ssim` on the RGB image as
  a 3-D volume: an 11×11×11 Gaussian (σ 1.5), replicate padding, mean over every voxel.
- `basicsr`: per channel, a 2-D 11×11 Gaussian (σ 1.5) over the valid region, mean over channels; equal to
  `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
On blurred photos the two differ by 0.1–0.2, so a number without its convention means little.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import cv2
import numpy as np

from .images import to_image, to_tensor

CONVENTIONS = ("gopro", "basicsr")
PSNR_CAP = 100.0  # what reports show for identical images (PSNR = inf), always labelled as capped


def _pairs(output: Any, target: Any) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    outs, batched_o = _as_uint8_list(output, "output")
    tgts, batched_t = _as_uint8_list(target, "target")
    if len(outs) != len(tgts):
        raise ValueError(f"output has {len(outs)} images, target {len(tgts)}")
    for o, t in zip(outs, tgts):
        if o.shape != t.shape:
            raise ValueError(f"output shape {o.shape} differs from target shape {t.shape}")
    return outs, tgts, batched_o or batched_t


def _as_uint8_list(x: Any, name: str) -> tuple[list[np.ndarray], bool]:
    if hasattr(x, "numel"):  # a torch tensor (torch itself is imported only where LPIPS needs it)
        if x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"{name}: expected 3×H×W or N×3×H×W RGB in [-1, 1], got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name}: empty image tensor of shape {tuple(x.shape)}")
        arr = to_image(x)
        return (list(arr), True) if x.ndim == 4 else ([arr], False)
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"{name}: expected an H×W×3 RGB uint8 image, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name}: empty image of shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 (0..255), got {x.dtype}")
    return [x], False


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma on the 16–235 range (MATLAB `rgb2ycbcr`, as BasicSR's `test_y_channel`)."""
    img = img.astype(np.float64)
    return (img @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0)[..., None]


def _prepare(img: np.ndarray, crop_border: int, y_channel: bool) -> np.ndarray:
    if crop_border:
        if 2 * crop_border >= min(img.shape[:2]):
            raise ValueError(f"crop_border {crop_border} leaves nothing of a {img.shape[0]}×{img.shape[1]} image")
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    return rgb_to_y(img) if y_channel else img.astype(np.float64)


def _reduce(values: list[float], batched: bool) -> float | np.ndarray:
    return np.asarray(values) if batched else values[0]


def psnr(output: Any, target: Any, crop_border: int = 0, y_channel: bool = False) -> float | np.ndarray:
    """10·log10(255² / MSE) over all pixels and channels (MATLAB `psnr`); inf for identical images."""
    outs, tgts, batched = _pairs(output, target)
    values = []
    for o, t in zip(outs, tgts):
        mse = np.mean((_prepare(o, crop_border, y_channel) - _prepare(t, crop_border, y_channel)) ** 2)
        values.append(math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse))
    return _reduce(values, batched)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_map(mu1, mu2, s11, s22, s12, data_range: float = 255.0):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    v1, v2, v12 = s11 - mu1**2, s22 - mu2**2, s12 - mu1 * mu2
    return ((2 * mu1 * mu2 + c1) * (2 * v12 + c2)) / ((mu1**2 + mu2**2 + c1) * (v1 + v2 + c2))


def _ssim_basicsr(a: np.ndarray, b: np.ndarray) -> float:
    g = _gaussian_1d()
    window = np.outer(g, g)
    pad = len(g) // 2
    if min(a.shape[:2]) <= 2 * pad:
        raise ValueError(f"basicsr SSIM needs images larger than 11×11, got {a.shape[0]}×{a.shape[1]}")

    def blur(x):
        return cv2.filter2D(x, -1, window, borderType=cv2.BORDER_REFLECT)[pad:-pad, pad:-pad]

    scores = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        m = _ssim_map(blur(x), blur(y), blur(x * x), blur(y * y), blur(x * y))
        scores.append(m.mean())
    return float(np.mean(scores))


def _ssim_gopro(a: np.ndarray, b: np.ndarray) -> float:
    """MATLAB's 3-D SSIM: separable 11-tap Gaussian along H, W and the channel axis, replicate padding.

    H and W go through OpenCV's separable filter in float64; along the channel axis (3 values, padded by
    replication to 13) the 11 taps fold into a C×C matrix. Same sums as a padded 3-D convolution, ~10× faster
    than torch's float64 conv3d on CPU (a 720p pair: 0.2-0.4 s instead of 2-4 s)."""
    a, b = (v if v.ndim == 3 else v[..., None] for v in (a, b))
    g = _gaussian_1d()
    c = a.shape[2]
    taps = np.clip(np.arange(c)[:, None] + np.arange(len(g)) - len(g) // 2, 0, c - 1)  # source channel of each tap
    mix = np.zeros((c, c))
    np.add.at(mix, (np.repeat(np.arange(c), len(g)), taps.ravel()), np.tile(g, c))

    def blur(v: np.ndarray) -> np.ndarray:
        spatial = cv2.sepFilter2D(v, cv2.CV_64F, g, g, borderType=cv2.BORDER_REPLICATE)  # all channels at once
        return spatial.reshape(v.shape) @ mix.T

    m = _ssim_map(blur(a), blur(b), blur(a * a), blur(b * b), blur(a * b))
    return float(m.mean())


def ssim(
    output: Any, target: Any, convention: str = "gopro", crop_border: int = 0, y_channel: bool = False
) -> float | np.ndarray:
    """SSIM under a named convention (module docstring); data range 255 on uint8 values."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown SSIM convention {convention!r}; choose one of {CONVENTIONS}")
    fn = _ssim_gopro if convention == "gopro" else _ssim_basicsr
    outs, tgts, batched = _pairs(output, target)
    values = [fn(_prepare(o, crop_border, y_channel), _prepare(t, crop_border, y_channel)) for o, t in zip(outs, tgts)]
    return _reduce(values, batched)


def score(output: np.ndarray, target: np.ndarray, convention: str = "gopro") -> tuple[float, float]:
    """(PSNR dB capped at PSNR_CAP, SSIM) of one uint8 H×W×3 image against its target.

    Identical images have PSNR = inf, which JSON cannot hold: capped, and reports label it so."""
    return min(float(psnr(output, target)), PSNR_CAP), float(ssim(output, target, convention=convention))


def score_methods(
    images: dict[str, np.ndarray],
    target: np.ndarray,
    scorer: Callable[[np.ndarray, np.ndarray], tuple[float, float]] = score,
) -> dict[str, float]:
    """`{method}_psnr`, `{method}_ssim` for each image (output, blurred input, baselines) against the sharp
    target, and `gain_psnr` (output − input) when both are there: the one output-vs-input comparison that
    validation, the training job's held-out table and evaluation all report."""
    scores: dict[str, float] = {}
    for method, img in images.items():
        scores[f"{method}_psnr"], scores[f"{method}_ssim"] = scorer(img, target)
    if "output" in images and "input" in images:
        scores["gain_psnr"] = scores["output_psnr"] - scores["input_psnr"]
    return scores


def describe_convention(convention: str = "gopro", crop_border: int = 0, y_channel: bool = False) -> str:
    """One line for report headers: exactly how the numbers were computed."""
    space = "Y (BT.601)" if y_channel else "RGB"
    window = (
        "3-D 11×11×11 Gaussian σ1.5, replicate pad"
        if convention == "gopro"
        else "2-D 11×11 Gaussian σ1.5 per channel, valid region"
    )
    return f"PSNR/SSIM on uint8 {space}, border crop {crop_border}px; SSIM convention '{convention}' ({window})"


class LPIPS:
    """LPIPS distance (Zhang et al. 2018) through the `lpips` package; AlexNet by default.

    The package ships its learned linear layers, but the backbone needs torchvision's ImageNet weights.
    They load from torchvision's cache (or `weights_path`) when present; otherwise this refuses, unless
    `allow_random_weights`, in which case `self.pretrained` is False and every report must say so.
    """

    def __init__(
        self,
        net: str = "alex",
        weights_path: str | None = None,
        allow_random_weights: bool = False,
        device: str = "cpu",
    ):
        import lpips  # here, not at the top: importing torchvision's models costs every Ray actor ~1.4 s
        import torch
        from torchvision import models as tvm

        from .pretrained import load_state

        tv_weights = {
            "alex": tvm.AlexNet_Weights.IMAGENET1K_V1,
            "vgg": tvm.VGG16_Weights.IMAGENET1K_V1,
            "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1,
        }
        if net not in tv_weights:
            raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(tv_weights)}")
        state = load_state(tv_weights[net], f"LPIPS ({net})", weights_path, allow_random_weights)
        self.net_name = net
        self.pretrained = state is not None
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lpips calls torchvision's deprecated `pretrained=`
            torch.manual_seed(0)  # a random backbone is at least the same random backbone every time
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if state is not None:
            backbone = getattr(tvm, {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}[net])(weights=None)
            backbone.load_state_dict(state)
            _copy_backbone(self.model.net, backbone.features)
        self.model = self.model.eval().to(device)
        self.device = device

    @property
    def label(self) -> str:
        return (
            f"LPIPS ({self.net_name}, {'ImageNet backbone' if self.pretrained else 'RANDOM backbone: not comparable'})"
        )

    def __call__(self, output: Any, target: Any) -> float | np.ndarray:
        import torch

        outs, tgts, batched = _pairs(output, target)
        values = []
        for o, t in zip(outs, tgts):
            a, b = to_tensor(o)[None].to(self.device), to_tensor(t)[None].to(self.device)
            with torch.no_grad():
                values.append(float(self.model(a, b).item()))
        return _reduce(values, batched)


def _copy_backbone(lpips_net: Any, features: Any) -> None:
    """lpips splits torchvision's `features` into slices that keep the original indices as names."""
    feats = dict(features.named_children())
    for slice_ in (m for n, m in lpips_net.named_children() if n.startswith("slice")):
        for idx, layer in slice_.named_children():
            layer.load_state_dict(feats[idx].state_dict())


#: photos larger than this on a side are scored on a centred window of it (camera shake and defocus cover the
#: whole frame; ~100 MB of work buffers instead of ~2 GB for a 100 Mpx scan)
SCORE_WINDOW = 2048


def blur_score(image: np.ndarray, h_size: int = 11) -> float:
    """How blurred a photo already is, without a reference: 0 sharp … 1 flat. Crété-Roffet et al.'s "blur
    effect" (2007): blur the image again with an `h_size` box and measure how much of its gradient survives;
    a sharp photo loses much, a blurred one little. Being a ratio, it depends far less on content than the
    variance of the Laplacian does, and it is read at full resolution because motion blur is a length in
    pixels. The same sums as `skimage.measure.blur_effect` (a test holds them equal) in OpenCV float32,
    4-5x faster, so that scoring a photo costs a small fraction of deblurring it. Measured on the sets in
    ../shared/data: sharp CBSD68/McMaster18 photos score 0.16-0.46, Köhler's real shake 0.52-0.81, Lai's
    real blur 0.27-0.72 (median 0.49)."""
    img = np.asarray(image)
    scale = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}.get(img.dtype, 1.0)
    h, w = img.shape[:2]
    if max(h, w) > SCORE_WINDOW:  # a centred full-resolution window: bounded memory, the same pixel scale
        i, j = max(0, (h - SCORE_WINDOW) // 2), max(0, (w - SCORE_WINDOW) // 2)
        img = img[i : i + SCORE_WINDOW, j : j + SCORE_WINDOW]
    if img.ndim == 3:  # luma as skimage's rgb2gray weighs it (ITU-R 709)
        img = img[..., :3].astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32)
    img = img.astype(np.float32) / scale
    if min(img.shape) < 4:
        return 0.0
    inner = (slice(2, img.shape[0] - 1), slice(2, img.shape[1] - 1))
    scores = []
    for axis in (0, 1):  # the derivative across rows, then across columns; the blurrier direction counts
        box = (1, h_size) if axis == 0 else (h_size, 1)  # OpenCV sizes are (width, height)
        blurred = cv2.blur(img, box, borderType=cv2.BORDER_REFLECT)
        dx, dy = (0, 1) if axis == 0 else (1, 0)
        sharp_grad = np.maximum(
            np.abs(cv2.Sobel(img, cv2.CV_32F, dx, dy, ksize=3, borderType=cv2.BORDER_REFLECT)), 1e-10
        )
        blur_grad = np.maximum(
            np.abs(cv2.Sobel(blurred, cv2.CV_32F, dx, dy, ksize=3, borderType=cv2.BORDER_REFLECT)), 1e-10
        )
        m1 = float(sharp_grad[inner].sum(dtype=np.float64))
        m2 = float(np.maximum(0.0, sharp_grad - blur_grad)[inner].sum(dtype=np.float64))
        scores.append(abs(m1 - m2) / m1)
    return max(scores)
