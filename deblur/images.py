"""Image decode/encode and the one normalisation used everywhere (training, evaluation, export, serving).

Images travel as uint8 RGB arrays H×W×3 in numpy, and as float32 C×H×W tensors in [-1, 1] in torch.
Training batches stay uint8 (C×H×W) until they reach the device the model runs on (`to_model_range`): a
quarter of float32's bytes through Ray's object store and over PCIe.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from . import storage


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded bytes (PNG/JPEG/WebP/TIFF/BMP) → uint8 RGB H×W×3; grayscale is expanded, alpha dropped.

    OpenCV applies the EXIF orientation of JPEGs while decoding, so photos come out upright.
    """
    if not data:
        raise ImageError(f"{name}: empty file")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"{name}: not a decodable image ({len(data)} bytes)")
    if img.size == 0:
        raise ImageError(f"{name}: image has no pixels")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(uri: str) -> np.ndarray:
    """Read and decode an image from a local path or a storage URI."""
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as e:
        raise ImageError(str(e)) from None
    return decode_image(data, str(uri))


def encode_png(img: np.ndarray) -> bytes:
    """uint8 RGB → lossless PNG bytes (compression 3: a good size/speed trade for shards)."""
    check_uint8_rgb(img)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ImageError("PNG encoding failed")
    return buf.tobytes()


def check_uint8_rgb(img: np.ndarray, name: str = "image") -> None:
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected an H×W×3 RGB array, got shape {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {img.dtype}")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 RGB H×W×3 → float32 3×H×W in [-1, 1] (x / 127.5 − 1, as the article normalises)."""
    check_uint8_rgb(img)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def to_chw_uint8(img: np.ndarray) -> np.ndarray:
    """uint8 RGB H×W×3 → uint8 3×H×W: a training crop as the stream carries it."""
    check_uint8_rgb(img)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N×)3×H×W → float32 in [-1, 1] on x's device: `to_tensor`'s normalisation for whole batches."""
    if x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch, got {x.dtype}")
    return x.float().div_(127.5).sub_(1.0)


def to_numpy_chw(img: np.ndarray) -> np.ndarray:
    """The same normalisation, numpy-side (Ray Data batches, ONNX Runtime inputs)."""
    check_uint8_rgb(img)
    return img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """float [-1, 1] 3×H×W (or N×3×H×W) → uint8 H×W×3 (or N×H×W×3), rounded to nearest."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected 3×H×W or N×3×H×W in [-1, 1], got shape {x.shape}")
    y = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(y, -3, -1)
