"""Non-blind deconvolution: a kernel known (or estimated), the sharp image back."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import fft as sfft

#: Noise-to-signal ratio of the Wiener filter: 8-bit quantisation alone needs about this much; measured best of
#: 1e-3 … 3e-2 on photos with 9-21 px linear motion blur (+4 dB there with the true kernel).
WIENER_NSR = 0.01
#: the NSR for an estimated kernel, by the photo's noise: (noise σ in 8-bit levels)² × NSR_PER_LEVEL², within
#: NSR_RANGE. On the dev split of benchmarks/shake.py, clean photos with estimated kernels gained most at
#: 0.003-0.005 and noisy ones (σ ≈ 2 levels) at 0.01-0.02; an estimated kernel's errors want more than the true
#: kernel would, hence the floor.
NSR_PER_LEVEL, NSR_RANGE = 0.05, (0.005, 0.02)


def noise_sigma(image: np.ndarray) -> float:
    """The noise σ of a float image in [0, 1] (gray or RGB), after Immerkær (1996): the mean absolute response
    of a mask that cancels smooth content (and much of an edge), scaled. Blur removes the content it would
    mistake for noise, which makes it suit blurred photos."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = cv2.filter2D(img, -1, mask)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def noise_adaptive_nsr(image: np.ndarray) -> float:
    """The Wiener NSR for deconvolving this photo with an estimated kernel (see NSR_PER_LEVEL)."""
    level = noise_sigma(image) * 255 * NSR_PER_LEVEL
    return float(np.clip(level * level, *NSR_RANGE))


def transfer(
    k: np.ndarray, shape: tuple[int, int], origin: tuple[float, float] | None = None, workers: int = -1
) -> np.ndarray:
    """The transfer function (rfft2) of kernel k on a periodic frame of `shape`, with the point `origin` of k
    (row, column; sub-pixel allowed) at the frame's origin: by default its centre pixel, so an odd, centred
    kernel shifts nothing. A fractional origin is a phase ramp, exact where shifting the kernel by
    interpolation would blur it. `workers`: scipy's FFT threads (the estimator, which runs schedules in threads
    of its own, passes 1)."""
    centre = (k.shape[0] // 2, k.shape[1] // 2)
    psf = np.zeros(shape, np.float32)
    psf[: k.shape[0], : k.shape[1]] = k
    psf = np.roll(psf, (-centre[0], -centre[1]), axis=(0, 1))
    K = sfft.rfft2(psf, workers=workers)
    if origin is not None and (origin[0] != centre[0] or origin[1] != centre[1]):
        fy = sfft.fftfreq(shape[0])[:, None]
        fx = sfft.rfftfreq(shape[1])[None, :]
        K = K * np.exp(2j * np.pi * (fy * (origin[0] - centre[0]) + fx * (origin[1] - centre[1]))).astype(np.complex64)
    return K


def centre_of_mass(k: np.ndarray) -> tuple[float, float]:
    """(row, column) of a kernel's centre of mass: where a blurred photo's content sits relative to the scene.

    A blind estimate is found only up to a shift, and deconvolving shifts the photo by as much; deconvolving about
    the centre of mass keeps the output where the sharp scene is. Rounding it to the nearest pixel left up to half
    a pixel, which costs 4.8 dB with the true kernel on the dev gray crops of benchmarks/shake.py (a quarter
    pixel: 1.2 dB)."""
    k = np.clip(np.asarray(k, np.float64), 0, None)
    total = k.sum()
    ys, xs = np.mgrid[: k.shape[0], : k.shape[1]]
    return float((k * ys).sum() / total), float((k * xs).sum() / total)


def wiener(
    image: np.ndarray, kernel: np.ndarray, nsr: float = WIENER_NSR, origin: tuple[float, float] | None = None
) -> np.ndarray:
    """float H×W×C (or H×W) in [0, 1] and its kernel (a true convolution) → float, same shape, not clipped:
    conj(K) / (|K|² + nsr) in the Fourier domain, K about `origin` (see `transfer`; `centre_of_mass(kernel)` for an
    estimated kernel).

    The image is reflect-padded by twice the kernel size (to a size the FFT factors fast), and the outer half of
    that padding fades to the image's mean (`_taper`): the FFT is circular, and where one side's padding met the
    other's, the jump rang back into the photo. Fading it out gained +0.4 dB of whole-photo PSNR on the 99 dev
    streak photos (9-21 px) the route deconvolved (+2.42 → +2.85), more than padding four times as wide (+2.79)."""
    k = np.asarray(kernel, np.float64)
    k = (k / k.sum()).astype(np.float32)
    img = np.asarray(image, np.float32)
    flat = img.ndim == 2
    if flat:
        img = img[..., None]
    h, w = img.shape[:2]
    pad = 2 * max(k.shape)
    fh, fw = sfft.next_fast_len(h + 2 * pad, real=True), sfft.next_fast_len(w + 2 * pad, real=True)
    padded = np.pad(img, ((pad, fh - h - pad), (pad, fw - w - pad), (0, 0)), mode="reflect")
    mean = img.mean(axis=(0, 1))
    rows, cols = _taper(fh, pad, h)[:, None, None], _taper(fw, pad, w)[None, :, None]
    for outside in (slice(0, pad), slice(pad + h, fh)):  # the strips only: the photo stays exactly as it is
        padded[outside] = mean + (padded[outside] - mean) * rows[outside]
    for outside in (slice(0, pad), slice(pad + w, fw)):
        padded[:, outside] = mean + (padded[:, outside] - mean) * cols[:, outside]
    K = transfer(k, (fh, fw), origin)
    inverse = (np.conj(K) / (np.abs(K) ** 2 + nsr)).astype(np.complex64)
    out = sfft.irfft2(
        sfft.rfft2(padded, axes=(0, 1), workers=-1) * inverse[..., None], s=(fh, fw), axes=(0, 1), workers=-1
    )[pad : pad + h, pad : pad + w]
    return out[..., 0] if flat else out


def _taper(n: int, start: int, length: int) -> np.ndarray:
    """Weights along one padded axis of n samples whose image spans [start, start + length): 1 on the image and
    the first start/2 samples beyond it on each side, then a raised cosine down to 0 at start samples out, and 0
    beyond (the far side's extra samples, where the FFT's size was rounded up)."""
    i = np.arange(n, dtype=np.float32)
    outside = np.maximum(np.maximum(start - i, i - (start + length - 1)), 0)
    half = max(1.0, start / 2)
    return (0.5 + 0.5 * np.cos(np.pi * np.clip(outside / half - 1, 0, 1))).astype(np.float32)
