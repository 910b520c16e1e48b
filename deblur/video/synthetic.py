"""Test clips whose sharp truth is known: a virtual camera moving over a still photo.

The camera follows a smooth drift plus hand shake (a few sinusoids, 2–8 Hz) and a little roll. Each frame
is the crop window at the middle of its exposure (the sharp truth) and, blurred, the mean of the windows
along the path while the shutter is open, so every frame carries the blur of its own motion and the blur
changes from frame to frame as it does in handheld footage.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np


@dataclass(frozen=True)
class CameraPath:
    """Camera centre (x, y) in photo pixels and roll in degrees as functions of time in seconds."""

    centre: tuple[float, float]
    drift: tuple[float, float, float, float]  # amplitude x, y (px) and phases of a slow sway (period = the clip)
    shake: tuple[tuple[float, float, float, float], ...]  # (amplitude px, frequency Hz, phase x, phase y)
    roll: tuple[float, float, float]  # amplitude (degrees), frequency (Hz), phase
    period: float

    def at(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        w = 2 * np.pi * t / self.period
        x = self.centre[0] + self.drift[0] * np.sin(w + self.drift[2])
        y = self.centre[1] + self.drift[1] * np.sin(w + self.drift[3])
        for a, f, px, py in self.shake:
            x = x + a * np.sin(2 * np.pi * f * t + px)
            y = y + a * np.sin(2 * np.pi * f * t + py)
        angle = self.roll[0] * np.sin(2 * np.pi * self.roll[1] * t + self.roll[2])
        return x, y, angle


def random_path(
    rng: np.random.Generator,
    photo_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    seconds: float,
    shake_px: float = 6.0,
) -> CameraPath:
    """A handheld-looking path that keeps the whole window inside the photo."""
    (H, W), (h, w) = photo_hw, frame_hw
    shakes = tuple(
        (
            float(rng.uniform(0.5, 1.0) * shake_px),
            float(rng.uniform(2.0, 8.0)),
            float(rng.uniform(0, 2 * np.pi)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for _ in range(3)
    )
    roll = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.5, 2.0)), float(rng.uniform(0, 2 * np.pi)))
    diag = np.hypot(h, w) / 2 * np.sin(np.radians(roll[0])) + 2  # how far a corner moves under the roll
    room = np.array([(W - w) / 2, (H - h) / 2]) - sum(s[0] for s in shakes) - diag
    if (room <= 0).any():
        raise ValueError(f"a {W}×{H} photo is too small for {w}×{h} frames with {shake_px} px of shake")
    drift = (
        float(room[0] * rng.uniform(0.5, 0.9)),
        float(room[1] * rng.uniform(0.5, 0.9)),
        float(rng.uniform(0, 2 * np.pi)),
        float(rng.uniform(0, 2 * np.pi)),
    )
    return CameraPath((W / 2, H / 2), drift, shakes, roll, period=seconds)


def _window(photo: np.ndarray, x: float, y: float, angle: float, hw: tuple[int, int]) -> np.ndarray:
    """The h×w view centred on (x, y), rotated by `angle` degrees, as float32."""
    h, w = hw
    m = cv2.getRotationMatrix2D((float(x), float(y)), float(angle), 1.0)
    m[:, 2] += (w / 2 - x, h / 2 - y)
    return cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def render_clip(
    photo: np.ndarray,
    path: CameraPath,
    frame_hw: tuple[int, int],
    frames: int,
    fps: float = 24.0,
    exposure: float = 0.5,
    samples_per_px: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(blurred, sharp) uint8 clips, frames×h×w×3; `exposure` is the shutter's fraction of the frame time."""
    src = photo.astype(np.float32)
    blurred, sharp = [], []
    for i in range(frames):
        t = i / fps
        sharp.append(_window(src, *(float(v) for v in path.at(t)), frame_hw))
        # sample the exposure densely enough that consecutive windows are under a pixel apart
        span = np.linspace(t - exposure / fps / 2, t + exposure / fps / 2, 64)
        x, y, a = path.at(span)
        travel = np.hypot(np.diff(x), np.diff(y)).sum() + np.radians(np.ptp(a)) * np.hypot(*frame_hw) / 2
        n = int(np.clip(np.ceil(travel * samples_per_px), 2, 96))
        x, y, a = path.at(np.linspace(span[0], span[-1], n))
        acc = np.zeros((*frame_hw, 3), np.float32)
        for xi, yi, ai in zip(x, y, a):
            acc += _window(src, xi, yi, ai, frame_hw)
        blurred.append(acc / n)

    def as_u8(frames_: list[np.ndarray]) -> np.ndarray:
        return np.clip(np.rint(np.stack(frames_)), 0, 255).astype(np.uint8)

    return as_u8(blurred), as_u8(sharp)


def write_video(
    path: str,
    frames,
    fps: float = 24.0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    crf: int = 12,
    audio_seconds: float = 0.0,
    pts: list[int] | None = None,
    time_base=None,
    rotation: int = 0,
    audio_rate: int = 48000,
) -> None:
    """Frames (uint8 RGB, an array or any iterable: long clips need not fit in memory) to a video file, for
    test clips: any codec and pixel format FFmpeg has, an optional 440 Hz tone as the audio track, explicit
    pts for variable frame rates, a display rotation."""
    frames = iter(frames)
    first = next(frames)
    with av.open(path, "w") as c:
        vs = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        vs.height, vs.width = first.shape[:2]
        vs.pix_fmt = pix_fmt
        if time_base is not None:
            vs.time_base = vs.codec_context.time_base = Fraction(time_base)
        if codec in ("libx264", "libx265"):
            vs.options = {"crf": str(crf), "preset": "fast"}
        if rotation:
            vs.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=audio_rate, layout="mono") if audio_seconds else None
        for i, rgb in enumerate(itertools.chain([first], frames)):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
            if pts is not None:
                f.pts = pts[i]
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
        if a is not None:
            for k in range(0, int(audio_rate * audio_seconds), 1024):
                t = np.arange(k, k + 1024) / audio_rate
                af = av.AudioFrame.from_ndarray(
                    (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], format="fltp", layout="mono"
                )
                af.sample_rate = audio_rate
                c.mux(a.encode(af))
            c.mux(a.encode(None))
