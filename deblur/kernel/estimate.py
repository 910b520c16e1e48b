"""Blind blur-kernel estimation: coarse-to-fine, alternating an L0-gradient latent image and a least-squares kernel.

After Pan et al. ("L0-regularized intensity and gradient prior", 2014) and Xu et al. (2013): the latent image of
a blurred photo is sought with few, strong edges (an L0 prior on its gradients, solved by half-quadratic splitting);
the kernel is then the one that maps those edges' gradients onto the photo's, on the kernel's support, with a small
Tikhonov weight. A pyramid from a 5-pixel kernel up to the full size keeps the alternation out of the trivial
(no-blur) solution; the strongest gradients per orientation are kept as Cho & Lee do, and that threshold falls
each iteration so finer edges join once the kernel is roughly right.

Everything is float32 on FFTs of sizes scipy factors fast (a prime size costs several times more), padded by
reflection beyond the kernel's reach; the border the padding invents is masked out of the kernel's equations.
The FFTs run on one thread (`FFT_WORKERS`): at these sizes (a few hundred pixels) scipy's thread pool costs more
than it saves (two schedules one after the other took 1.6 s instead of 2.5 s on 2 cores), and the route runs its
schedules side by side in threads instead (numpy and scipy release the GIL), which uses the cores better.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import fft as sfft

from .deconvolve import difference_power, divergence, gradients, transfer

FFT_WORKERS = 1


@dataclass(frozen=True)
class EstimateConfig:
    """One estimation schedule. `ksize` is the largest kernel it can find (pixels, odd); `lam` the L0 weight."""

    ksize: int = 35
    lam: float = 2e-3
    iters: int = 5  # alternations per pyramid level
    fine_iters: int | None = None  # alternations on the `fine_levels` finest levels, when not `iters`
    fine_levels: int = 2
    weight: float = 2.0  # Tikhonov weight of the kernel's least squares
    kappa: float = 2.0  # L0 splitting: beta grows by kappa from 2·lam up to beta_max
    beta_max: float = 1e5
    cg_iters: int = 20
    # after the pyramid, alternations at full size with a finer latent (L0 weight `refine_lam`) and a kernel
    # solved to `refine_cg` iterations: the pyramid's few-iteration kernels are regularised toward the coarse
    # shape; this sharpens them (dev gray crops: similarity to the true kernel 0.85 → 0.87, best-of-schedules
    # +5.6 → +7.0 dB)
    refine_iters: int = 0
    refine_lam: float = 1e-3
    refine_cg: int = 20


def _fast_shape(h: int, w: int) -> tuple[int, int]:
    return sfft.next_fast_len(h, real=True), sfft.next_fast_len(w, real=True)


class _Frame:
    """The FFT constants of one padded pyramid level."""

    def __init__(self, y: np.ndarray):
        self.y, self.shape = y, y.shape
        self.DD = difference_power(self.shape, FFT_WORKERS)
        self.Y = sfft.rfft2(y, workers=FFT_WORKERS)

    def irfft(self, F: np.ndarray) -> np.ndarray:
        return sfft.irfft2(F, s=self.shape, workers=FFT_WORKERS)

    def rfft(self, x: np.ndarray) -> np.ndarray:
        return sfft.rfft2(x, workers=FFT_WORKERS)


def _l0_latent(f: _Frame, k: np.ndarray, lam: float, cfg: EstimateConfig) -> np.ndarray:
    """argmin_x |k∗x − y|² + lam·|∇x|₀ by half-quadratic splitting (beta from 2·lam up to beta_max)."""
    K = transfer(k, f.shape, workers=FFT_WORKERS)
    KY, KK = np.conj(K) * f.Y, np.abs(K) ** 2
    x, beta = f.y, 2 * lam
    while beta < cfg.beta_max:
        gx, gy = gradients(x)
        keep = np.square(gx)
        keep += np.square(gy)
        keep = keep >= lam / beta  # a mask multiplied in: boolean indexing cost 3× as much
        denominator = f.DD * beta
        denominator += KK
        if keep.any():
            gx *= keep
            gy *= keep
            numerator = f.rfft(divergence(gx, gy))
            numerator *= beta
            numerator += KY
            numerator /= denominator
            x = f.irfft(numerator)
        else:  # the first steps, while lam/beta is above every gradient, are Tikhonov solves
            x = f.irfft(KY / denominator)
        beta *= cfg.kappa
    return x


def _kernel_lsq(f: _Frame, lx, ly, bx, by, k0: np.ndarray, cfg: EstimateConfig) -> np.ndarray:
    """min_k |∇l ∗ k − ∇b|² + weight·|k|² over k's support, by conjugate gradients warm-started at k0."""
    h, w = k0.shape
    LX, LY = f.rfft(lx), f.rfft(ly)
    M = np.abs(LX) ** 2 + np.abs(LY) ** 2
    rhs = np.conj(LX) * f.rfft(bx) + np.conj(LY) * f.rfft(by)

    def support(F):
        full = np.roll(f.irfft(F), (h // 2, w // 2), axis=(0, 1))
        return full[:h, :w]

    def A(k):
        return support(M * transfer(k, f.shape, workers=FFT_WORKERS)) + cfg.weight * k

    k = k0.astype(np.float32)
    r = support(rhs) - A(k)
    p, rs = r.copy(), float(np.sum(r * r))
    for _ in range(cfg.cg_iters):
        if rs < 1e-12:
            break
        Ap = A(p)
        a = rs / float(np.sum(p * Ap))
        k, r = k + a * p, r - a * Ap
        rs_new = float(np.sum(r * r))
        p, rs = r + (rs_new / rs) * p, rs_new
    return k


def clean_kernel(k: np.ndarray, frac: float = 0.05, min_mass: float = 0.1) -> np.ndarray:
    """Non-negative, small values (below frac of the peak) and weak isolated blobs removed, sum 1."""
    k = np.clip(k, 0, None).astype(np.float32)
    if k.sum() <= 0:
        out = np.zeros_like(k)
        out[k.shape[0] // 2, k.shape[1] // 2] = 1
        return out
    k[k < k.max() * frac] = 0
    k /= k.sum()
    n, labels = cv2.connectedComponents((k > 0).astype(np.uint8), connectivity=8)
    for i in range(1, n):
        if k[labels == i].sum() < min_mass:
            k[labels == i] = 0
    return k / k.sum()


def _edge_threshold(x: np.ndarray, ksize: int) -> float:
    """The squared gradient magnitude above which each of 4 orientation bins keeps at least 20·ksize pixels."""
    gx, gy = gradients(x)
    mag = (gx * gx + gy * gy)[:-1, :-1]
    angle = np.arctan(gy[:-1, :-1] / np.where(gx[:-1, :-1] == 0, 1e-12, gx[:-1, :-1]))
    need = max(10, 20 * ksize)
    edges = [-np.pi / 2, -np.pi / 4, 0, np.pi / 4, np.pi / 2 + 1e-9]
    thr = np.inf
    for a, b in zip(edges[:-1], edges[1:]):
        v = np.sort(mag[(angle >= a) & (angle < b)])[::-1]
        thr = min(thr, float(v[min(len(v) - 1, need)]) if len(v) else 0.0)
    return thr


def _pyramid(ksize: int) -> list[tuple[float, int]]:
    """(scale, kernel size) from a ~5-px kernel up to (1, ksize), each level √2 larger."""
    levels, s, ks = [], 1.0, ksize
    while ks >= 5:
        levels.append((s, ks))
        s *= np.sqrt(0.5)
        ks = int(round(ksize * s)) | 1
    return levels[::-1]


def estimate_kernel(gray: np.ndarray, cfg: EstimateConfig = EstimateConfig()) -> np.ndarray:
    """A gray float image in [0, 1] (a textured crop of a few hundred pixels is enough) → its blur kernel,
    ksize×ksize, non-negative, sum 1 (not centred: `deblur.data.synth.normalise_kernel` does that)."""
    gray = np.asarray(gray, np.float32)
    levels = _pyramid(cfg.ksize)
    k, thr = None, None
    for li, (s, ks) in enumerate(levels):
        iters = cfg.fine_iters if cfg.fine_iters and li >= len(levels) - cfg.fine_levels else cfg.iters
        ys = cv2.resize(gray, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else gray
        if k is None:
            k = np.zeros((ks, ks), np.float32)
            k[ks // 2, ks // 2 - 1 : ks // 2 + 2] = 1 / 3
        else:
            k = clean_kernel(cv2.resize(k, (ks, ks), interpolation=cv2.INTER_LINEAR))
        p = ks
        fh, fw = _fast_shape(ys.shape[0] + 2 * p, ys.shape[1] + 2 * p)
        yp = np.pad(ys, ((p, fh - ys.shape[0] - p), (p, fw - ys.shape[1] - p)), mode="reflect")
        frame = _Frame(yp)
        inner = np.zeros(yp.shape, np.float32)  # the photo itself, less half a kernel: no invented border
        inner[p + ks // 2 : p + ys.shape[0] - ks // 2, p + ks // 2 : p + ys.shape[1] - ks // 2] = 1
        bx, by = (g * inner for g in gradients(yp))
        lam = cfg.lam
        for _ in range(iters):
            lx, ly = gradients(_l0_latent(frame, k, lam, cfg))
            if thr is None:
                thr = _edge_threshold(yp, ks)
            keep = lx * lx + ly * ly >= thr
            if not keep.any():
                thr *= 0.81
                keep = lx * lx + ly * ly >= thr
            thr /= 1.1
            k = clean_kernel(_kernel_lsq(frame, lx * keep * inner, ly * keep * inner, bx, by, k, cfg))
            lam = max(lam / 1.1, 1e-4)
    refine = replace(cfg, cg_iters=cfg.refine_cg)
    for _ in range(cfg.refine_iters):
        lx, ly = gradients(_l0_latent(frame, k, cfg.refine_lam, cfg))
        keep = lx * lx + ly * ly >= thr
        k = clean_kernel(_kernel_lsq(frame, lx * keep * inner, ly * keep * inner, bx, by, k, refine))
    return k


def kernel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two kernels at their best relative shift: 1 for the same shape anywhere."""
    shape = tuple(sfft.next_fast_len(a.shape[i] + b.shape[i], real=True) for i in (0, 1))
    A = np.zeros(shape, np.float32)
    B = np.zeros(shape, np.float32)
    A[: a.shape[0], : a.shape[1]] = a
    B[: b.shape[0], : b.shape[1]] = b
    corr = sfft.irfft2(sfft.rfft2(A) * np.conj(sfft.rfft2(B)), s=shape)
    return float(corr.max() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def similarities(kernels: list[np.ndarray]) -> np.ndarray:
    """The n×n matrix of `kernel_similarity` between kernels (1 on the diagonal)."""
    n = len(kernels)
    sims = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            sims[i, j] = sims[j, i] = kernel_similarity(kernels[i], kernels[j])
    return sims


def consensus(sims: np.ndarray) -> tuple[int, float]:
    """From `similarities`: the index of the kernel most like the others (the medoid) and its mean similarity to
    them. Several schedules that find the same shape found the blur; one that disagrees with the rest found
    something else."""
    n = len(sims)
    agreement = (sims.sum(1) - 1) / max(1, n - 1)
    best = int(np.argmax(agreement))
    return best, float(agreement[best])


def gradient_sparsity(x: np.ndarray) -> float:
    """ℓ1/ℓ2 of an image's gradients (Krishnan et al. 2011): low for few strong edges, higher for the residual
    blur of too small a kernel and for the ringing of a wrong one, so it ranks deconvolutions without the truth."""
    g = np.concatenate([np.diff(x, axis=1).ravel(), np.diff(x, axis=0).ravel()])
    return float(np.abs(g).sum() / (np.sqrt((g * g).sum()) + 1e-12))
