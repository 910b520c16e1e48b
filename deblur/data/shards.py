"""Pack pairs into Parquet shards on storage: `out/<split>/part-NNNNN.parquet` + `out/manifest.json`.

One row per pair: `key`, `blur` and `sharp` as lossless PNG bytes, `height`, `width`, `source`, `split`,
and the blur `kernel` for synthetic pairs (null otherwise). A sharp-only row (`blur` null) is a source
for training crops whose blur is drawn afresh each time (`synth.degrade_crop`).

Shards are planned before anything is encoded: pairs are taken in key order per split and cut into
shards by their estimated size (source file sizes), so a given input always maps to the same shards.
Each shard carries a fingerprint of its plan in its Parquet metadata; a re-run skips every shard whose
file already holds the same fingerprint. Hence a re-run with the same inputs writes nothing, and a re-run
after an interruption only encodes the shards that were not finished. Shards are written whole and
atomically (storage.write_bytes), so an interrupted run never leaves a partial shard under its name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..images import ImageError, encode_png, read_image
from ..progress import bar as progress_bar
from . import synth
from .layouts import Pair

FORMAT_VERSION = 1
IDENTITY_VERSION = 2  # 2: source files identified by size and mtime, not size alone
MANIFEST = "manifest.json"
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("blur", pa.binary()),
        ("sharp", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("kernel", pa.list_(pa.list_(pa.float32()))),
    ]
)


class PairError(ValueError):
    """A pair that cannot be encoded: unreadable image, sizes that differ, ..."""


@dataclass
class ShardPlan:
    split: str
    index: int
    pairs: list[Pair]
    fingerprint: str

    @property
    def relpath(self) -> str:
        return f"{self.split}/part-{self.index:05d}.parquet"


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _file_identity(path: str) -> tuple[str, int, int]:
    """(name, size, mtime in ns): an edited file of the same size (a retouched TIFF or BMP) still changes it."""
    try:
        st = os.stat(path)
        return os.path.basename(path), st.st_size, st.st_mtime_ns
    except OSError:
        return os.path.basename(path), 0, 0


def _pair_identity(pair: Pair) -> list[Any]:
    files = [pair.sharp] + ([pair.blur] if pair.blur else [])
    recipe = {**pair.synth, "synth_version": synth.VERSION} if pair.blur is None and not pair.online else pair.synth
    return [pair.key, pair.split, pair.source, [_file_identity(f) for f in files], recipe, pair.online]


def plan_shards(pairs: list[Pair], target_bytes: int) -> list[ShardPlan]:
    by_split: dict[str, list[Pair]] = {}
    for p in sorted(pairs, key=lambda p: (p.split, p.key)):
        by_split.setdefault(p.split, []).append(p)
    plans = []
    for split, items in by_split.items():
        current: list[Pair] = []
        size = 0
        for p in items:
            est = _file_size(p.sharp) * (2 if p.blur is None and not p.online else 1) + (
                _file_size(p.blur) if p.blur else 0
            )
            if current and size + est > target_bytes:
                plans.append(_plan(split, len([q for q in plans if q.split == split]), current))
                current, size = [], 0
            current.append(p)
            size += est
        if current:
            plans.append(_plan(split, len([q for q in plans if q.split == split]), current))
    return plans


def _plan(split: str, index: int, pairs: list[Pair]) -> ShardPlan:
    ident = json.dumps([FORMAT_VERSION, IDENTITY_VERSION] + [_pair_identity(p) for p in pairs], sort_keys=True)
    return ShardPlan(split, index, pairs, hashlib.sha256(ident.encode()).hexdigest()[:32])


def encode_pair(pair: Pair) -> dict[str, Any]:
    """Read (or synthesise) one pair and encode it as a shard row. Raises PairError naming the file."""
    try:
        sharp = read_image(pair.sharp)
        kernel = None
        seed = synth.pair_seed(int(pair.synth.get("seed", 0)), pair.key)
        if pair.online:
            blur = None
        elif pair.blur is None and "recipe" in pair.synth:
            blur, kernel = synth.degrade(sharp, np.random.default_rng(seed), synth.BlurRecipe(**pair.synth["recipe"]))
        elif pair.blur is None:
            opts = {k: v for k, v in pair.synth.items() if k != "seed"}
            result = synth.synthesize(sharp, seed=seed, **opts)
            blur, kernel = result.blurred, result.kernel
        else:
            blur = read_image(pair.blur)
    except ImageError as e:
        raise PairError(str(e)) from None
    if blur is not None and blur.shape != sharp.shape:
        raise PairError(
            f"{pair.blur}: size {blur.shape[1]}×{blur.shape[0]} differs from its sharp partner "
            f"{pair.sharp} ({sharp.shape[1]}×{sharp.shape[0]})"
        )
    return {
        "key": pair.key,
        "blur": encode_png(blur) if blur is not None else None,
        "sharp": encode_png(sharp),
        "height": sharp.shape[0],
        "width": sharp.shape[1],
        "source": pair.source,
        "split": pair.split,
        "kernel": kernel.tolist() if kernel is not None else None,
    }


def encode_or_error(pair: Pair) -> dict[str, Any]:
    """For parallel encoders: a row, or {"key", "error"} so one bad file is reported, not raised remotely."""
    try:
        return encode_pair(pair)
    except PairError as e:
        return {"key": pair.key, "error": str(e)}


def local_map(fn: Callable[[Pair], dict], pairs: list[Pair]) -> Iterator[dict]:
    return map(fn, pairs)


def _shard_bytes(rows: list[dict], fingerprint: str, row_group_rows: int) -> bytes:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = {b"deblur.fingerprint": fingerprint.encode(), b"deblur.format": str(FORMAT_VERSION).encode()}
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_rows, compression="none")  # PNG is compressed already
    return buf.getvalue()


def existing_fingerprint(uri: str) -> str | None:
    fs, path = storage.filesystem(uri)
    try:
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f).metadata or {}
    except Exception:  # an unreadable or foreign file: rewrite it
        return None
    value = meta.get(b"deblur.fingerprint")
    return value.decode() if value else None


def prepare(
    pairs: list[Pair],
    out: str,
    layout: dict[str, Any],
    shard_mb: float = 256.0,
    skip_bad: bool = False,
    row_group_rows: int = 16,
    encoder: Callable[[Callable[[Pair], dict], list[Pair]], Iterable[dict]] = local_map,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the shards and manifest for `pairs` under `out`; returns the manifest."""
    if not pairs:
        raise ValueError("no pairs to prepare")
    plans = plan_shards(pairs, int(shard_mb * 1024 * 1024))
    old = _read_manifest(out)
    old_entries = {e["path"]: e for e in (old or {}).get("shards", [])}
    todo = [p for p in plans if existing_fingerprint(storage.join(out, p.relpath)) != p.fingerprint]
    todo_paths = {p.relpath for p in todo}
    done = [p for p in plans if p.relpath not in todo_paths]
    entries: dict[str, dict] = {}
    for plan in done:
        prev = old_entries.get(plan.relpath)
        if prev and prev.get("fingerprint") == plan.fingerprint:
            entries[plan.relpath] = prev
        else:  # written by a run that was interrupted before its manifest
            data = storage.read_bytes(storage.join(out, plan.relpath))
            rows = pq.read_metadata(io.BytesIO(data)).num_rows
            entries[plan.relpath] = _entry(plan, rows, len(data), hashlib.sha256(data).hexdigest())
    done_keys = {p.key for plan in done for p in plan.pairs}
    skipped = [s for s in (old or {}).get("skipped", []) if s["key"] in done_keys]

    pending = [p for plan in todo for p in plan.pairs]
    results = iter(encoder(encode_or_error if skip_bad else encode_pair, pending)) if pending else iter(())
    bar = progress_bar(len(pending), "encoding pairs", "pair", enabled=progress and bool(pending))
    for plan in todo:
        rows = []
        for _ in plan.pairs:
            row = next(results)
            bar.update(1)
            if "error" in row:
                skipped.append({"key": row["key"], "reason": row["error"]})
                continue
            rows.append(row)
        if rows:
            data = _shard_bytes(rows, plan.fingerprint, row_group_rows)
            storage.write_bytes(storage.join(out, plan.relpath), data)
            entries[plan.relpath] = _entry(plan, len(rows), len(data), hashlib.sha256(data).hexdigest())
    bar.close()
    _remove_stale(
        out,
        {p.relpath for p in plans if p.relpath in entries},
        {p.split for p in plans} | set((old or {}).get("splits", {})),
    )
    manifest = _manifest(plans, entries, layout, skipped)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if old is None or json.dumps(old, indent=2, sort_keys=True) + "\n" != text:
        storage.write_text(storage.join(out, MANIFEST), text)
    return manifest


def _entry(plan: ShardPlan, rows: int, nbytes: int, sha: str) -> dict[str, Any]:
    return {
        "path": plan.relpath,
        "split": plan.split,
        "rows": rows,
        "bytes": nbytes,
        "sha256": sha,
        "fingerprint": plan.fingerprint,
    }


def _manifest(plans: list[ShardPlan], entries: dict[str, dict], layout: dict, skipped: list[dict]) -> dict[str, Any]:
    shards = [entries[p.relpath] for p in plans if p.relpath in entries]
    splits: dict[str, dict] = {}
    for e in shards:
        s = splits.setdefault(e["split"], {"pairs": 0, "shards": 0, "bytes": 0})
        s["pairs"] += e["rows"]
        s["shards"] += 1
        s["bytes"] += e["bytes"]
    return {
        "format": "deblur-shards",
        "version": FORMAT_VERSION,
        "layout": layout,
        "splits": splits,
        "shards": shards,
        "skipped": sorted(skipped, key=lambda s: s["key"]),
    }


def _read_manifest(out: str) -> dict | None:
    uri = storage.join(out, MANIFEST)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_text(uri))
    except json.JSONDecodeError:
        return None


def read_manifest(out: str) -> dict[str, Any]:
    """The manifest of a prepared dataset, or a StorageError saying it is not one."""
    uri = storage.join(out, MANIFEST)
    if not storage.exists(uri):
        raise storage.StorageError(f"{uri}: no manifest; run deblur prepare to create the shards first")
    return json.loads(storage.read_text(uri))


def _remove_stale(out: str, keep: set[str], splits: set[str]) -> None:
    for split in splits:
        for uri in storage.listdir(storage.join(out, split), ".parquet"):
            rel = f"{split}/{uri.rstrip('/').rsplit('/', 1)[-1]}"
            if rel not in keep:
                fs, path = storage.filesystem(uri)
                fs.rm(path)


class ShardError(ValueError):
    """A shard that is not what its manifest says (truncated, altered, missing); the message names it."""


def split_uris(out: str, split: str, check_sizes: bool = True) -> list[str]:
    """Shard URIs of a split as the manifest lists them; each one's size is checked against the manifest
    (cheap: a truncated or replaced shard fails here, naming it, instead of deep inside a Ray Data task)."""
    manifest = read_manifest(out)
    entries = [e for e in manifest["shards"] if e["split"] == split]
    if not entries:
        raise storage.StorageError(f"{out}: no shards for split {split!r} (splits: {sorted(manifest['splits'])})")
    if check_sizes:
        fs, _ = storage.filesystem(out)
        for e in entries:
            uri = storage.join(out, e["path"])
            path = storage.filesystem(uri)[1]
            if not fs.exists(path):
                raise ShardError(f"{uri}: listed in the manifest but missing; run the prepare job again")
            if e.get("bytes") is not None and fs.size(path) != e["bytes"]:
                raise ShardError(
                    f"{uri}: {fs.size(path)} bytes, the manifest says {e['bytes']} (truncated or replaced); "
                    "run the prepare job again"
                )
    return [storage.join(out, e["path"]) for e in entries]


def _expected_sha256(uri: str) -> str | None:
    folder, name = uri.rstrip("/").rsplit("/", 2)[0], "/".join(uri.rstrip("/").rsplit("/", 2)[1:])
    try:
        manifest = read_manifest(folder)
    except storage.StorageError:
        return None
    return next((e.get("sha256") for e in manifest["shards"] if e["path"] == name), None)


def read_rows(uri: str, verify: bool = True) -> list[dict[str, Any]]:
    """All rows of one shard, its sha256 checked against the manifest beside it (tests and small tools;
    training streams through Ray Data instead, with the sizes checked by `split_uris`)."""
    data = storage.read_bytes(uri)
    expected = _expected_sha256(uri) if verify else None
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise ShardError(
            f"{uri}: content differs from the manifest's sha256 (altered or corrupt); run the prepare job again"
        )
    try:
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid and friends on damaged files
        raise ShardError(f"{uri}: not a readable Parquet shard ({str(e).splitlines()[0][:160]})") from None


def layout_info(dataset: str, root: str | None, **options: Any) -> dict[str, Any]:
    return {"dataset": dataset, "root": str(root) if root else None, "options": options}
