"""Images as people have them, in and out of the model without losing what the model does not touch.

`decode` reads the header first (Pillow opens lazily), so a decompression bomb is refused before a single
pixel is decoded. Then: EXIF orientation applied, grayscale and alpha kept apart from the colour the
model sees, 16-bit PNG/TIFF kept at 16 bits (OpenCV decodes them; Pillow would drop to 8), CMYK converted
to sRGB through its ICC profile (a CMYK profile says nothing true about RGB pixels, so it is not kept) and
palette images to RGB. `encode` puts it back together: the same mode, the alpha channel untouched, ICC
profile and EXIF copied where the output format carries them, 16-bit files included.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageCms, ImageOps

from .images import IMAGE_SUFFIXES, ImageError

Image.MAX_IMAGE_PIXELS = None  # the pixel budget below is checked from the header instead

#: Pillow's format for each suffix in images.IMAGE_SUFFIXES ("jpg" → "JPEG"), and the suffix each is written with
FORMATS = {s[1:]: Image.registered_extensions()[s] for s in IMAGE_SUFFIXES}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
#: formats read as another: a camera JPEG with an embedded preview (Multi-Picture Format) is, to Pillow, an
#: "MPO" whose first frame is the photo itself, and it is written back as the JPEG it is
READ_AS = {"MPO": "JPEG"}
#: zlib level for PNG outputs: 1 writes with zlib's RLE strategy and the Paeth filter (see `_png`), ~8x faster
#: than Pillow's default level 6 for about the same bytes on photos; 2-9 use the standard strategy at that level.
PNG_COMPRESSION = 1


class BadImage(ImageError):
    """An input that cannot be deblurred; the caller adds the file's name (bulk: _errors.jsonl, Serve: a 4xx)."""


@dataclass
class Decoded:
    rgb: np.ndarray  # H×W×3, uint8 or uint16: what the model sees
    format: str  # PNG, JPEG, ...
    gray: bool = False  # the source had one colour channel
    alpha: np.ndarray | None = None  # untouched, re-attached on encode
    info: dict = field(default_factory=dict)  # icc_profile / exif bytes to copy


def _header(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise BadImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise BadImage(f"not an image (unrecognised content, {len(data)} bytes)") from None
    except Exception as e:
        raise BadImage(f"not an image ({type(e).__name__}: {str(e)[:120]})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(
            f"{w}×{h} = {w * h / 1e6:.0f} Mpx exceeds the pixel budget of {max_pixels / 1e6:.0f} Mpx "
            "(refused before decoding; raise --max-megapixels if it is real)"
        )
    if img.format not in EXTENSIONS and img.format not in READ_AS:
        raise BadImage(f"unsupported format {img.format}")
    return img


def _sixteen_bit(img: Image.Image, data: bytes) -> bool:
    """Whether the file stores 16 bits per sample, read from its header (Pillow reports 16-bit RGB PNGs as
    8-bit "RGB", so its mode cannot tell): PNG's IHDR bit depth, TIFF's BitsPerSample."""
    if img.format == "PNG":
        return len(data) > 24 and data[24] == 16
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, 8)
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8  # 12- and 16-bit TIFFs: OpenCV keeps them
    return False


def decode(data: bytes, name: str = "<bytes>", max_pixels: int = 100_000_000) -> Decoded:
    img = _header(data, name, max_pixels)
    info = {k: img.info[k] for k in ("icc_profile",) if img.info.get(k)}
    fmt = READ_AS.get(img.format, img.format)  # an MPO's first frame (Pillow opens at it) is the photo
    try:
        deep = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if _sixteen_bit(img, data) else None
        if deep is not None and deep.dtype == np.uint16:  # 16 bits per channel: OpenCV keeps them
            return _from_cv(deep, fmt, info)
        img = ImageOps.exif_transpose(img)  # upright, and the orientation tag reset to 1
        exif = img.getexif()
        if len(exif):
            info["exif"] = exif.tobytes()
        mode = img.mode
        if mode == "CMYK":
            img = _cmyk_to_srgb(img, info.pop("icc_profile", None))
        alpha = None
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA" if mode != "LA" else "LA")
            alpha = np.asarray(img)[..., -1].copy()
        gray = mode in ("L", "LA", "1", "I", "I;16", "F")
        rgb = np.asarray(img.convert("L").convert("RGB") if gray else img.convert("RGB"))
    except BadImage:
        raise
    except Exception as e:  # truncated data and friends surface only when pixels are read
        raise BadImage(f"cannot decode ({type(e).__name__}: {str(e)[:120]})") from None
    if rgb.size == 0:
        raise BadImage("image has no pixels")
    return Decoded(np.ascontiguousarray(rgb), fmt, gray, alpha, info)


def _cmyk_to_srgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """CMYK → RGB through the image's own profile when it has one (Pillow's naive conversion otherwise)."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to the plain conversion rather than failing the image
    return img.convert("RGB")


def _png(arr: np.ndarray, info: dict, level: int) -> bytes:
    """PNG through OpenCV. Level 1 uses zlib's RLE strategy with the Paeth filter on every row: on photos
    as small as Pillow's default level 6 and ~8x faster (720p: 35 ms vs 300 ms). Left to choose, libpng tries
    all five filters on each row; with RLE it keeps Paeth, so naming it writes as many bytes (+0.3 % on
    deblurred Köhler, Lai and CBSD68 photos) in three quarters of the time. RLE ignores the level, so 0 and
    2-9 use the standard strategy and libpng's own filter choice. OpenCV writes no ICC profile or EXIF, so
    their chunks (PNG spec 11.3.3.3, eXIf) are inserted right after IHDR. `arr` is OpenCV's layout: gray,
    BGR or BGRA, 8 or 16 bits."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    if level == 1:
        params += [
            cv2.IMWRITE_PNG_STRATEGY,
            cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER,
            cv2.IMWRITE_PNG_FILTER_PAETH,
        ]
    ok, buf = cv2.imencode(".png", arr, params)
    if not ok:
        raise BadImage(f"cannot encode a {arr.dtype} {arr.shape} PNG")
    chunks = b""
    if info.get("icc_profile"):
        chunks += _chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(info["icc_profile"]))
    if info.get("exif"):
        chunks += _chunk(b"eXIf", info["exif"].removeprefix(b"Exif\x00\x00"))
    end_of_ihdr = 8 + 4 + 4 + 13 + 4
    data = buf.tobytes()
    return data[:end_of_ihdr] + chunks + data[end_of_ihdr:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _tiff16(arr: np.ndarray, icc: bytes | None) -> bytes:
    buf = io.BytesIO()
    extratags = [(34675, 7, len(icc), icc, True)] if icc else []  # InterColorProfile
    photometric = "minisblack" if arr.ndim == 2 else "rgb"
    tifffile.imwrite(
        buf,
        arr,
        photometric=photometric,
        extrasamples=["unassalpha"] if arr.ndim == 3 and arr.shape[2] in (2, 4) else None,
        extratags=extratags,
        compression="zlib",
    )
    return buf.getvalue()


def _from_cv(arr: np.ndarray, fmt: str, info: dict) -> Decoded:
    if arr.ndim == 2:
        return Decoded(np.repeat(arr[..., None], 3, axis=2), fmt, True, None, info)
    alpha = arr[..., 3].copy() if arr.shape[2] == 4 else None
    return Decoded(np.ascontiguousarray(cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB)), fmt, False, alpha, info)


def output_format(requested: str, source: str) -> str:
    if requested == "same":
        return source
    if requested not in FORMATS:
        raise ValueError(f"unknown output format {requested!r}; choose same, png, jpg or webp")
    return FORMATS[requested]


def encode(
    rgb: np.ndarray, like: Decoded, fmt: str, quality: int = 95, png_compression: int = PNG_COMPRESSION
) -> bytes:
    """The deblurred colour + the source's gray/alpha/metadata → file bytes in `fmt`."""
    deep = rgb.dtype == np.uint16
    if like.alpha is not None and like.alpha.dtype != rgb.dtype:  # colour and alpha of different depths
        like = replace(like, alpha=like.alpha.astype(np.uint16) * 257 if deep else (like.alpha >> 8).astype(np.uint8))
    if fmt == "TIFF" and deep:
        out = rgb.mean(axis=2).round().astype(np.uint16) if like.gray else rgb
        if like.alpha is not None:
            out = np.dstack([out, like.alpha])
        return _tiff16(out, like.info.get("icc_profile"))
    if fmt == "PNG" and (deep or not (like.gray and like.alpha is not None)):  # 8-bit gray+alpha stays LA below
        if like.gray:
            out = rgb.mean(axis=2).round().astype(np.uint16) if deep else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        else:
            out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if like.alpha is not None:
            out = np.dstack([out, like.alpha]) if out.ndim == 3 else np.dstack([out, out, out, like.alpha])
        return _png(out, like.info, png_compression)
    if rgb.dtype == np.uint16:  # a 16-bit source asked for as JPEG/WebP: 8 bits is all they hold
        rgb = (rgb.astype(np.uint32) * 255 + 32767) // 65535
        rgb = rgb.astype(np.uint8)
    alpha = like.alpha if like.alpha is None or like.alpha.dtype == np.uint8 else (like.alpha >> 8).astype(np.uint8)
    if like.gray:
        img = Image.fromarray(np.asarray(Image.fromarray(rgb).convert("L")))
        mode = "LA"
    else:
        img = Image.fromarray(rgb)
        mode = "RGBA"
    if alpha is not None and fmt in ("PNG", "WEBP", "TIFF"):
        img.putalpha(Image.fromarray(alpha))
        img = img.convert(mode)
    options: dict = {k: v for k, v in like.info.items() if fmt != "BMP"}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if fmt == "PNG":
        options["compress_level"] = png_compression
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()
