"""Dataset layouts on disk → lists of `Pair`s. Errors name the file and the reason.

- `gopro`: `GOPRO_Large/{train,test}/<scene>/{blur,blur_gamma,sharp}/<frame>.png`
- `realblur`: `RealBlur_J` / `RealBlur_R` with the official `RealBlur_{J,R}_{train,test}_list.txt`,
  lines of "gt_path blur_path[ ...]" relative to the dataset root
- `paired`: the article's `root/blur/<name>` + `root/sharp/<name>`, matched by file name (also
  `root/<split>/{blur,sharp}/` for several splits)
- `synthetic`: any folder of sharp images; blur is made at prepare time by `synth.py`, seeded per pair
- `sample`: the embedded default, scikit-image's bundled photos + synthetic blur, fixed split
Synthetic layouts can make several blurred variants of each sharp photo (different kernels).
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DATASETS = ("gopro", "realblur", "paired", "synthetic", "sample")
SAMPLE_VAL = ("coffee", "rocket")
# scikit-image's bundled photographs: the colour ones plus the natural grayscale ones (read as RGB),
# whose textures (brick, grass, gravel, coins, moon) teach edges that seven colour photos alone do not.
SAMPLE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "ihc", "motorcycle_left", "motorcycle_right",
    "retina", "rocket", "camera", "brick", "grass", "gravel", "moon", "coins",
)


class LayoutError(ValueError):
    """A dataset folder that does not match its layout; the message names the path and the reason."""


@dataclass(frozen=True)
class Pair:
    key: str
    blur: str | None  # None: synthesised from `sharp` at prepare time
    sharp: str
    split: str
    source: str
    synth: dict = field(default_factory=dict, compare=False, hash=False)  # kind, mode, seed, max_len, ...


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LayoutError(f"{folder}: missing folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise LayoutError(f"{folder}: no images (looked for {', '.join(IMAGE_EXTS)})")
    return files


def _root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise LayoutError(f"{path}: dataset root does not exist")
    if not path.is_dir():
        raise LayoutError(f"{path}: dataset root is not a folder")
    return path


def _match(blur_dir: Path, sharp_dir: Path, split: str, source: str, key_prefix: str = "") -> list[Pair]:
    blurs = {p.name: p for p in _images(blur_dir)}
    sharps = {p.name: p for p in _images(sharp_dir)}
    lonely_blur = sorted(set(blurs) - set(sharps))
    if lonely_blur:
        raise LayoutError(f"{blurs[lonely_blur[0]]}: blur image without a sharp partner in {sharp_dir} ({len(lonely_blur)} such)")
    lonely_sharp = sorted(set(sharps) - set(blurs))
    if lonely_sharp:
        raise LayoutError(f"{sharps[lonely_sharp[0]]}: sharp image without a blur partner in {blur_dir} ({len(lonely_sharp)} such)")
    return [Pair(f"{key_prefix}{Path(n).stem}", str(blurs[n]), str(sharps[n]), split, source) for n in sorted(blurs)]


def gopro(root: str, blur_kind: str = "blur") -> list[Pair]:
    if blur_kind not in ("blur", "blur_gamma"):
        raise LayoutError(f"GoPro blur kind must be 'blur' or 'blur_gamma', got {blur_kind!r}")
    base = _root(root)
    pairs: list[Pair] = []
    for split in ("train", "test"):
        split_dir = base / split
        if not split_dir.is_dir():
            continue
        scenes = sorted(p for p in split_dir.iterdir() if p.is_dir())
        if not scenes:
            raise LayoutError(f"{split_dir}: no scene folders")
        for scene in scenes:
            pairs += _match(scene / blur_kind, scene / "sharp", split, "gopro", f"{split}/{scene.name}/")
    if not pairs:
        raise LayoutError(f"{base}: not a GOPRO_Large folder (expected train/ and/or test/ with <scene>/{{{blur_kind},sharp}}/)")
    return pairs


def realblur(root: str, variant: str = "J") -> list[Pair]:
    if variant not in ("J", "R"):
        raise LayoutError(f"RealBlur variant must be 'J' or 'R', got {variant!r}")
    base = _root(root)
    pairs: list[Pair] = []
    for split in ("train", "test"):
        listing = base / f"RealBlur_{variant}_{split}_list.txt"
        if not listing.is_file():
            continue
        for n, line in enumerate(listing.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise LayoutError(f"{listing}:{n}: expected 'gt_path blur_path', got {line.strip()!r}")
            gt, blur = base / parts[0], base / parts[1]
            for p in (gt, blur):
                if not p.is_file():
                    raise LayoutError(f"{listing}:{n}: {p} does not exist")
            key = os.path.splitext(parts[1])[0]
            pairs.append(Pair(key, str(blur), str(gt), split, f"realblur_{variant}"))
    if not pairs:
        raise LayoutError(f"{base}: no RealBlur_{variant}_train_list.txt / RealBlur_{variant}_test_list.txt with pairs")
    return pairs


def paired(root: str, split: str = "train") -> list[Pair]:
    base = _root(root)
    if (base / "blur").exists() or (base / "sharp").exists():
        return _match(base / "blur", base / "sharp", split, "paired")
    splits = sorted(p.name for p in base.iterdir() if (p / "blur").is_dir())
    if not splits:
        raise LayoutError(f"{base}: expected blur/ and sharp/ folders (or <split>/blur and <split>/sharp)")
    return [pair for s in splits for pair in _match(base / s / "blur", base / s / "sharp", s, "paired", f"{s}/")]


def in_val(key: str, val_fraction: float) -> bool:
    """Deterministic hold-out by key hash: the same photo always lands in the same split."""
    return (zlib.crc32(key.encode()) % 10_000) < val_fraction * 10_000


def _synthetic_pairs(
    files: list[tuple[str, Path, str]], source: str, variants: int, synth: dict, val_variants: int = 1
) -> list[Pair]:
    pairs = []
    for stem, path, split in files:
        n = variants if split == "train" else val_variants
        for v in range(n):
            key = f"{stem}" if n == 1 else f"{stem}~{v}"
            pairs.append(Pair(key, None, str(path), split, source, dict(synth)))
    return pairs


def synthetic(root: str, val_fraction: float = 0.1, variants: int = 1, synth: dict | None = None) -> list[Pair]:
    files = _images(_root(root))
    tagged = [(p.stem, p, "val" if in_val(p.stem, val_fraction) else "train") for p in files]
    return _synthetic_pairs(tagged, "synthetic", variants, synth or {})


def sample(variants: int = 8, val_variants: int = 4, synth: dict | None = None) -> list[Pair]:
    """scikit-image's bundled photos (no download); `coffee` and `rocket` are held out for val.

    Each held-out photo gets `val_variants` different kernels: with one kernel each, two images would
    make the validation number mostly a measure of which two kernels were drawn.
    """
    import skimage

    data = Path(skimage.__file__).parent / "data"
    files = []
    for stem in SAMPLE_PHOTOS:
        found = [p for p in data.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_EXTS]
        if not found:
            raise LayoutError(f"{data}: scikit-image no longer ships {stem}; the sample dataset needs it")
        files.append((stem, found[0], "val" if stem in SAMPLE_VAL else "train"))
    return _synthetic_pairs(files, "sample", variants, synth or {}, val_variants)


def discover(dataset: str, root: str | None = None, **options) -> list[Pair]:
    """One entry point for the prepare job: `dataset` is one of DATASETS."""
    if dataset not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if dataset == "sample":
        return sample(**options)
    if root is None:
        raise LayoutError(f"--root is required for dataset {dataset!r}")
    return {"gopro": gopro, "realblur": realblur, "paired": paired, "synthetic": synthetic}[dataset](root, **options)
