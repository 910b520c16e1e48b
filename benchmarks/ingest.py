"""Ingest throughput: pairs/s through the Ray Data training pipeline (local shards, S3 shards) vs a plain
Python loop decoding the same PNGs with the same crop/normalise code, all in one run on the same cores.
The same pairs packed into one shard show what splitting a shard into batch-sized blocks (which
`train_dataset` does when a split has fewer shards than the cluster has CPUs) buys and costs.

  python benchmarks/ingest.py [--photos 68] [--epochs 3] [--crop 256]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

import _common  # noqa: F401  (sets sys.path)


def plain_loop(uri: str, crop: int, epochs: int) -> tuple[int, float]:
    from deblur import storage
    from deblur.data.pipeline import augment_batch
    from deblur.data.shards import split_uris

    tables = [pq.read_table(io.BytesIO(storage.read_bytes(u))) for u in split_uris(uri, "train")]
    rng_seed = 0
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for table in tables:
            for row in table.to_pylist():
                batch = {k: np.array([row[k]], dtype=object) for k in ("key", "blur", "sharp")}
                augment_batch(batch, crop, seed=rng_seed)
                n += 1
    return n, time.perf_counter() - t0


def ray_stream(uri: str, crop: int, epochs: int, small_blocks: bool = True) -> tuple[int, float]:
    from deblur.data.pipeline import train_dataset

    ds = train_dataset(uri, crop=crop, batch_size=8, small_blocks=small_blocks)
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in ds.iter_batches(batch_size=8, batch_format="numpy"):
            n += len(batch["blur"])
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--photos", type=int, default=68)
    p.add_argument("--variants", type=int, default=4, help="blurred copies per photo (more pairs per epoch)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--shard-mb", type=float, default=16.0)
    args = p.parse_args()

    import boto3

    from deblur import storage
    from deblur.data import layouts, shards

    server, endpoint = _common.start_s3()
    _common.start_ray()
    with tempfile.TemporaryDirectory() as tmp:
        src = _common.SHARED_DATA / "sharp" / "cbsd68"
        pairs = [
            p for p in layouts.synthetic(str(src), val_fraction=0.0, variants=args.variants, synth={"max_len": 30})
        ][: args.photos * args.variants]
        local, single = f"{tmp}/shards", f"{tmp}/one-shard"
        shards.prepare(pairs, local, {}, shard_mb=args.shard_mb, progress=False)
        shards.prepare(pairs, single, {}, shard_mb=1024, progress=False)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        fs, _ = storage.filesystem("s3://bench")
        fs.put(local, "bench/shards", recursive=True)
        s3 = "s3://bench/shards"
        n_shards = len(shards.split_uris(local, "train"))

        results = {}
        ray_stream(local, args.crop, 1)  # warm-up: worker processes, imports
        results["plain loop (1 process)"] = plain_loop(local, args.crop, args.epochs)
        results[f"Ray Data, {n_shards} local shards"] = ray_stream(local, args.crop, args.epochs)
        results[f"Ray Data, {n_shards} S3 shards"] = ray_stream(s3, args.crop, args.epochs)
        results["Ray Data, 1 local shard, split in blocks"] = ray_stream(single, args.crop, args.epochs)
        results["Ray Data, 1 local shard, one block"] = ray_stream(single, args.crop, args.epochs, small_blocks=False)
    server.stop()
    base = results["plain loop (1 process)"]
    base_rate = base[0] / base[1]
    rows = [[name, n, round(t, 2), round(n / t, 1), round(n / t / base_rate, 2)] for name, (n, t) in results.items()]
    _common.report(
        "ingest",
        ["path", "pairs", "seconds", "pairs/s", "vs plain loop"],
        rows,
        {"crop": args.crop, "epochs": args.epochs, "photos": len(pairs)},
    )


if __name__ == "__main__":
    main()
