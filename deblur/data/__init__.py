"""Datasets: layouts on disk, synthetic blur, Parquet shards on storage and the Ray Data pipeline."""
