"""Full-resolution inference around any backend: pad to the model's multiple, crop back, and above a
pixel budget cut the frame into overlapping tiles blended with feathered weights.

Backends only ever see batches whose height and width are multiples of the model's stride (`multiple`),
so ONNX graphs and TensorRT profiles need no padding logic of their own and every backend pads the same way
(reflection, like the models' own forward).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..images import pad_bottom_right

Infer = Callable[[np.ndarray], np.ndarray]  # float32 N×3×h×w (h, w multiples) → same shape


def pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad bottom/right to a multiple (edge-replicate when the image is too small to reflect)."""
    h, w = batch.shape[-2:]
    return pad_bottom_right(batch, (-h) % multiple, (-w) % multiple, channels_last=False)


def run_padded(infer: Infer, batch: np.ndarray, multiple: int) -> np.ndarray:
    h, w = batch.shape[-2:]
    return infer(np.ascontiguousarray(pad_to_multiple(batch, multiple), dtype=np.float32))[..., :h, :w]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering [0, length), neighbours sharing ≥ `overlap` pixels."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def feather(length: int, overlap: int) -> np.ndarray:
    """1-D blending weights: a linear ramp over the overlap at both ends, strictly positive."""
    if overlap <= 0:
        return np.ones(length, np.float32)
    ramp = np.minimum(np.arange(1, length + 1), np.arange(length, 0, -1)) / (overlap + 1)
    return np.clip(ramp, 1e-3, 1.0).astype(np.float32)


def iter_tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    th, tw = min(tile, h), min(tile, w)
    for i in tile_starts(h, th, overlap):
        for j in tile_starts(w, tw, overlap):
            yield i, j, th, tw


def run_tiled(
    infer: Infer, image: np.ndarray, multiple: int, tile: int, overlap: int, tile_batch: int = 4
) -> np.ndarray:
    """One float32 3×H×W image through `infer` in overlapping tiles; tiles are batched, memory bounded.

    Where tiles overlap, their outputs are averaged with weights that fall off linearly toward each
    tile's edge, so the seam is a smooth cross-fade rather than a step.
    """
    _, h, w = image.shape
    out = np.zeros((3, h, w), np.float32)
    weight = np.zeros((1, h, w), np.float32)
    tiles = list(iter_tiles(h, w, tile, overlap))
    for k in range(0, len(tiles), tile_batch):
        group = tiles[k : k + tile_batch]
        batch = np.stack([image[:, i : i + th, j : j + tw] for i, j, th, tw in group])
        result = run_padded(infer, batch, multiple)
        for (i, j, th, tw), res in zip(group, result):
            wgt = np.outer(feather(th, overlap if th < h else 0), feather(tw, overlap if tw < w else 0))[None]
            out[:, i : i + th, j : j + tw] += res * wgt
            weight[:, i : i + th, j : j + tw] += wgt
    return out / weight
