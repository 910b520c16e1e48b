"""Image decode/encode and the one normalisation used everywhere (training, evaluation, export, serving).

Images travel as uint8 RGB arrays H×W×3 in numpy, and as float32 C×H×W tensors in [-1, 1] in torch.
Training batches stay uint8 (C×H×W) until they reach the device the model runs on (`to_model_range`): a
quarter of float32's bytes through Ray's object store and over PCIe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import storage

if TYPE_CHECKING:  # torch is imported where tensors are made: the ONNX engines' processes never load it
    import torch

#: the image files every stage reads (datasets, archives, report pictures, Serve uploads)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
#: the videos the archive job and `deblur video` read (here, beside the images, so naming them imports no codec)
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
#: tar archives, as the archive job recognises them (it reads plain .tar; the compressed ones it explains)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


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


#: what each integer depth's full scale maps to: x / half − 1 puts 0 at −1 and the maximum at +1
_HALF_SCALE = {np.dtype(np.uint8): 127.5, np.dtype(np.uint16): 32767.5}


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 or uint16 RGB, H×W×3 or N×H×W×3 → float32 (N×)3×H×W in [-1, 1] (x / 127.5 − 1 for 8 bits,
    the tanh range the generators end in; x / 32767.5 − 1 for 16-bit files, so they keep their depth through the model)."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[-1] != 3 or 0 in images.shape:
        raise ValueError(f"expected non-empty H×W×3 or N×H×W×3 RGB, got shape {images.shape}")
    half = _HALF_SCALE.get(images.dtype)
    if half is None:
        raise ValueError(f"expected uint8 or uint16 pixels, got {images.dtype}")
    chw = np.moveaxis(images, -1, -3).astype(np.float32, order="C")
    chw /= np.float32(half)
    chw -= np.float32(1.0)
    return chw


def to_image(x: torch.Tensor | np.ndarray, dtype: type = np.uint8) -> np.ndarray:
    """float [-1, 1] (N×)3×H×W → (N×)H×W×3 uint8 (or uint16), rounded to nearest: `to_model_input` undone."""
    if not isinstance(x, np.ndarray):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected 3×H×W or N×3×H×W in [-1, 1], got shape {x.shape}")
    half = _HALF_SCALE[np.dtype(dtype)]
    y = np.clip(np.rint((x + 1.0) * half), 0, 2 * half).astype(dtype)
    return np.moveaxis(y, -3, -1)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 RGB H×W×3 (or a batch) → float32 torch tensor in [-1, 1]: `to_model_input` as a tensor."""
    import torch

    return torch.from_numpy(to_model_input(img))


def to_chw_uint8(img: np.ndarray) -> np.ndarray:
    """uint8 RGB H×W×3 → uint8 3×H×W: a training crop as the stream carries it."""
    check_uint8_rgb(img)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N×)3×H×W → float32 in [-1, 1] on x's device: the same normalisation for batches that crossed
    to the device as uint8 (training)."""
    import torch

    if x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 batch, got {x.dtype}")
    return x.float().div_(127.5).sub_(1.0)


def pad_bottom_right(x: np.ndarray, ph: int, pw: int, channels_last: bool) -> np.ndarray:
    """Pad an image or batch by `ph` rows and `pw` columns at the bottom/right: by reflection, as the models'
    own `pad_to_multiple` does (no dark border to learn), edge-replicated when the image is too small to reflect."""
    if not ph and not pw:
        return x
    hw = (-3, -2) if channels_last else (-2, -1)
    h, w = x.shape[hw[0]], x.shape[hw[1]]
    widths = [(0, 0)] * x.ndim
    widths[hw[0]], widths[hw[1]] = (0, ph), (0, pw)
    return np.pad(x, widths, mode="reflect" if ph < h and pw < w else "edge")


def cover(img: np.ndarray, h: int, w: int, view: int = 0) -> np.ndarray:
    """`img` scaled to cover h×w, zoomed in by a third per `view`, then an h×w window (centre, then the corners):
    photos of a given size made from any photo, each view a different picture (test sets, benchmarks)."""
    scale = max(h / img.shape[0], w / img.shape[1]) * (1 + view / 3)
    size = (max(w, round(img.shape[1] * scale)), max(h, round(img.shape[0] * scale)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    fy, fx = [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0)][view % 4]
    i, j = int((img.shape[0] - h) * fy), int((img.shape[1] - w) * fx)
    return np.ascontiguousarray(img[i : i + h, j : j + w])
