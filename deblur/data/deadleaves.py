"""Procedural training images: dead leaves, with natural-image colours, textures and text. Seeded.

A dead-leaves image is a stack of occluding shapes whose sizes follow a power law p(r) ∝ r^-α with α ≈ 3:
the only law that makes the image look the same at every scale, as natural images do, and the reason
such images train restoration networks nearly as well as photos (Achddou, Gousseau and Ladjal, "Synthetic
images as a regularity prior for image restoration neural networks", SSVM 2021). Deblurring learns from
edges of every orientation, contrast and scale, which this gives in unlimited supply without a download.

What makes them closer to photos than flat disks:
- colours drawn from real photos' pixels (`palette_from`), so the colour statistics are natural;
- each shape carries, with some probability, a texture: 1/f^β noise or an oriented grating, multiplying
  its colour (fine detail is what a deblurring network must not smear);
- a few shapes are rectangles (straight edges, corners), and some images get lines of text in the fonts
  matplotlib ships (DejaVu), since text is what people most want to read in a blurred photo;
- everything is drawn at 2× and area-downsampled, so edges are anti-aliased like a camera's.
"""

from __future__ import annotations

import glob
import os
import zlib

import cv2
import numpy as np

ALPHA = 3.0
VERSION = 1  # bumped when the same seed starts giving a different image (cached files are then remade)
_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,:-/()&%€$#@"


def palette_from(images: list[np.ndarray], per_image: int = 4096, seed: int = 0) -> np.ndarray:
    """Random pixels of real photos: an N×3 uint8 palette with their colour statistics."""
    rng = np.random.default_rng(seed)
    picks = []
    for img in images:
        flat = img.reshape(-1, 3)
        picks.append(flat[rng.integers(0, len(flat), size=min(per_image, len(flat)))])
    if not picks:
        raise ValueError("palette_from needs at least one image")
    return np.concatenate(picks)


def power_law_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float, alpha: float = ALPHA) -> np.ndarray:
    """n radii with density ∝ r^-alpha on [r_min, r_max] (inverse-CDF sampling)."""
    u = rng.uniform(size=n)
    a = 1.0 - alpha
    return (r_min**a + u * (r_max**a - r_min**a)) ** (1.0 / a)


def _noise_field(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum, normalised to zero mean and unit peak."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** (beta / 2)
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field / (np.abs(field).max() + 1e-12)).astype(np.float32)


def _grating(rng: np.random.Generator, size: int) -> np.ndarray:
    """An oriented sinusoid (period 3–40 px at the final scale, drawn at 2×), unit amplitude."""
    period = rng.uniform(6, 80)
    theta = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin((x * np.cos(theta) + y * np.sin(theta)) * 2 * np.pi / period + phase)
    return np.sign(wave) * np.abs(wave) ** rng.uniform(0.3, 1.0) if rng.random() < 0.5 else wave


def _textures(rng: np.random.Generator, size: int, count: int = 6) -> np.ndarray:
    fields = [_noise_field(rng, size, rng.uniform(1.0, 3.0)) for _ in range(count // 2)]
    fields += [_grating(rng, size).astype(np.float32) for _ in range(count - count // 2)]
    return np.stack(fields)


def _fonts() -> list[str]:
    import matplotlib

    return sorted(
        glob.glob(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVu*.ttf"))
    )


def _draw_text(img: np.ndarray, rng: np.random.Generator, palette: np.ndarray, lines: int) -> np.ndarray:
    """Lines of random characters in DejaVu fonts, any size and angle, drawn over the image."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = _fonts()
    if not fonts:
        return img
    h, w = img.shape[:2]
    canvas = Image.fromarray(img)
    for _ in range(lines):
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.uniform(10, 90)))
        text = "".join(rng.choice(list(_CHARS), size=int(rng.integers(4, 24))))
        layer = Image.new("L", (w, h), 0)
        ImageDraw.Draw(layer).text((rng.uniform(-0.2, 0.9) * w, rng.uniform(-0.1, 0.9) * h), text, font=font, fill=255)
        if rng.random() < 0.5:
            layer = layer.rotate(rng.uniform(-60, 60), resample=Image.BILINEAR, center=(w / 2, h / 2))
        colour = Image.new("RGB", (w, h), tuple(int(c) for c in palette[rng.integers(len(palette))]))
        canvas = Image.composite(colour, canvas, layer)
    return np.asarray(canvas)


def dead_leaves(
    size: int,
    seed: int,
    palette: np.ndarray | None = None,
    r_min: float = 1.0,
    r_max: float | None = None,
    alpha: float = ALPHA,
    texture_prob: float = 0.5,
    rect_prob: float = 0.15,
    text_prob: float = 0.3,
    supersample: int = 2,
) -> np.ndarray:
    """A size×size uint8 RGB dead-leaves image; the same seed gives the same image.

    Top-down construction, which is exact: leaves are drawn in order, each one only where no earlier
    leaf lies (it falls underneath them), until no pixel is bare. Radii are in output pixels.
    """
    rng = np.random.default_rng(seed)
    if palette is None:
        palette = rng.integers(0, 256, size=(4096, 3), dtype=np.uint8)
    s = size * supersample
    r_max = r_max or size / 2
    labels = np.full((s, s), -1, dtype=np.int32)
    chunk = np.empty_like(labels)
    count = 0
    while count == 0 or (labels < 0).any():
        r = power_law_radii(rng, 4096, r_min * supersample, r_max * supersample, alpha)
        centres = rng.uniform(-r_max * supersample * 0.5, s + r_max * supersample * 0.5, size=(4096, 2))
        rects = rng.random(4096) < rect_prob
        angles = rng.uniform(0, 180, 4096)
        aspect = rng.uniform(0.3, 1.0, 4096)
        chunk.fill(-1)
        for k in reversed(range(4096)):  # within a chunk, drawing the later leaves first puts earlier ones on top
            cx, cy = int(centres[k, 0]), int(centres[k, 1])
            if rects[k]:
                box = cv2.boxPoints(((cx, cy), (2 * r[k], 2 * r[k] * aspect[k]), angles[k])).astype(np.int32)
                cv2.fillConvexPoly(chunk, box, count + k)
            else:
                cv2.circle(chunk, (cx, cy), max(1, int(round(r[k]))), count + k, thickness=-1)
        bare = labels < 0
        labels[bare] = chunk[bare]  # and the whole chunk lies under everything drawn before it
        count += 4096
        if count > 400_000:  # a canvas this stubborn only has a few bare pixels left: fill them
            labels[labels < 0] = count - 1
    n = count
    colours = palette[rng.integers(0, len(palette), size=n)].astype(np.float32)
    textures = _textures(rng, s)
    which = rng.integers(0, len(textures), size=n)
    amplitude = np.where(rng.random(n) < texture_prob, rng.uniform(0.1, 0.6, size=n), 0.0).astype(np.float32)
    rows, cols = np.indices((s, s))
    modulation = 1.0 + amplitude[labels] * textures[which[labels], rows, cols]
    img = colours[labels] * modulation[..., None]
    img = cv2.resize(np.clip(img, 0, 255), (size, size), interpolation=cv2.INTER_AREA)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if rng.random() < text_prob:
        img = _draw_text(img, rng, palette, int(rng.integers(1, 6)))
    return img


def ensure_images(count: int, size: int, seed: int, palette: np.ndarray, folder: str) -> list[str]:
    """`count` dead-leaves PNGs in `folder` (made once, then reused): their paths, in seed order.

    The file name carries everything that determines the image, so a changed recipe makes new files.
    """
    os.makedirs(folder, exist_ok=True)
    tag = f"{VERSION}-{size}-{zlib.crc32(np.ascontiguousarray(palette).tobytes()):08x}"
    paths = []
    for k in range(count):
        path = os.path.join(folder, f"deadleaves-{tag}-{seed + k:06d}.png")
        if not os.path.isfile(path):
            tmp = f"{path}.tmp-{os.getpid()}.png"
            cv2.imwrite(tmp, dead_leaves(size, seed + k, palette)[..., ::-1])
            os.replace(tmp, path)
        paths.append(path)
    return paths
