"""Where evaluation pairs come from: prepared shards (a split), or a dataset folder read directly.

Every source yields shard-format rows (key, PNG blur/sharp bytes, kernel or None), so a folder and a
shard set are scored by the same code; folder pairs go through the data plane's own `encode_pair`.
Rows are streamed (a Parquet row group, or one folder pair, at a time) and never all held: the driver
keeps only keys and metrics, and `rows_for` re-reads the few rows a report shows as pictures.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import pyarrow.parquet as pq
import ray.data

from .. import storage
from ..data import layouts, shards

COLUMNS = ["key", "blur", "sharp", "kernel"]


class EmptyDatasetError(ValueError):
    pass


def shard_rows(uri: str, split: str | None = None) -> tuple[str, list[str]]:
    """The split to score (asked for, else test, else val) and its shard URIs."""
    manifest = shards.read_manifest(uri)
    splits = sorted(manifest["splits"])
    chosen = split or next((s for s in ("test", "val") if s in splits), None)
    if chosen is None or chosen not in splits:
        raise EmptyDatasetError(f"{uri}: no {split or 'test/val'} split to evaluate (splits: {splits})")
    return chosen, shards.split_uris(uri, chosen)


def folder_pairs(dataset: str, root: str, split: str | None = None, **options: Any) -> list[layouts.Pair]:
    if dataset == "paired":
        pairs = layouts.paired(root, split=split or "test")
    else:
        pairs = [p for p in layouts.discover(dataset, root, **options) if p.split == (split or "test")]
    if not pairs:
        raise EmptyDatasetError(f"{root}: no {split or 'test'} pairs found for dataset {dataset!r}")
    return pairs


def _pair_from(item: dict[str, Any]) -> layouts.Pair:
    return layouts.Pair(**item)


def _encode_item(item: dict[str, Any]) -> dict[str, Any]:
    """Ray Data `map` form of encode_pair (Pairs travel as plain dicts)."""
    row = shards.encode_pair(_pair_from(item))
    return {k: row[k] for k in COLUMNS}


class ShardSource:
    def __init__(self, uri: str, split: str | None, limit: int | None):
        self.uri = uri
        _, self.uris = shard_rows(uri, split)
        counts = []
        for u in self.uris:
            fs, path = storage.filesystem(u)
            with fs.open(path, "rb") as f:
                counts.append(pq.ParquetFile(f).metadata.num_rows)
        self.total = min(sum(counts), limit) if limit else sum(counts)
        if not self.total:
            raise EmptyDatasetError(f"{uri}: the split has no pairs")

    def rows(self) -> Iterator[dict[str, Any]]:
        n = 0
        for u in self.uris:
            fs, path = storage.filesystem(u)
            with fs.open(path, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=4, columns=COLUMNS):
                    for row in batch.to_pylist():
                        if n >= self.total:
                            return
                        n += 1
                        yield row

    def rows_for(self, keys: set[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for u in self.uris:
            fs, path = storage.filesystem(u)
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=COLUMNS, filters=[("key", "in", sorted(keys))])
            found.update({r["key"]: r for r in table.to_pylist()})
        return found

    def ray_dataset(self):
        fs, _ = storage.pyarrow_filesystem(self.uris[0])
        ds = ray.data.read_parquet([storage.pyarrow_filesystem(u)[1] for u in self.uris], filesystem=fs)
        # a shard is one block as read; small blocks let every actor of the pool take a share
        return ds.select_columns(COLUMNS).limit(self.total).repartition(target_num_rows_per_block=2)


class FolderSource:
    def __init__(self, dataset: str, root: str, split: str | None, limit: int | None, **options: Any):
        self.pairs = folder_pairs(dataset, root, split, **options)[:limit]
        self.total = len(self.pairs)

    def rows(self) -> Iterator[dict[str, Any]]:
        return map(shards.encode_pair, self.pairs)

    def rows_for(self, keys: set[str]) -> dict[str, dict[str, Any]]:
        return {p.key: shards.encode_pair(p) for p in self.pairs if p.key in keys}

    def ray_dataset(self):
        items = [dataclasses.asdict(p) for p in self.pairs]
        return ray.data.from_items(items, override_num_blocks=max(1, len(items) // 2)).map(_encode_item)


def open_source(
    data: str | None = None,
    dataset: str | None = None,
    root: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    **options: Any,
) -> ShardSource | FolderSource:
    """Shards at `data`, or a dataset folder at `root` (or a paired folder at `data`)."""
    if data and storage.exists(storage.join(data, shards.MANIFEST)):
        return ShardSource(data, split, limit)
    folder = root or data
    if not folder:
        raise ValueError("give --data (shards or a paired folder) or --dataset with --root")
    return FolderSource(dataset or "paired", folder, split, limit, **options)
