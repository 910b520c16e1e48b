"""Ray Data over the shards: streaming, aligned random crops for training, full images for evaluation.

Rows are decoded and normalised by `deblur.images` (the one normalisation), so training, evaluation,
export and serving see identical tensors. By default nothing here materialises a dataset: `read_parquet`
streams shards (local or S3), `map_batches` decodes and augments block by block, and Ray Train's
`get_dataset_shard(...).iter_torch_batches` pulls from it on each worker. A small split can instead be
decoded once and cached in the object store (`train_dataset(cache=True)`).
"""

from __future__ import annotations

import math
import os
import queue
import threading
import zlib
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np
import ray
from ray.data.datasource import FileShuffleConfig

from .. import storage
from ..images import decode_image, pad_bottom_right, to_chw_uint8, to_model_input
from ..progress import on_terminal
from . import synth
from .shards import read_manifest, split_uris

COLUMNS = ["key", "blur", "sharp"]


# `DataContext` is one object per process: two reads swapping its datasource switch at once must not interleave
_DATASOURCE_SWITCH = threading.Lock()


def read_split(uri: str, split: str, shuffle_seed: int | None | bool = False) -> ray.data.Dataset:
    """The shards of one split, read lazily with pyarrow, one read task per shard.

    `shuffle_seed` other than False shuffles the shard order anew each epoch (None: unseeded). That is
    Ray Data's streaming-friendly shuffle; a block-level shuffle would hold the whole split at once.

    Read through Ray Data's first Parquet datasource, not the default of Ray 2.60 (`use_datasource_v2`),
    measured on 272 pairs in 9 shards: the new one lists the files again at every epoch through a fresh pool
    of footer-reading actors (~3 s an epoch) and packs small shards into one read task, which leaves the
    cores idle while it runs; with the batch-sized blocks the pipeline then cut, 0.46x the pairs/s of a plain
    decode loop, against 0.86x now (README, ingest.py). The datasource is chosen when `read_parquet` is
    called, so the switch is set just around that call (Ray releases without the switch have only the first).
    Its sampling of the footers draws a progress bar of its own, kept to terminals the same way.
    """
    uris = split_uris(uri, split)
    fs, _ = storage.pyarrow_filesystem(uris[0])
    paths = [storage.pyarrow_filesystem(u)[1] for u in uris]
    shuffle = None if shuffle_seed is False else FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True)
    ctx = ray.data.DataContext.get_current()
    with _DATASOURCE_SWITCH:
        v2, bars = getattr(ctx, "use_datasource_v2", None), ctx.enable_progress_bars
        if v2 is not None:
            ctx.use_datasource_v2 = False
        ctx.enable_progress_bars = bars and on_terminal()  # its footer-sampling bar: frames, off a terminal
        try:
            ds = ray.data.read_parquet(paths, filesystem=fs, shuffle=shuffle, override_num_blocks=len(paths))
        finally:
            ctx.enable_progress_bars = bars
            if v2 is not None:
                ctx.use_datasource_v2 = v2
    ds.context.enable_progress_bars = bars  # the copy the dataset took: its execution's progress as configured
    return ds.select_columns(COLUMNS)


def _cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1


def _split_size(uri: str, split: str) -> tuple[int, int]:
    """(shards, rows) of a split, as its manifest lists them."""
    entries = [e for e in read_manifest(uri)["shards"] if e["split"] == split]
    return len(entries), sum(e["rows"] for e in entries)


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """An image smaller than the crop, padded up to it the way inference pads (`images.pad_bottom_right`)."""
    return pad_bottom_right(img, max(0, size - img.shape[0]), max(0, size - img.shape[1]), channels_last=True)


def augment_pair(blur: np.ndarray, sharp: np.ndarray, crop: int, rng: np.random.Generator, flips: bool = True):
    """The same random window, flips and 90° rotation for both images of a pair."""
    blur, sharp = _pad_to(blur, crop), _pad_to(sharp, crop)
    h, w = sharp.shape[:2]
    i, j = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    blur, sharp = blur[i : i + crop, j : j + crop], sharp[i : i + crop, j : j + crop]
    if flips:
        if rng.random() < 0.5:
            blur, sharp = blur[:, ::-1], sharp[:, ::-1]
        if rng.random() < 0.5:
            blur, sharp = blur[::-1], sharp[::-1]
        k = int(rng.integers(0, 4))
        blur, sharp = np.rot90(blur, k), np.rot90(sharp, k)
    return np.ascontiguousarray(blur), np.ascontiguousarray(sharp)


# What a sharp-only row (its blur drawn per crop) carries as "blur" once decoded: Ray Data's tensor columns
# take arrays of any shape but not None, so an empty image stands for "no blurred image".
NO_BLUR = np.zeros((0, 0, 3), dtype=np.uint8)


def _image(value: Any, name: str) -> np.ndarray:
    """A decoded H×W×3 uint8 array as it is (cached datasets), PNG bytes decoded now, or NO_BLUR."""
    if value is None:
        return NO_BLUR
    if isinstance(value, np.ndarray) and value.ndim == 3:
        return value
    return decode_image(bytes(value), name)


def training_pair(
    blur: np.ndarray, sharp: np.ndarray, crop: int, rng: np.random.Generator, flips: bool, recipe: synth.BlurRecipe
) -> tuple[np.ndarray, np.ndarray]:
    """One aligned training crop: cut from a stored pair, or (sharp-only rows) cut with context and blurred now."""
    if blur.size:
        return augment_pair(blur, sharp, crop, rng, flips)
    if flips and rng.random() < 0.5:  # flip before blurring, so the kernels' own asymmetries stay as drawn
        sharp = sharp[:, ::-1]
    blurred, window = synth.degrade_crop(sharp, crop, rng, recipe)
    k = int(rng.integers(0, 4)) if flips else 0
    return np.ascontiguousarray(np.rot90(blurred, k)), np.ascontiguousarray(np.rot90(window, k))


def augment_batch(
    batch: dict[str, np.ndarray],
    crop: int,
    flips: bool = True,
    seed: int | None = None,
    crops_per_pair: int = 1,
    blur: synth.BlurRecipe | None = None,
) -> dict[str, np.ndarray]:
    """map_batches function: pairs (PNG bytes, or arrays already decoded) → aligned crops, uint8 3×crop×crop
    (the trainer scales them to [-1, 1] on its device: `images.to_model_range`). Sharp-only rows get a
    fresh blur from `blur` (default recipe if None) per crop.

    `crops_per_pair` > 1 cuts several independent windows from each decoded pair: decoding two
    full-size PNGs costs far more than cropping, so on CPU-bound machines this multiplies samples per
    second. With a seed, a batch's randomness depends only on the seed and its keys (reproducible
    runs); without one it is fresh every epoch.
    """
    keys = [str(k) for k in batch["key"]]
    rng = np.random.default_rng(None if seed is None else [seed, zlib.crc32("\n".join(keys).encode())])
    recipe = blur or synth.BlurRecipe()
    blurs, sharps = [], []
    for key, b, s in zip(keys, batch["blur"], batch["sharp"]):
        b_img, s_img = _image(b, f"{key}/blur"), _image(s, f"{key}/sharp")
        for _ in range(crops_per_pair):
            b_crop, s_crop = training_pair(b_img, s_img, crop, rng, flips, recipe)
            blurs.append(to_chw_uint8(b_crop))
            sharps.append(to_chw_uint8(s_crop))
    return {"blur": np.stack(blurs), "sharp": np.stack(sharps)}


def decode_pair(row: dict[str, Any]) -> dict[str, Any]:
    """PNG bytes → H×W×3 uint8 arrays (what `cache=True` keeps in the object store); NO_BLUR for sharp-only rows."""
    key = row["key"]
    return {"key": key, "blur": _image(row["blur"], f"{key}/blur"), "sharp": _image(row["sharp"], f"{key}/sharp")}


def train_dataset(
    uri: str,
    crop: int = 256,
    split: str = "train",
    flips: bool = True,
    seed: int | None = None,
    batch_size: int = 8,
    small_blocks: bool = True,
    crops_per_pair: int = 1,
    cache: bool = False,
    blur: synth.BlurRecipe | None = None,
) -> ray.data.Dataset:
    """Training stream: decode, aligned random crop (blurred now for sharp-only rows), flips/rot90; uint8.

    Shards come in a new random order each epoch; consumers add a local shuffle buffer
    (`iter_torch_batches(local_shuffle_buffer_size=...)`) to mix pairs across shards.

    `small_blocks` lets a split of fewer shards than the cluster has CPUs be cut into blocks for all of them.
    `cache=True` returns the decoded split instead (`cached_split`), for the training workers to cut their
    crops from (`CropStream`); without it nothing is materialised: shards stream from storage each epoch,
    for splits of any size.
    """
    if cache:
        return cached_split(uri, split, batch_size if small_blocks else None)
    kwargs = {"crop": crop, "flips": flips, "seed": seed, "crops_per_pair": crops_per_pair, "blur": blur}
    ds = read_split(uri, split, shuffle_seed=seed)
    if small_blocks:
        shards, rows = _split_size(uri, split)
        cpus = _cluster_cpus()
        if shards < cpus:
            # Fewer shards than CPUs: with a block per shard, CPUs would sit idle, so the blocks are cut (a
            # streaming split, not an all-to-all repartition) to about one per CPU. Not into batch-sized ones:
            # each block is a task to schedule, and 34 of them cost more than the second CPU gave (ingest.py on
            # 2 CPUs, 272 pairs in 1 shard: batch-sized blocks 0.64x the plain loop, the shard as one block 0.78x).
            ds = ds.repartition(target_num_rows_per_block=max(batch_size, math.ceil(rows / cpus)))
    return ds.map_batches(augment_batch, fn_kwargs=kwargs, batch_size=batch_size, batch_format="numpy")


def cached_split(uri: str, split: str = "train", rows_per_block: int | None = 8) -> ray.data.MaterializedDataset:
    """The split decoded once and kept in the object store (Ray Data's advice for a split that fits there).

    The random crops must differ every epoch, so they are cut after the cache, by the training workers
    themselves (`CropStream`): running a Ray Data map after a materialised dataset costs each epoch a
    streaming executor whose scheduling loop spins while the trainer is busy (60 % of a core measured on a
    2-core machine, which slowed the model's own threads 3× through OpenMP barrier waits).
    """
    ds = read_split(uri, split, shuffle_seed=False)
    if rows_per_block:
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    return ds.map(decode_pair).materialize()


class CropStream:
    """Training batches cut from decoded pairs held in memory: every epoch new random crops (and, for sharp-only
    rows, new blur), in a new order, made by one background thread so the model never waits for them."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        crop: int,
        batch_size: int,
        crops_per_pair: int = 1,
        blur: synth.BlurRecipe | None = None,
        flips: bool = True,
        seed: int | None = None,
        prefetch: int = 4,
    ):
        if not rows:
            raise ValueError("no training pairs for this worker")
        self.rows, self.crop, self.batch_size, self.crops_per_pair = rows, crop, batch_size, crops_per_pair
        self.blur, self.flips, self.seed, self.prefetch = blur or synth.BlurRecipe(), flips, seed, prefetch

    def batches_per_epoch(self) -> int:
        return len(self.rows) * self.crops_per_pair // self.batch_size

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """uint8 batches {"blur", "sharp"}: N×3×crop×crop; the last partial batch is dropped."""

        rng = np.random.default_rng(None if self.seed is None else [self.seed, epoch])
        order = [k for k in range(len(self.rows)) for _ in range(self.crops_per_pair)]
        rng.shuffle(order)
        out: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for start in range(0, self.batches_per_epoch() * self.batch_size, self.batch_size):
                    pairs = [
                        training_pair(
                            self.rows[k]["blur"], self.rows[k]["sharp"], self.crop, rng, self.flips, self.blur
                        )
                        for k in order[start : start + self.batch_size]
                    ]
                    batch = {
                        "blur": np.stack([to_chw_uint8(b) for b, _ in pairs]),
                        "sharp": np.stack([to_chw_uint8(s) for _, s in pairs]),
                    }
                    while not stop.is_set():
                        try:
                            out.put(batch, timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                out.put(None)
            except BaseException as e:  # surfaced in the training thread, not lost in this one
                out.put(e)

        worker = threading.Thread(target=produce, name="crop-stream", daemon=True)
        worker.start()
        try:
            while (item := out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)


def decode_row(row: dict[str, Any], center_crop: int | None = None) -> dict[str, Any]:
    """Full-resolution pair (or a fixed centre crop), float32 3×H×W in [-1, 1], key kept."""
    pair = decode_pair(row)
    blur, sharp = pair["blur"], pair["sharp"]
    if not blur.size:
        raise ValueError(
            f"{row['key']}: a sharp-only row (blurred per crop for training) cannot be evaluated; "
            "evaluation splits need stored blurred images"
        )
    if center_crop:
        blur, sharp = _pad_to(blur, center_crop), _pad_to(sharp, center_crop)
        h, w = sharp.shape[:2]
        i, j = (h - center_crop) // 2, (w - center_crop) // 2
        blur, sharp = blur[i : i + center_crop, j : j + center_crop], sharp[i : i + center_crop, j : j + center_crop]
    return {"key": row["key"], "blur": to_model_input(blur), "sharp": to_model_input(sharp)}


def eval_dataset(uri: str, split: str = "val", center_crop: int | None = None) -> ray.data.Dataset:
    """Deterministic evaluation stream: full images (or fixed centre crops), in shard order."""
    return read_split(uri, split).map(decode_row, fn_kwargs={"center_crop": center_crop})


def ray_map_ordered(
    fn: Callable[[Any], Any], items: list[Any], chunk: int = 4, window: int | None = None
) -> Iterator[Any]:
    """fn over items as Ray tasks, results yielded in input order, at most `window` chunks in flight."""
    if not items:
        return iter(())
    window = window or max(2, int(ray.available_resources().get("CPU", 2)) * 2)
    task = ray.remote(num_cpus=1)(lambda xs: [fn(x) for x in xs])

    def gen() -> Iterator[Any]:
        chunks = (items[i : i + chunk] for i in range(0, len(items), chunk))
        inflight: deque = deque()
        for c in chunks:
            inflight.append(task.remote(c))
            if len(inflight) >= window:
                yield from ray.get(inflight.popleft())
        while inflight:
            yield from ray.get(inflight.popleft())

    return gen()
