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
#: `total_variation`'s splitting weights, 1 to 181, ×2√2 a step (Krishnan & Fergus's, who stop below 256)
TV_BETAS = tuple(float(2 * np.sqrt(2)) ** i for i in range(6))


def noise_sigma(image: np.ndarray) -> float:
    """The noise σ of a float image in [0, 1] (gray or RGB), after Immerkær (1996): the mean absolute response
    of a mask that cancels smooth content (and much of an edge), scaled. Blur removes the content it would
    mistake for noise, which makes it suit blurred photos."""
    return float(np.sqrt(np.pi / 2) * _immerkaer_response(image).mean() / 6)  # float64, as it always was


def flat_noise_sigma(image: np.ndarray, block: int = 16, percentile: float = 10) -> float:
    """The noise σ of a float image in [0, 1] (not uint8) read where it is flattest: Immerkær's response averaged
    over block×block tiles, the tiles' 10th percentile. Fine texture (foliage, fur) raises the whole-photo mean of
    `noise_sigma` as noise would; the flattest tenth of a photo holds little texture and all of its noise. On the
    dev split clean blurred photos read up to 1.9 levels by `noise_sigma` and noisy ones from 1.9 (held-out: 1.7),
    an overlap; here clean ones read at most 0.8 and noisy ones from 1.4 (held-out: 1.3). Tiles with clipped
    pixels (over a tenth of them at black or white) are left out: clipping flattens the noise too, and a night
    photo's black sky would otherwise read as clean. `noise_sigma` when no whole clean tile is left."""
    img = np.asarray(image, np.float32)
    luma = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    response = _immerkaer_response(luma)
    h, w = (response.shape[0] // block) * block, (response.shape[1] // block) * block
    if not h or not w:
        return noise_sigma(image)
    clipped = ((luma <= 0.5 / 255) | (luma >= 254.5 / 255))[1:-1, 1:-1][:h, :w]
    tiles = response[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))
    usable = clipped.reshape(h // block, block, w // block, block).mean(axis=(1, 3)) <= 0.1
    if not usable.any():
        return noise_sigma(image)
    return float(np.sqrt(np.pi / 2) * np.percentile(tiles[usable], percentile) / 6)


def _immerkaer_response(image: np.ndarray) -> np.ndarray:
    """|the response of Immerkær's mask| on the luma, borders left out: noise passes, smooth content cancels."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    return np.abs(cv2.filter2D(img, -1, mask)[1:-1, 1:-1])


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
    k, img, flat = _prepare(image, kernel)
    padded, pad = _padded(img, max(k.shape))
    h, w = img.shape[:2]
    fh, fw = padded.shape[:2]
    K = transfer(k, (fh, fw), origin)
    inverse = (np.conj(K) / (np.abs(K) ** 2 + nsr)).astype(np.complex64)
    out = sfft.irfft2(
        sfft.rfft2(padded, axes=(0, 1), workers=-1) * inverse[..., None], s=(fh, fw), axes=(0, 1), workers=-1
    )[pad : pad + h, pad : pad + w]
    return out[..., 0] if flat else out


def total_variation(
    image: np.ndarray,
    kernel: np.ndarray,
    fidelity: float,
    origin: tuple[float, float] | None = None,
    betas: tuple[float, ...] = TV_BETAS,
) -> np.ndarray:
    """float H×W×C (or H×W) in [0, 1] and its kernel → float, same shape, not clipped: the image x minimising
    fidelity/2·|k∗x − y|² + |∇x|₁ (anisotropic total variation), by half-quadratic splitting as Krishnan & Fergus
    (2009) do for hyper-Laplacian priors: alternately the gradients w shrunk toward zero by 1/β (the exact
    minimiser of β/2·|w − ∇x|² + |w|₁) and x from w in the Fourier domain, β rising through `betas`.

    Why, beside `wiener`: Wiener's only regulariser damps every frequency the kernel lost by the same NSR, so on
    a noisy photo it either amplifies the noise or blurs the edges back. Few, strong edges is what a photo has;
    TV keeps them and flattens the noise between. On the dev split's noisy colour photos (σ about 2 levels) the
    route's estimated kernels gained +5.13 dB through TV (`fidelity` 12/NSR) against +4.20 through Wiener; with
    the true kernel +6.04 against +4.54. On clean photos it lost (gray −0.6 dB at its best weight): there the
    estimated kernel's errors, not noise, limit the result, and Wiener spreads them more kindly. Padding as in
    `wiener`; six Fourier solves per channel instead of one."""
    k, img, flat = _prepare(image, kernel)
    padded, pad = _padded(img, max(k.shape))
    h, w = img.shape[:2]
    fh, fw = padded.shape[:2]
    K = transfer(k, (fh, fw), origin)
    DD = difference_power((fh, fw))
    KK = (fidelity * np.abs(K) ** 2).astype(np.float32)
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        y = np.ascontiguousarray(padded[..., c])
        KY = (fidelity * np.conj(K) * sfft.rfft2(y, workers=-1)).astype(np.complex64)
        x = y
        for beta in betas:
            gx, gy = gradients(x)
            gx -= np.clip(gx, -1 / beta, 1 / beta)  # soft shrinkage: sign(g)·max(|g| − 1/β, 0)
            gy -= np.clip(gy, -1 / beta, 1 / beta)
            numerator = sfft.rfft2(divergence(gx, gy), workers=-1)
            numerator *= beta
            numerator += KY
            x = sfft.irfft2(numerator / (KK + beta * DD), s=(fh, fw), workers=-1)
        out[..., c] = x[pad : pad + h, pad : pad + w]
    return out[..., 0] if flat else out


def difference_power(shape: tuple[int, int], workers: int | None = None) -> np.ndarray:
    """|F∂x|² + |F∂y|² on the rfft2 grid of `shape`, float32: the power of the (circular) forward differences
    `gradients` takes, the gradient prior's term in TV's x-step and in the kernel estimator's latent-image step."""
    ex, ey = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    ex[0, 0], ex[0, -1] = -1, 1
    ey[0, 0], ey[-1, 0] = -1, 1
    return (np.abs(sfft.rfft2(ex, workers=workers)) ** 2 + np.abs(sfft.rfft2(ey, workers=workers)) ** 2).astype(
        np.float32
    )


def gradients(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences of a 2-D array, periodic (what the FFT solvers assume), written into two new arrays
    without the copies np.roll makes (the blind estimator's innermost loop)."""
    gx, gy = np.empty_like(x), np.empty_like(x)
    np.subtract(x[:, 1:], x[:, :-1], out=gx[:, :-1])
    np.subtract(x[:, :1], x[:, -1:], out=gx[:, -1:])
    np.subtract(x[1:], x[:-1], out=gy[:-1])
    np.subtract(x[:1], x[-1:], out=gy[-1:])
    return gx, gy


def divergence(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Dxᵀgx + Dyᵀgy, the adjoint of `gradients` (backward differences, periodic), in space: one FFT instead of
    two."""
    out = np.empty_like(gx)
    np.subtract(gx[:, -1:], gx[:, :1], out=out[:, :1])
    np.subtract(gx[:, :-1], gx[:, 1:], out=out[:, 1:])
    out[1:] += gy[:-1]
    out[:1] += gy[-1:]
    out -= gy
    return out


def _prepare(image: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(kernel float32 summing to 1, image float32 H×W×C, whether it came as H×W)."""
    k = np.asarray(kernel, np.float64)
    k = (k / k.sum()).astype(np.float32)
    img = np.asarray(image, np.float32)
    flat = img.ndim == 2
    return k, (img[..., None] if flat else img), flat


def _padded(img: np.ndarray, ksize: int) -> tuple[np.ndarray, int]:
    """H×W×C reflect-padded by twice `ksize` on each side (more on the far sides, up to a size the FFT factors
    fast), the outer half of the padding faded to the image's mean (`_taper`); and the padding's width."""
    h, w = img.shape[:2]
    pad = 2 * ksize
    fh, fw = sfft.next_fast_len(h + 2 * pad, real=True), sfft.next_fast_len(w + 2 * pad, real=True)
    padded = np.pad(img, ((pad, fh - h - pad), (pad, fw - w - pad), (0, 0)), mode="reflect")
    mean = img.mean(axis=(0, 1))
    rows, cols = _taper(fh, pad, h)[:, None, None], _taper(fw, pad, w)[None, :, None]
    for outside in (slice(0, pad), slice(pad + h, fh)):  # the strips only: the photo stays exactly as it is
        padded[outside] = mean + (padded[outside] - mean) * rows[outside]
    for outside in (slice(0, pad), slice(pad + w, fw)):
        padded[:, outside] = mean + (padded[:, outside] - mean) * cols[:, outside]
    return padded, pad


def _taper(n: int, start: int, length: int) -> np.ndarray:
    """Weights along one padded axis of n samples whose image spans [start, start + length): 1 on the image and
    the first start/2 samples beyond it on each side, then a raised cosine down to 0 at start samples out, and 0
    beyond (the far side's extra samples, where the FFT's size was rounded up)."""
    i = np.arange(n, dtype=np.float32)
    outside = np.maximum(np.maximum(start - i, i - (start + length - 1)), 0)
    half = max(1.0, start / 2)
    return (0.5 + 0.5 * np.cos(np.pi * np.clip(outside / half - 1, 0, 1))).astype(np.float32)
