"""Dataset layouts on disk → lists of `Pair`s. Errors name the file and the reason.

- `gopro`: `GOPRO_Large/{train,test}/<scene>/{blur,blur_gamma,sharp}/<frame>.png`
- `realblur`: `RealBlur_J` / `RealBlur_R` with the official `RealBlur_{J,R}_{train,test}_list.txt`,
  lines of "gt_path blur_path[ ...]" relative to the dataset root
- `paired`: the usual `root/blur/<name>` + `root/sharp/<name>`, matched by file name (also
  `root/<split>/{blur,sharp}/` for several splits)
- `synthetic`: any folder of sharp images; blur made at prepare time by `synth.py`, seeded per pair, or
  (`online=True`) drawn afresh for every training crop
- `sample`: the embedded default: photos that scikit-image and matplotlib ship plus procedural dead-leaves
  images for training, blurred per crop; held-out photos with fixed linear motion blur for validation
  (`val`, picks checkpoints) and for the reported numbers (`test`, never seen by training or selection)
Prepare-time synthetic layouts can make several blurred variants of each sharp photo (different kernels).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import skimage

from .. import storage
from ..images import IMAGE_SUFFIXES, read_image
from . import deadleaves
from .synth import EVAL_LINEAR

DATASETS = ("gopro", "realblur", "paired", "synthetic", "sample")
# Photos that dependencies ship (no download): scikit-image's colour photos, its natural grayscale ones
# (read as RGB; brick, grass, gravel, coins and moon teach textures), two scanned text pages, and
# matplotlib's portrait of Grace Hopper. Split by photo, so no crop of a val/test photo is ever trained on.
SAMPLE_SPLITS = {
    "train": (
        "astronaut",
        "hubble_deep_field",
        "ihc",
        "motorcycle_left",
        "motorcycle_right",
        "retina",
        "camera",
        "brick",
        "grass",
        "gravel",
        "moon",
        "coins",
        "page",
        "text",
    ),
    "val": ("chelsea", "grace_hopper"),
    "test": ("coffee", "rocket"),
}


class LayoutError(ValueError):
    """A dataset folder that does not match its layout; the message names the path and the reason."""


@dataclass(frozen=True)
class Pair:
    key: str
    blur: str | None  # None: synthesised from `sharp` at prepare time
    sharp: str
    split: str
    source: str
    synth: dict = field(default_factory=dict, compare=False, hash=False)  # kind, mode, seed, max_len, ... or recipe
    online: bool = False  # sharp only: training draws a fresh blur for every crop (synth.BlurRecipe)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LayoutError(f"{folder}: missing folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise LayoutError(f"{folder}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
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
        raise LayoutError(
            f"{blurs[lonely_blur[0]]}: blur image without a sharp partner in {sharp_dir} ({len(lonely_blur)} such)"
        )
    lonely_sharp = sorted(set(sharps) - set(blurs))
    if lonely_sharp:
        raise LayoutError(
            f"{sharps[lonely_sharp[0]]}: sharp image without a blur partner in {blur_dir} ({len(lonely_sharp)} such)"
        )
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
        raise LayoutError(
            f"{base}: not a GOPRO_Large folder (expected train/ and/or test/ with <scene>/{{{blur_kind},sharp}}/)"
        )
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


def synthetic(
    root: str,
    val_fraction: float = 0.1,
    variants: int = 1,
    synth: dict | None = None,
    online: bool = False,
    eval_variants: int = 4,
) -> list[Pair]:
    """A folder of sharp photos. `online`: training photos are kept sharp and blurred per crop at training
    time; held-out photos get `eval_variants` fixed blurs (`synth`, default linear motion of 9-21 px)."""
    files = _images(_root(root))
    tagged = [(p.stem, p, "val" if in_val(p.stem, val_fraction) else "train") for p in files]
    if online:
        return _online_pairs(tagged, "synthetic", synth or {"seed": 0, "recipe": EVAL_LINEAR}, eval_variants)
    return _synthetic_pairs(tagged, "synthetic", variants, synth or {})


def _online_pairs(files: list[tuple[str, Path, str]], source: str, eval_synth: dict, eval_variants: int) -> list[Pair]:
    train = [Pair(stem, None, str(path), split, source, online=True) for stem, path, split in files if split == "train"]
    held_out = [f for f in files if f[2] != "train"]
    return train + _synthetic_pairs(held_out, source, 1, eval_synth, eval_variants)


def sample_photo(stem: str) -> Path:
    """Where a dependency keeps one of the sample photos (or this package a re-saved copy: data/photos/README.md);
    a LayoutError if it no longer ships it."""
    folders = [
        Path(__file__).parent / "photos",
        Path(skimage.__file__).parent / "data",
        Path(matplotlib.get_data_path()) / "sample_data",
    ]
    for folder in folders:
        found = sorted(p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if found:
            return found[0]
    raise LayoutError(
        f"{stem}: neither scikit-image nor matplotlib ships this photo any more; the sample dataset needs it"
    )


def sample(
    dead_leaves: int = 48,
    dead_leaves_size: int = 384,
    eval_variants: int = 4,
    eval_blur: dict | None = None,
    online: bool = True,
    variants: int = 8,
    synth: dict | None = None,
) -> list[Pair]:
    """The embedded default (no download): see SAMPLE_SPLITS and the module docstring.

    Training: the train photos and `dead_leaves` procedural images (made once into the cache, colours
    drawn from the train photos), sharp, blurred per crop by the training config's `data.blur`; with
    `online=False`, `variants` prepare-time blurs per photo instead (`synth`). Validation and test: each
    photo with `eval_variants` fixed blurs drawn from `eval_blur` (default: linear motion of 9-21 px at a
    random angle, the blur the README's numbers are measured on); several kernels per photo, so the number
    measures the model rather than which few kernels were drawn.
    """

    files = [(stem, sample_photo(stem), split) for split, stems in SAMPLE_SPLITS.items() for stem in stems]
    train = [f for f in files if f[2] == "train"]
    if dead_leaves:
        palette = deadleaves.palette_from([read_image(str(path)) for _, path, _ in train])
        folder = os.path.join(storage.cache_dir(), "deadleaves")
        paths = deadleaves.ensure_images(dead_leaves, dead_leaves_size, 0, palette, folder)
        train += [(f"deadleaves-{k:03d}", Path(path), "train") for k, path in enumerate(paths)]
    eval_synth = {"seed": 0, "recipe": eval_blur or EVAL_LINEAR}
    held_out = [f for f in files if f[2] != "train"]
    if online:
        return _online_pairs(train + held_out, "sample", eval_synth, eval_variants)
    return _synthetic_pairs(train, "sample", variants, synth or {}) + _synthetic_pairs(
        held_out, "sample", 1, eval_synth, eval_variants
    )


def sample_test_pairs(eval_variants: int = 4) -> list[Pair]:
    """The sample's held-out photos (coffee, rocket), each blurred `eval_variants` ways as the reports measure:
    what the shipped model's tests and the quality benchmark score, always present (no ../shared needed)."""
    return [p for p in sample(dead_leaves=0, eval_variants=eval_variants) if p.split == "test"]


def discover(dataset: str, root: str | None = None, **options) -> list[Pair]:
    """One entry point for the prepare job: `dataset` is one of DATASETS."""
    if dataset not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if dataset == "sample":
        return sample(**options)
    if root is None:
        raise LayoutError(f"--root is required for dataset {dataset!r}")
    return {"gopro": gopro, "realblur": realblur, "paired": paired, "synthetic": synthetic}[dataset](root, **options)
