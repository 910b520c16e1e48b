"""The one inference interface every consumer uses (evaluation, bulk job, Serve endpoint).

An `Engine` wraps a backend that maps float32 N×3×h×w batches in [-1, 1] (h, w multiples of the model's
stride) to the same. Around it, this class does what every caller needs and no backend should repeat:
padding to the stride, cropping back, tiling above a pixel budget, and uint8 image conversion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..images import to_image, to_model_input
from .tiling import run_padded, run_tiled

#: an engine in reduced precision vs the model in fp32 (TensorRT vs ONNX Runtime; torch bf16/fp16 vs torch
#: fp32): the mean |error| allowed, in [-1, 1] units. The max is reported, not bounded: a handful of
#: saturated pixels differ by more in fp16, which no one can see.
REDUCED_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-3, "bf16": 2e-2}


class EngineError(ValueError):
    """A model that cannot be loaded or run here; the message says which file and why."""


@dataclass
class EngineInfo:
    backend: str  # torch | onnxruntime | tensorrt
    device: str  # cpu | cuda:0 | the GPU's name
    precision: str  # fp32 | fp16 | bf16
    multiple: int  # height and width the backend accepts are multiples of this
    source: str  # the checkpoint or compiled file it came from
    model_hash: str = ""  # sha256 of the source checkpoint (first 16 hex)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def check_batch(batch: np.ndarray) -> np.ndarray:
    """The batch as an array, or a ValueError unless it is a non-empty N×3×H×W (what every engine takes)."""
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[1] != 3 or 0 in batch.shape:
        raise ValueError(f"expected a non-empty N×3×H×W batch, got shape {batch.shape}")
    return batch


class Engine:
    """Base class: subclasses set `info` and implement `_infer` on stride-aligned float32 batches."""

    info: EngineInfo
    #: the pixel budget of one backend call: an image above it is deblurred in tiles (same result to ~1e-3), and a
    #: batch of images under it goes in as many calls as keep each within it (Serve batches up to 8 same-size
    #: photos of up to ~4 Mpx: one call would hold 8× the activations a GPU was sized for)
    max_pixels: int = 2048 * 2048
    #: the largest (height, width) the backend accepts at all (a TensorRT profile's max); beyond either side: tiles
    max_hw: tuple[int, int] | None = None
    tile: int = 1024
    overlap: int = 64
    tile_batch: int = 2

    def _infer(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def configure_tiling(
        self,
        max_pixels: int | None = None,
        tile: int | None = None,
        overlap: int | None = None,
        tile_batch: int | None = None,
    ) -> "Engine":
        for name, value in (
            ("max_pixels", max_pixels),
            ("tile", tile),
            ("overlap", overlap),
            ("tile_batch", tile_batch),
        ):
            if value is not None:
                if int(value) < (0 if name == "overlap" else 1):
                    raise ValueError(f"{name} must be positive, got {value}")
                setattr(self, name, int(value))
        if self.overlap >= self.tile:
            raise ValueError(f"tile overlap {self.overlap} must be smaller than the tile {self.tile}")
        return self

    def deblur_batch(self, batch: np.ndarray) -> np.ndarray:
        """float32 N×3×H×W in [-1, 1], any H and W → the deblurred batch, same shape."""
        batch = check_batch(batch)
        n, _, h, w = batch.shape
        if not self.fits(h, w):
            return np.stack([self._tiled(img) for img in batch])
        batch = batch.astype(np.float32, copy=False)
        m = self.info.multiple
        per_call = max(1, self.max_pixels // ((-(-h // m) * m) * (-(-w // m) * m)))  # padded to the stride
        parts = [run_padded(self._infer, batch[k : k + per_call], self.info.multiple) for k in range(0, n, per_call)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def fits(self, h: int, w: int) -> bool:
        """Whether an h×w image can go to the backend whole: within the pixel budget and, once padded to the
        stride, within the backend's largest height and width on each side (a portrait frame can be under
        the budget and still taller than a landscape profile allows)."""
        if h * w > self.max_pixels:
            return False
        if self.max_hw is None:
            return True
        m = self.info.multiple
        return -(-h // m) * m <= self.max_hw[0] and -(-w // m) * m <= self.max_hw[1]

    def _tiled(self, image: np.ndarray) -> np.ndarray:
        return run_tiled(
            self._infer,
            image.astype(np.float32, copy=False),
            self.info.multiple,
            self.tile,
            self.overlap,
            self.tile_batch,
        )

    def deblur_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (or 16-bit) H×W×3 RGB → the same, full resolution (tiled when over the pixel budget)."""
        return self.deblur_images([image])[0]

    def deblur_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Several RGB images (uint8 or uint16, each kept at its depth); those of equal size run as one batch."""
        out: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for k, img in enumerate(images):
            if img.dtype not in (np.uint8, np.uint16) or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"expected uint8 or uint16 H×W×3 RGB images, got {img.dtype} {img.shape}")
            by_size.setdefault((*img.shape[:2], img.dtype), []).append(k)
        for idx in by_size.values():
            batch = np.stack([images[k] for k in idx])
            for k, res in zip(idx, to_image(self.deblur_batch(to_model_input(batch)), batch.dtype.type)):
                out[k] = res
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        i = self.info
        return f"{type(self).__name__}({i.backend}, {i.device}, {i.precision}, source={i.source})"


def cpu_threads() -> int:
    """Intra-op threads for a CPU engine: the CPUs Ray gave this worker/actor, else the machine's.

    Ray sets OMP_NUM_THREADS to the task's CPU count; oversubscribing a shared node slows every
    neighbour down, so an engine never takes more than that.
    """
    for var in ("DEBLUR_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
