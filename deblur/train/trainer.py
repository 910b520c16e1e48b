"""Build and run the Ray Train `TorchTrainer` for a config; record the best checkpoint in `best.json`."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from .. import storage
from ..config import Config
from ..data.pipeline import eval_dataset, train_dataset
from ..data.shards import read_manifest
from .loop import train_loop

BEST_FILE = "best.json"


def run_uri(cfg: Config) -> str:
    return storage.join(_absolute(cfg.run.storage_path), cfg.run.name)


def _absolute(uri: str) -> str:
    return uri if storage.is_remote(uri) else os.path.abspath(uri)


def _storage(cfg: Config) -> tuple[str, Any]:
    """(storage_path, filesystem) for RunConfig: pyarrow S3 with our endpoint for s3://, local otherwise."""
    uri = _absolute(cfg.run.storage_path)
    if storage.is_remote(uri):
        fs, path = storage.pyarrow_filesystem(uri)
        return path, fs
    return uri, None


def check_data(cfg: Config) -> dict[str, Any]:
    """Fail before any worker starts when the shards or a split are missing, or `model.init` cannot load."""
    manifest = read_manifest(cfg.data.uri)
    for split in (cfg.data.train_split, cfg.data.val_split):
        if split not in manifest["splits"]:
            raise ValueError(f"{cfg.data.uri}: no {split!r} split (has {sorted(manifest['splits'])})")
    if cfg.model.init:
        from .loop import initial_weights

        initial_weights(cfg)  # a wrong path or architecture stops here, not in every worker after start-up
    pairs = manifest["splits"][cfg.data.train_split]["pairs"]
    if pairs < cfg.data.batch_size * cfg.scaling.num_workers:
        raise ValueError(
            f"{cfg.data.uri}: {pairs} training pairs cannot fill one batch of {cfg.data.batch_size} on each of "
            f"{cfg.scaling.num_workers} workers"
        )
    return manifest


def build_trainer(cfg: Config, log_level: str = "WARNING") -> TorchTrainer:
    """`log_level` is Ray Train's own (checkpoint and report lines, a metrics dict each); rank 0's epoch
    lines print whatever it is.

    Ray Data's progress in the workers (the val split, every epoch) would otherwise be distributed tqdm
    bars that the driver redraws between the epoch lines; as plain progress it is INFO log lines there
    (shown with `--verbose`, like Ray's other INFO lines). It stays on rather than off: turned off, Ray Data
    warns that it is."""
    check_data(cfg)
    ray.data.DataContext.get_current().use_ray_tqdm = False  # captured by the datasets made below
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = 1
    threads = s.torch_threads or max(1, round(s.cpus_per_worker))
    path, fs = _storage(cfg)
    datasets = {
        "train": train_dataset(
            cfg.data.uri,
            crop=cfg.data.crop,
            split=cfg.data.train_split,
            seed=None,
            batch_size=cfg.data.batch_size,
            crops_per_pair=cfg.data.crops_per_pair,
            cache=cfg.data.cache,
            blur=cfg.data.blur,
        ),
        "val": eval_dataset(cfg.data.uri, split=cfg.data.val_split, center_crop=cfg.data.val_center_crop),
    }
    return TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_uri": run_uri(cfg), "threads": threads},
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker=resources,
            placement_strategy=s.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.num_to_keep, checkpoint_score_attribute="val_psnr", checkpoint_score_order="max"
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=log_level),
        ),
        datasets=datasets,
        # a cached split goes whole to every worker, which takes its own share (train/loop.py)
        dataset_config=ray.train.DataConfig(datasets_to_split=[] if cfg.data.cache else ["train"]),
    )


def _uri(cfg: Config, path: str) -> str:
    return f"s3://{path}" if storage.is_remote(_absolute(cfg.run.storage_path)) else path


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def fit(cfg: Config, log_level: str = "WARNING") -> dict[str, Any]:
    """Train (or resume) the run; write and return best.json's content."""
    result = build_trainer(cfg, log_level).fit()
    if result.error:
        raise result.error
    best = max(result.best_checkpoints, key=lambda cm: cm[1].get("val_psnr", -math.inf), default=None)
    if best is None:
        raise RuntimeError(f"run {cfg.run.name}: finished without a checkpoint")
    checkpoint, best_metrics = best
    summary = {
        "run": run_uri(cfg),
        "checkpoint": _uri(cfg, checkpoint.path),
        "metrics": _clean(dict(best_metrics)),
        "latest_checkpoint": _uri(cfg, result.checkpoint.path) if result.checkpoint else None,
        "config": cfg.model_dump(mode="json"),
    }
    storage.write_text(storage.join(run_uri(cfg), BEST_FILE), json.dumps(summary, indent=2) + "\n")
    return summary
