"""Training throughput, side by side in one run: generator+critic steps/s of
  1. a plain single-process torch loop on tensors already in memory (no Ray at all),
  2. the same steps inside a Ray Train TorchTrainer worker, still on in-memory tensors (Train's overhead),
  3. the real job: TorchTrainer fed by the Ray Data stream from Parquet shards on S3 (moto on loopback),
  4. the same with `data.cache=true`: the split decoded once into the object store, crops cut per epoch.
Same model, batch, crop and thread count everywhere (the sample config, with its critic switched on:
the sample itself trains with content losses only).

  python benchmarks/train_ingest.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

import _common

GAN = ["loss.lambda_adv=0.001"]  # measure generator + critic steps, as DeblurGAN trains


def make_batch(cfg, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    import skimage.data

    from deblur.data.pipeline import augment_pair
    from deblur.data.synth import synthesize
    from deblur.images import to_model_input

    rng = np.random.default_rng(seed)
    sharp = skimage.data.astronaut()
    blur = synthesize(sharp, seed, max_len=30).blurred
    crops = [augment_pair(blur, sharp, cfg.data.crop, rng) for _ in range(cfg.data.batch_size)]
    return (
        torch.from_numpy(np.stack([to_model_input(b) for b, _ in crops])),
        torch.from_numpy(np.stack([to_model_input(s) for _, s in crops])),
    )


def steps_in_memory(cfg_dict: dict, steps: int, under_train: bool) -> float:
    """Steps/s of GANStep on one fixed in-memory batch (DDP-wrapped when under Ray Train)."""
    from deblur.config import Config
    from deblur.models import build_critic, build_generator
    from deblur.train.step import GANStep

    cfg = Config.model_validate(cfg_dict)
    torch.set_num_threads(cfg.scaling.torch_threads or 2)
    torch.manual_seed(0)
    g = build_generator(cfg.model.generator, **cfg.model.generator_kwargs)
    d = build_critic(cfg.model.critic, **cfg.model.critic_kwargs)
    if under_train:
        import ray.train.torch

        g, d = ray.train.torch.prepare_model(g), ray.train.torch.prepare_model(d)
    step = GANStep(cfg, g, d, torch.device("cpu"))
    blur, sharp = make_batch(cfg)
    for _ in range(3):
        step(blur, sharp)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(blur, sharp)
    return steps / (time.perf_counter() - t0)


def _train_worker(config: dict) -> None:
    """Runs inside the Train worker; the rate goes to a file (same machine), as Train V2 keeps reported
    metrics only alongside checkpoints."""
    import ray.train

    rate = steps_in_memory(config["cfg"], config["steps"], under_train=True)
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as f:
            f.write(str(rate))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from deblur import storage
    from deblur.config import load_config
    from deblur.data import layouts, shards
    from deblur.train.trainer import fit

    cfg = load_config("sample", GAN)
    cfg_dict = cfg.model_dump()
    rows = []
    plain = steps_in_memory(cfg_dict, args.steps, under_train=False)
    rows.append(["plain torch loop, in-memory batch", round(plain, 2), 1.0])
    print(rows[-1], flush=True)

    server, endpoint = _common.start_s3()
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    _common.start_ray()
    storage_dir = tempfile.mkdtemp(prefix="bench-train-")
    rate_file = f"{storage_dir}/in-memory-rate.txt"
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": cfg_dict, "steps": args.steps, "out": rate_file},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage_dir, name="in-memory"),
    )
    trainer.fit()
    in_train = float(open(rate_file).read())
    rows.append(["Ray Train worker, in-memory batch", round(in_train, 2), round(in_train / plain, 2)])
    print(rows[-1], flush=True)

    options = cfg.data.prepare.options  # the sample job's own data, as make train packs it
    pairs = layouts.discover("sample", None, **options)
    shards.prepare(pairs, "s3://bench/shards", shards.layout_info("sample", None, **options), progress=False)
    steps_per_epoch = args.steps
    for cache in (False, True):
        name = "cached" if cache else "stream"
        job = load_config(
            "sample",
            GAN
            + [
                "data.uri=s3://bench/shards",
                "data.prepare=null",
                f"data.cache={str(cache).lower()}",
                "train.epochs=2",
                f"train.steps_per_epoch={steps_per_epoch}",
                "train.log_images=0",
                f"run.storage_path={storage_dir}",
                f"run.name={name}",
            ],
        )
        fit(job)
        epochs = [json.loads(line) for line in storage.read_text(f"{storage_dir}/{name}/metrics.jsonl").splitlines()]
        streamed = epochs[-1]["images_per_s"] / cfg.data.batch_size  # the second epoch: the stream is warm
        label = "Ray Train + Ray Data, decoded once (data.cache)" if cache else "Ray Train + Ray Data stream from S3"
        rows.append([label, round(streamed, 2), round(streamed / plain, 2)])
        print(rows[-1], flush=True)
    server.stop()
    _common.report(
        "train_ingest",
        ["setup", "G+D steps/s", "vs plain"],
        rows,
        {
            "batch_size": cfg.data.batch_size,
            "crop": cfg.data.crop,
            "crops_per_pair": cfg.data.crops_per_pair,
            "torch_threads": cfg.scaling.torch_threads,
            "steps": args.steps,
        },
    )


if __name__ == "__main__":
    main()
