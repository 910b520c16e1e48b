"""Temporal consistency for per-frame deblurring: optical flow (OpenCV's DIS), a forward–backward check,
and a recursive blend of the previous output warped onto the current frame.

A per-frame network corrects each frame a little differently (each frame has its own blur), so static detail
flickers. `Stabiliser` replaces each output by a blend of it and the previous (already stabilised) output
warped along the flow, weighted per pixel by how far that can be trusted:

- the flow must agree forwards and backwards (occlusions and flow failures do not), and land inside the frame;
- the two must already be close (`sigma`): a real change — something moving on its own, a cut — keeps the
  new frame, so moving edges stay sharp instead of ghosting.

The same flow machinery measures the result (`temporal_error`): the error between consecutive frames after
warping one onto the other along the *sharp* video's flow.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

#: flow is computed on frames no larger than this on their long side, then scaled up (cost, not accuracy)
FLOW_MAX_SIDE = 960


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb


class Flow:
    """Dense flow between two frames with DIS (medium preset), on a copy at most FLOW_MAX_SIDE wide."""

    def __init__(self) -> None:
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """For each pixel of `a`, its displacement (dx, dy) to the same point in `b`: H×W×2 float32."""
        a, b = _gray(a), _gray(b)
        h, w = a.shape
        scale = min(1.0, FLOW_MAX_SIDE / max(h, w))
        if scale == 1.0:
            return self.dis.calc(a, b, None)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = self.dis.calc(
            cv2.resize(a, size, interpolation=cv2.INTER_AREA), cv2.resize(b, size, interpolation=cv2.INTER_AREA), None
        )
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32(w / size[0])


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of an h×w frame (cached: every frame of a video needs the same three times)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def warp(img: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """`img` (a frame of the other end of `flow`) resampled onto the pixels of the flow's start frame."""
    gx, gy = _grid(*flow.shape[:2])
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], interpolation, borderMode=cv2.BORDER_REPLICATE)


def reliable(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Where the forward flow can be trusted: following it and then the backward flow returns near the start
    (Sundaram et al.'s consistency test), and it lands inside the frame. Bool H×W."""
    h, w = forward.shape[:2]
    gx, gy = _grid(h, w)
    back = warp(backward, forward)
    err = np.sum((forward + back) ** 2, axis=-1)
    tol = 0.01 * (np.sum(forward**2, axis=-1) + np.sum(back**2, axis=-1)) + 0.5
    x, y = gx + forward[..., 0], gy + forward[..., 1]
    return (err < tol) & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


class Stabiliser:
    """Feed it per-frame outputs in order; it returns the temporally consistent ones.

    `alpha` is the most the previous output may weigh, `sigma` (in 8-bit levels) how different the two may
    be before the new frame wins. Measured on the shaky test clips (benchmarks/video.py): 0.8 and 20 cut the
    temporal error by ~45 % and raise PSNR (averaging frames with different blurs averages their errors).
    """

    def __init__(self, alpha: float = 0.8, sigma: float = 20.0) -> None:
        if not 0 <= alpha < 1 or sigma <= 0:
            raise ValueError(f"need 0 <= alpha < 1 and sigma > 0, got alpha={alpha}, sigma={sigma}")
        self.alpha, self.sigma = alpha, sigma
        self.flow = Flow()
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame (a new video or a new segment)."""
        self.prev_out: np.ndarray | None = None
        self.prev_pred: np.ndarray | None = None

    def __call__(self, pred: np.ndarray) -> np.ndarray:
        """One per-frame output (uint8 H×W×3) → its stabilised version (uint8)."""
        p = pred.astype(np.float32)
        if self.prev_out is None or self.prev_out.shape != p.shape:
            out = p
        else:
            # flow between the network's outputs: sharper than the blurred inputs, so it tracks better
            fwd, bwd = self.flow(pred, self.prev_pred), self.flow(self.prev_pred, pred)
            previous = warp(self.prev_out, fwd, cv2.INTER_CUBIC)
            diff = np.abs(p - previous).mean(axis=-1)
            weight = self.alpha * reliable(fwd, bwd) * np.exp(-((diff / self.sigma) ** 2))
            weight = cv2.GaussianBlur(weight.astype(np.float32), (0, 0), 1.0)  # no hard seams at mask edges
            out = p + weight[..., None] * (previous - p)
        self.prev_out, self.prev_pred = out, pred
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def temporal_error(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference (8-bit levels) between each frame and the previous one warped onto it,
    along the flow of `reference` (the sharp video), where that flow passes the forward–backward check.
    The sharp video's own value is the floor (resampling and flow error)."""
    flow = Flow()
    errors = []
    for t in range(1, len(frames)):
        fwd, bwd = flow(reference[t], reference[t - 1]), flow(reference[t - 1], reference[t])
        mask = reliable(fwd, bwd)
        if mask.any():
            moved = warp(frames[t - 1].astype(np.float32), fwd)
            errors.append(float(np.abs(frames[t].astype(np.float32) - moved)[mask].mean()))
    return float(np.mean(errors)) if errors else 0.0
