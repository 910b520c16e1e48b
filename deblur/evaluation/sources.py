"""Where evaluation pairs come from: prepared shards (a split), or a dataset folder read directly.

Every source yields shard-format rows (key, PNG blur/sharp bytes, kernel or None), so a folder and a
shard set are scored by the same code; folder pairs go through the data plane's own `encode_pair`.
"""
from __future__ import annotations

from typing import Any, Iterator

from .. import storage
from ..data import layouts, shards


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


def iter_rows(data: str | None = None, dataset: str | None = None, root: str | None = None, split: str | None = None,
              limit: int | None = None, **options: Any) -> tuple[int, Iterator[dict[str, Any]]]:
    """(count, rows) for shards at `data` or for a dataset folder at `root`."""
    if data and storage.exists(storage.join(data, shards.MANIFEST)):
        _, uris = shard_rows(data, split)
        rows = [r for u in uris for r in shards.read_rows(u)][:limit]
        if not rows:
            raise EmptyDatasetError(f"{data}: the split has no pairs")
        return len(rows), iter(rows)
    folder = root or data
    if not folder:
        raise ValueError("give --data (shards or a paired folder) or --dataset with --root")
    pairs = folder_pairs(dataset or "paired", folder, split, **options)[:limit]
    return len(pairs), map(shards.encode_pair, pairs)
