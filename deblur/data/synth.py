"""Synthetic blur: camera-shake trajectories and their PSFs, plus linear and Gaussian kernels. Seeded.

Motion kernels follow DeblurGAN's `motion_blur/` (after Boracchi & Foi 2012): a particle walks on the
plane with a velocity of fixed speed, nudged each step by Gaussian shake and pulled back toward its
start (centripetal inertia), with rare impulsive "big shakes" that reverse it; the PSF at an exposure
fraction f is the trajectory's first f·iters samples splatted bilinearly onto a 64×64 canvas.

Two ways to apply a kernel:
- `physical` (default): the kernel is non-negative and sums to 1 (blur conserves light), the image is
  convolved with reflect borders, no contrast stretch; optionally in linear light (`gamma`, as a camera
  integrates photons before its tone curve) and with Gaussian sensor noise.
- `deblurgan`: faithful to DeblurGAN's `blur_image.py`, kept for reproducing its data: the PSF is
  min–max stretched instead of normalised, zero borders, and the result min–max stretched to [0, 1].

Training draws whole degradations from a `BlurRecipe`, made the way a camera makes them (after Rim et
al., "Realistic Blur Synthesis for Learning Image Deblurring", ECCV 2022): the sharp image goes back
through an inverse camera response into linear light, light sources brighter than white are restored
(`saturation_*`), the blur integrates them (one kernel, or for `shake` a field of kernels from a camera
that rotates: `shake_blur`), the sensor clips at white and adds Poisson–Gaussian noise (`shot_noise`,
`noise_sigma`), the tone curve comes back, and JPEG last.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bumped whenever the same seed starts giving a different kernel or image, so shards made by an older
# version are re-encoded (their fingerprints include it). 2: kernels centred to the exact centre of mass.
VERSION = 2
KINDS = ("motion", "linear", "gaussian", "defocus")  # single kernels (random_kernel, the prepare job)
RECIPE_KINDS = (*KINDS, "shake", "none")  # what a BlurRecipe draws: also the shake field and no blur
MODES = ("physical", "deblurgan")
DEBLURGAN_EXPL = (0.01, 0.009, 0.008, 0.007, 0.005, 0.003)
DEBLURGAN_FRACTIONS = (1 / 100, 1 / 10, 1 / 2, 1.0)


def pair_seed(base_seed: int, key: str) -> int:
    """A stable per-pair seed (independent of Python's hash randomisation and of list order)."""
    return (base_seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**32)


def random_trajectory(
    rng: np.random.Generator, canvas: int = 64, iters: int = 2000, max_len: float = 60.0, expl: float | None = None
) -> np.ndarray:
    """Complex positions of the shaking particle, centred on the canvas."""
    if expl is None:
        expl = 0.1 * rng.uniform()
    centripetal = 0.7 * rng.uniform()
    prob_big_shake = 0.2 * rng.uniform()
    gaussian_shake = 10 * rng.uniform()
    step = max_len / (iters - 1)
    v = np.exp(1j * np.deg2rad(360 * rng.uniform())) * (expl if expl > 0 else step)
    x = np.zeros(iters, dtype=np.complex128)
    big = rng.uniform(size=iters) < prob_big_shake * expl
    noise = rng.standard_normal(iters) + 1j * rng.standard_normal(iters)
    turn = np.exp(1j * (np.pi + rng.uniform(size=iters) - 0.5))
    for t in range(iters - 1):
        dv = (2 * v * turn[t] if big[t] else 0) + expl * (gaussian_shake * noise[t] - centripetal * x[t]) * step
        v = v + dv
        v = v / abs(v) * step
        x[t + 1] = x[t] + v
    x -= complex(x.real.min(), x.imag.min())
    x = x - complex(x[0].real % 1.0, x[0].imag % 1.0) + (1 + 1j)
    x += complex(np.ceil((canvas - x.real.max()) / 2), np.ceil((canvas - x.imag.max()) / 2))
    return x


def trajectory_psf(x: np.ndarray, canvas: int = 64, fraction: float = 1.0) -> np.ndarray:
    """Bilinear splat of the first `fraction` of the trajectory onto a canvas×canvas grid (unnormalised)."""
    n = max(1, int(round(fraction * len(x))))
    pts = x[:n]
    # Move the points so their mean (the PSF's centre of mass: bilinear splats keep it) lies on a pixel.
    # Otherwise the blurred image is also shifted by a random sub-pixel amount against the sharp one, a
    # misalignment no network can predict (see normalise_kernel).
    mean = pts.mean()
    pts = pts - (mean - complex(round(mean.real), round(mean.imag)))
    cols, rows = pts.real, pts.imag
    c0 = np.clip(np.floor(cols).astype(int), 0, canvas - 2)
    r0 = np.clip(np.floor(rows).astype(int), 0, canvas - 2)
    fc = np.clip(cols - c0, 0, 1)
    fr = np.clip(rows - r0, 0, 1)
    psf = np.zeros((canvas, canvas), dtype=np.float64)
    np.add.at(psf, (r0, c0), (1 - fr) * (1 - fc))
    np.add.at(psf, (r0, c0 + 1), (1 - fr) * fc)
    np.add.at(psf, (r0 + 1, c0), fr * (1 - fc))
    np.add.at(psf, (r0 + 1, c0 + 1), fr * fc)
    return psf / len(x)


def linear_kernel(length: float, angle_deg: float, size: int | None = None) -> np.ndarray:
    """A straight motion streak, anti-aliased by drawing at 8× and averaging down."""
    size = size or (int(np.ceil(length)) | 1) + 2
    s = 8
    big = np.zeros((size * s, size * s), dtype=np.float32)
    c = size * s / 2
    dx, dy = np.cos(np.deg2rad(angle_deg)) * length * s / 2, np.sin(np.deg2rad(angle_deg)) * length * s / 2
    cv2.line(big, (int(c - dx), int(c - dy)), (int(c + dx), int(c + dy)), 1.0, thickness=s, lineType=cv2.LINE_AA)
    k = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
    return k


def defocus_kernel(radius: float) -> np.ndarray:
    """An out-of-focus disk (a lens's aperture): each pixel weighted by the share of it inside the circle
    (8×8 samples per pixel), so edges are anti-aliased and the disk is exactly symmetric about its centre."""
    size = 2 * int(np.ceil(radius)) + 3
    s = 8
    coords = (np.arange(size * s) + 0.5) / s - size / 2  # sub-pixel sample centres, the kernel centre at 0
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2 <= radius**2).astype(np.float64)
    return inside.reshape(size, s, size, s).mean(axis=(1, 3))


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    g = cv2.getGaussianKernel(2 * radius + 1, sigma)
    return g @ g.T


def normalise_kernel(k: np.ndarray) -> np.ndarray:
    """Non-negative, summing to 1, cropped to its support and centred on its centre of mass.

    Centring matters: a trajectory PSF cropped to its bounding box has its mass off-centre, so the
    blurred image would also be shifted by up to half the blur length relative to the sharp one, a
    misalignment no deblurring network can learn (the shift is random per pair). This puts the centroid
    on the centre pixel to the nearest pixel; `trajectory_psf` puts motion PSFs' centroids on a pixel
    exactly, since even the leftover half-pixel shift cost the sample's held-out pairs up to 2 dB of input
    PSNR that no network could win back (and taught it to hedge toward smooth outputs).
    """
    k = np.clip(np.asarray(k, dtype=np.float64), 0, None)
    if k.sum() <= 0:
        raise ValueError("kernel has no positive mass")
    rows, cols = np.nonzero(k > k.max() * 1e-6)
    k = k[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    pads = []
    for axis in (0, 1):
        weights = k.sum(axis=1 - axis)
        c = int(round(float(np.dot(np.arange(len(weights)), weights) / weights.sum())))
        before, after = c, len(weights) - 1 - c  # distances from the centroid to each edge
        pads.append((max(0, after - before), max(0, before - after)))
    k = np.pad(k, pads)
    return (k / k.sum()).astype(np.float32)


def random_kernel(rng: np.random.Generator, kind: str = "motion", max_len: float = 60.0) -> np.ndarray:
    """A random kernel of a kind, normalised (physical). Motion uses DeblurGAN's parameter ranges."""
    if kind == "motion":
        x = random_trajectory(rng, max_len=max_len, expl=float(rng.choice(DEBLURGAN_EXPL)))
        return normalise_kernel(trajectory_psf(x, fraction=float(rng.choice(DEBLURGAN_FRACTIONS[1:]))))
    if kind == "linear":
        return normalise_kernel(linear_kernel(rng.uniform(5, max(6.0, max_len / 2)), rng.uniform(0, 180)))
    if kind == "gaussian":
        return normalise_kernel(gaussian_kernel(rng.uniform(0.8, 3.0)))
    if kind == "defocus":
        return normalise_kernel(defocus_kernel(rng.uniform(1.0, max(1.5, max_len / 8))))
    raise ValueError(f"unknown blur kind {kind!r}; choose one of {KINDS}")


def _homography(yaw: float, pitch: float, roll: float, focal: float, centre: tuple[float, float]) -> np.ndarray:
    """K R K⁻¹ for a camera rotated by small angles (radians) about its centre of projection; image
    coordinates (x right, y down) with the principal point at `centre`: how a rotating camera moves the
    picture on its sensor (Whyte et al., "Non-uniform deblurring for shaken images", 2012)."""
    cy, cp, cr = np.cos([yaw, pitch, roll])
    sy, sp, sr = np.sin([yaw, pitch, roll])
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    k = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]])
    return k @ r_roll @ r_pitch @ r_yaw @ np.linalg.inv(k)


@dataclass
class ShakeField:
    """A camera's rotation over one exposure: a homography per time sample; the picture is their average.

    `kernel_at(x, y)` is the local PSF at one pixel: the blur varies over the frame whenever the camera
    rolls (in-plane rotation) or its principal point is near, so no single kernel describes the image.
    """

    homographies: list[np.ndarray]

    def positions(self, x: float, y: float) -> np.ndarray:
        """Where the scene point seen at (x, y) lands at each instant (complex x + iy)."""
        p = np.stack([h @ np.array([x, y, 1.0]) for h in self.homographies])
        return p[:, 0] / p[:, 2] + 1j * p[:, 1] / p[:, 2]

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        pts = self.positions(x, y) - complex(x, y)
        extent = int(np.ceil(np.abs(pts).max())) + 3
        canvas = 2 * extent + 1
        return normalise_kernel(trajectory_psf(pts + complex(extent, extent), canvas=canvas))

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Average of the frame warped by every homography (float H×W×C, reflect borders): true integration
        of the moving picture, in whatever light (linear or not) the caller gives."""
        h, w = img.shape[:2]
        out = np.zeros_like(img, dtype=np.float32)
        for hom in self.homographies:
            # the scene point at p appears at H·p, so sensor pixel q sees the scene at H⁻¹q: warpPerspective's
            # forward mode, which samples src(H⁻¹q)
            out += cv2.warpPerspective(img, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).reshape(
                out.shape
            )
        return out / len(self.homographies)


def shake_field(
    rng: np.random.Generator,
    size: tuple[int, int],
    length: float,
    roll_px: float,
    frame: float = 4.0,
) -> ShakeField:
    """A random camera shake over a size=(h, w) window: yaw and pitch follow a hand-shake trajectory
    (`random_trajectory`, Boracchi & Foi) of `length` pixels at the principal point; the camera also rolls
    so that the window's farthest corner from the rotation centre moves up to `roll_px` pixels. The
    principal point lies anywhere in a frame `frame`× the window's size around it (the window is a crop
    of a larger photo), the focal length 0.7–1.4× that frame's width. Both paths are centred on their mean
    so that the blurred picture stays registered with the sharp one."""
    h, w = size
    x = random_trajectory(rng, canvas=64, max_len=max(length, 1e-3), expl=float(rng.choice(DEBLURGAN_EXPL)))
    steps = max(2, int(np.ceil(length)) + 1)  # about a pixel apart: bilinear warps fill the rest
    path = x[np.linspace(0, len(x) - 1, steps).round().astype(int)]
    path = path - path.mean()
    walk = np.cumsum(rng.standard_normal(steps))
    walk = np.convolve(walk - walk.mean(), np.ones(5) / 5, mode="same")
    walk = walk / max(np.abs(walk).max(), 1e-9)
    span = frame * max(h, w)
    centre = (w / 2 + rng.uniform(-span / 2, span / 2), h / 2 + rng.uniform(-span / 2, span / 2))
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64)
    far = float(np.max(np.hypot(corners[:, 0] - centre[0], corners[:, 1] - centre[1])))
    roll = walk * rng.uniform(0, roll_px) / far
    roll -= roll.mean()
    focal = span * rng.uniform(0.7, 1.4)
    return ShakeField(
        [
            _homography(np.arctan(p.real / focal), np.arctan(p.imag / focal), r, focal, centre)
            for p, r in zip(path, roll)
        ]
    )


def apply_kernel(
    img: np.ndarray,
    kernel: np.ndarray,
    mode: str = "physical",
    gamma: float | None = None,
    noise_sigma: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Blur a uint8 RGB image with `kernel` (true convolution, so the PSF is not mirrored)."""
    if mode not in MODES:
        raise ValueError(f"unknown blur mode {mode!r}; choose one of {MODES}")
    if mode == "deblurgan":
        flipped = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)
        k = cv2.normalize(flipped, None, 0, 1, cv2.NORM_MINMAX)
        out = cv2.filter2D(img.astype(np.float32) / 255.0, -1, k, borderType=cv2.BORDER_CONSTANT)
        out = cv2.normalize(np.abs(out), None, 0, 1, cv2.NORM_MINMAX)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    return expose(img, kernel, gamma=gamma, noise_sigma=noise_sigma, rng=rng)


def expose(
    img: np.ndarray,
    blur: np.ndarray | ShakeField,
    gamma: float | None = None,
    highlight_gain: float = 1.0,
    highlight_top: float = 0.02,
    shot_noise: float = 0.0,
    noise_sigma: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """What a camera records of a sharp uint8 RGB scene that moved by `blur` (a kernel or a `ShakeField`).

    In order: the tone curve undone (`gamma`: linear light), highlights restored above white (the top
    `highlight_top` of luminance and at least 90 % grey, × `highlight_gain`), the blur integrated, the
    sensor's clip at white, shot noise (σ `shot_noise` levels at white, ∝ √light), the tone curve, then
    read noise (σ `noise_sigma` levels), rounded to uint8.
    """
    rng = rng or np.random.default_rng(0)
    x = img.astype(np.float32) / 255.0
    if gamma:
        x = np.power(x, gamma)
    if highlight_gain > 1:
        lum = x.mean(axis=2)
        bright = lum >= max(float(np.quantile(lum, 1 - highlight_top)), 0.9 ** (gamma or 1.0))
        x = x * np.where(bright, np.float32(highlight_gain), np.float32(1))[..., None]
    if isinstance(blur, ShakeField):
        out = blur.apply(x)
    else:
        flipped = np.ascontiguousarray(blur[::-1, ::-1], dtype=np.float32)
        out = cv2.filter2D(x, -1, flipped / flipped.sum(), borderType=cv2.BORDER_REFLECT)
    if gamma or highlight_gain > 1 or shot_noise > 0:
        out = np.clip(out, 0, 1)
    if shot_noise > 0:
        out = np.clip(out + rng.standard_normal(out.shape).astype(np.float32) * np.sqrt(out) * shot_noise / 255.0, 0, 1)
    if gamma:
        out = np.power(out, 1.0 / gamma)
    if noise_sigma > 0:
        out = out + rng.normal(0, noise_sigma / 255.0, size=out.shape).astype(np.float32)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


@dataclass
class SyntheticBlur:
    blurred: np.ndarray
    kernel: np.ndarray


def synthesize(
    img: np.ndarray,
    seed: int,
    kind: str = "motion",
    mode: str = "physical",
    max_len: float = 60.0,
    gamma: float | None = None,
    noise_sigma: float = 0.0,
) -> SyntheticBlur:
    """Blur a sharp uint8 RGB image with a random kernel drawn from `seed`; same seed → same result."""
    rng = np.random.default_rng(seed)
    kernel = random_kernel(rng, kind, max_len)
    return SyntheticBlur(apply_kernel(img, kernel, mode, gamma, noise_sigma, rng), kernel)


class BlurRecipe(BaseModel):
    """The degradations drawn afresh for every training crop (`degrade`), so no kernel is seen twice.

    `kinds` weighs the kernel families; "none" leaves the crop sharp (only noise/JPEG), so the network also
    learns to leave sharp photos alone, which most photos in a real archive are. Lengths and radii are in
    pixels of the crop. Noise is Gaussian (σ in 8-bit levels) after the blur; JPEG re-encodes the result
    the way a camera or a web upload does. `gamma_prob` blurs that share of crops in linear light, as a
    sensor integrates light before its tone curve (highlights then smear into bright streaks).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: dict[str, float] = Field(
        default_factory=lambda: {"motion": 0.35, "linear": 0.35, "defocus": 0.15, "gaussian": 0.05, "none": 0.1}
    )
    motion_max_len: float = Field(40.0, gt=0, le=60)
    linear_length: tuple[float, float] = (3.0, 25.0)
    defocus_radius: tuple[float, float] = (1.0, 5.0)
    gaussian_sigma: tuple[float, float] = (0.5, 2.5)
    noise_sigma: tuple[float, float] = (0.0, 2.0)
    jpeg_prob: float = Field(0.25, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (75, 95)
    gamma_prob: float = Field(0.2, ge=0, le=1)
    shake_length: tuple[float, float] = (5.0, 60.0)
    shake_roll_px: float = Field(8.0, ge=0, le=40)
    crf_gamma: tuple[float, float] = (2.2, 2.2)
    saturation_prob: float = Field(0.0, ge=0, le=1)
    saturation_gain: tuple[float, float] = (2.0, 8.0)
    saturation_top: float = Field(0.02, gt=0, lt=1)
    shot_noise: tuple[float, float] = (0.0, 0.0)

    @model_validator(mode="after")
    def _check(self) -> "BlurRecipe":
        unknown = set(self.kinds) - set(RECIPE_KINDS)
        if unknown:
            raise ValueError(f"kinds: unknown {sorted(unknown)}; choose from {list(RECIPE_KINDS)}")
        if not self.kinds or min(self.kinds.values()) < 0 or sum(self.kinds.values()) <= 0:
            raise ValueError("kinds: give each kind a non-negative weight, at least one positive")
        for name in (
            "linear_length",
            "defocus_radius",
            "gaussian_sigma",
            "noise_sigma",
            "jpeg_quality",
            "shake_length",
            "crf_gamma",
            "saturation_gain",
            "shot_noise",
        ):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}: expected 0 <= low <= high, got [{lo}, {hi}]")
        if self.jpeg_quality[1] > 100:
            raise ValueError("jpeg_quality: at most 100")
        if self.shake_length[1] > 80:
            raise ValueError("shake_length: at most 80 px")
        if self.crf_gamma[0] < 1:
            raise ValueError("crf_gamma: at least 1 (a camera's tone curve brightens linear light)")
        if self.saturation_gain[0] < 1:
            raise ValueError("saturation_gain: at least 1")
        return self

    @property
    def margin(self) -> int:
        """Pixels of context a kernel needs on each side of a crop: the largest kernel's half-size + 1."""
        sizes = [0.0]
        for kind, weight in self.kinds.items():
            if weight > 0:
                sizes.append(
                    {
                        "motion": self.motion_max_len + 4,
                        "linear": self.linear_length[1] + 3,
                        "defocus": 2 * self.defocus_radius[1] + 3,
                        "gaussian": 6 * self.gaussian_sigma[1] + 3,
                        "shake": 2 * (self.shake_length[1] + self.shake_roll_px) + 4,
                        "none": 0.0,
                    }[kind]
                )
        return int(np.ceil(max(sizes) / 2)) + 1

    def kernel(self, rng: np.random.Generator) -> np.ndarray | None:
        """One uniform kernel drawn from the recipe (None for "none" or a "shake" field: see `draw`)."""
        return self._kernel(self._kind(rng), rng)

    def _kind(self, rng: np.random.Generator) -> str:
        names = list(self.kinds)
        p = np.array([self.kinds[n] for n in names], dtype=np.float64)
        return names[int(rng.choice(len(names), p=p / p.sum()))]

    def _kernel(self, kind: str, rng: np.random.Generator) -> np.ndarray | None:
        if kind in ("none", "shake"):
            return None
        if kind == "motion":
            x = random_trajectory(rng, max_len=self.motion_max_len, expl=float(rng.choice(DEBLURGAN_EXPL)))
            return normalise_kernel(trajectory_psf(x, fraction=float(rng.choice(DEBLURGAN_FRACTIONS[1:]))))
        if kind == "linear":
            return normalise_kernel(linear_kernel(rng.uniform(*self.linear_length), rng.uniform(0, 180)))
        if kind == "defocus":
            return normalise_kernel(defocus_kernel(rng.uniform(*self.defocus_radius)))
        return normalise_kernel(gaussian_kernel(rng.uniform(*self.gaussian_sigma)))


def degrade(img: np.ndarray, rng: np.random.Generator, recipe: BlurRecipe) -> tuple[np.ndarray, np.ndarray | None]:
    """A freshly drawn blur, noise and JPEG for one sharp uint8 RGB image or window: (degraded, kernel).

    The kernel is None for a "none" draw; for a "shake" field it is the PSF at the image's centre. Borders
    are reflected, so a caller that wants exact pixels cuts `recipe.margin` off each side. Draws for the
    recipe's camera parts are made only when they are on, so a recipe without them gives, seed for seed,
    what it gave before they existed.
    """
    kind = recipe._kind(rng)
    blur = recipe._kernel(kind, rng)
    if kind == "shake":
        blur = shake_field(rng, img.shape[:2], float(rng.uniform(*recipe.shake_length)), recipe.shake_roll_px)
    gamma = recipe.crf_gamma[0] if rng.random() < recipe.gamma_prob else None
    if gamma and recipe.crf_gamma[1] > recipe.crf_gamma[0]:
        gamma = float(rng.uniform(*recipe.crf_gamma))
    noise = float(rng.uniform(*recipe.noise_sigma))
    gain = 1.0
    if recipe.saturation_prob > 0 and rng.random() < recipe.saturation_prob:
        gain = float(rng.uniform(*recipe.saturation_gain))
    shot = float(rng.uniform(*recipe.shot_noise)) if recipe.shot_noise[1] > 0 else 0.0
    out = expose(
        img,
        blur if blur is not None else np.ones((1, 1), np.float32),
        gamma=gamma,
        highlight_gain=gain,
        highlight_top=recipe.saturation_top,
        shot_noise=shot,
        noise_sigma=noise,
        rng=rng,
    )
    if rng.random() < recipe.jpeg_prob:
        quality = int(rng.integers(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    if isinstance(blur, ShakeField):
        h, w = img.shape[:2]
        blur = blur.kernel_at(w / 2, h / 2)
    return out, blur


def degrade_crop(
    img: np.ndarray, crop: int, rng: np.random.Generator, recipe: BlurRecipe
) -> tuple[np.ndarray, np.ndarray]:
    """A random crop×crop window of a sharp image and its freshly degraded twin: (blurred, sharp).

    The window is cut with `recipe.margin` pixels of real context on every side (reflected where the
    image is too small) and degraded with them, so the crop's blur is what the scene would really give.
    """
    m = recipe.margin
    big = crop + 2 * m
    h, w = img.shape[:2]
    if h < big or w < big:
        img = np.pad(
            img, ((0, max(0, big - h)), (0, max(0, big - w)), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge"
        )
        h, w = img.shape[:2]
    i, j = int(rng.integers(0, h - big + 1)), int(rng.integers(0, w - big + 1))
    window = np.ascontiguousarray(img[i : i + big, j : j + big])
    blurred, _ = degrade(window, rng, recipe)
    return blurred[m : m + crop, m : m + crop], window[m : m + crop, m : m + crop]


# The evaluation blur the README's and the model card's numbers use: linear motion of 9-21 px at a random
# angle, nothing else (no noise, no JPEG), so numbers compare across models and with published ones.
EVAL_LINEAR = {
    "kinds": {"linear": 1.0},
    "linear_length": (9.0, 21.0),
    "noise_sigma": (0.0, 0.0),
    "jpeg_prob": 0.0,
    "gamma_prob": 0.0,
}
