"""The per-worker training loop that Ray Train runs on every worker (`train_loop_per_worker`).

Each epoch: stream this worker's share of the training shards, take GAN steps, validate on rank 0
(full-resolution PSNR/SSIM of output and of the blurred input, on the val split), then report metrics and
a checkpoint. A restarted worker, or a resubmitted run of the same name, resumes from the latest
checkpoint Ray Train hands back, so the epoch counter continues and at most one epoch is lost.
"""
from __future__ import annotations

import io
import os
import tempfile
import time
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from .. import metrics
from ..config import Config
from ..images import to_model_range, to_uint8
from ..models import build_critic, build_generator, generator_checkpoint
from ..models.checkpoint import CHECKPOINT_FILE
from ..models.common import to_device, tune_cuda
from .step import GANStep, unwrap

PROGRESS_EVERY_S = 120.0


def _mean_across_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _param_spread(models: list[torch.nn.Module], device: torch.device) -> float:
    """max − min over workers of the sum of all weights: 0 when DDP keeps the replicas identical."""
    total = torch.tensor(sum(float(p.detach().double().sum()) for m in models for p in m.parameters()), device=device, dtype=torch.float64)
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    hi, lo = total.clone(), total.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float(hi - lo)


def _worker_nodes() -> int:
    """How many distinct Ray nodes the worker group spans (shown in metrics: multi-node runs say so)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def save_checkpoint(path: str, cfg: Config, g, d, step: GANStep, epoch: int, global_step: int, epoch_metrics: dict) -> None:
    state = generator_checkpoint(
        g,
        cfg.model.generator,
        cfg.model.generator_kwargs,
        critic_name=cfg.model.critic,
        critic_kwargs=cfg.model.critic_kwargs,
        critic=unwrap(d).state_dict(),
        optim=step.state_dict(),
        epoch=epoch,
        step=global_step,
        config=cfg.model_dump(mode="json"),
        metrics=epoch_metrics,
    )
    buf = io.BytesIO()
    torch.save(state, buf)
    with open(os.path.join(path, CHECKPOINT_FILE), "wb") as f:
        f.write(buf.getvalue())


def _load_checkpoint(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


@torch.no_grad()
def validate(cfg: Config, g, device: torch.device) -> tuple[dict[str, float], list[tuple[str, np.ndarray]]]:
    """PSNR/SSIM (gopro convention) of the output and of the blurred input over the val split."""
    model = unwrap(g).eval()
    rows = ray.train.get_dataset_shard("val").iter_rows()
    out_psnr, out_ssim, in_psnr, in_ssim, images = [], [], [], [], []
    for i, row in enumerate(rows):
        if cfg.data.val_max_images and i >= cfg.data.val_max_images:
            break
        blur = torch.from_numpy(np.array(row["blur"], dtype=np.float32))[None].to(device)  # a copy: rows are read-only
        output = model(blur)[0]
        out_u8, blur_u8 = to_uint8(output), to_uint8(row["blur"])
        sharp_u8 = to_uint8(row["sharp"])
        out_psnr.append(min(metrics.psnr(out_u8, sharp_u8), metrics.PSNR_CAP))
        in_psnr.append(min(metrics.psnr(blur_u8, sharp_u8), metrics.PSNR_CAP))
        out_ssim.append(metrics.ssim(out_u8, sharp_u8))
        in_ssim.append(metrics.ssim(blur_u8, sharp_u8))
        if i < cfg.train.log_images:
            images.append((f"val/{row['key']}", np.concatenate([blur_u8, out_u8, sharp_u8], axis=1)))
    if not out_psnr:
        raise ValueError(f"{cfg.data.uri}: validation split {cfg.data.val_split!r} is empty")
    result = {
        "val_psnr": float(np.mean(out_psnr)),
        "val_ssim": float(np.mean(out_ssim)),
        "val_psnr_input": float(np.mean(in_psnr)),
        "val_ssim_input": float(np.mean(in_ssim)),
        "val_images": len(out_psnr),
    }
    result["val_psnr_gain"] = result["val_psnr"] - result["val_psnr_input"]
    return result, images


def _training_batches(cfg: Config, rank: int, world: int, device: torch.device):
    """(epoch → an iterator of {"blur", "sharp"} tensor batches for this worker, steps per epoch or None).

    Streaming splits come through Ray Data (`get_dataset_shard`, an equal share of every epoch per worker;
    their length is known only when `train.steps_per_epoch` caps it). A cached split arrives whole and
    decoded; this worker keeps every world-th pair (DDP ranks train on disjoint pairs) and cuts fresh crops
    from them each epoch in a background thread (`CropStream`), the same number of batches on every rank
    (the ranks' gradient all-reduces must pair up, so a rank with one pair more stops with the others).
    """
    shard = ray.train.get_dataset_shard("train")
    if not cfg.data.cache:
        def streamed(epoch: int):
            for batch in shard.iter_torch_batches(batch_size=cfg.data.batch_size, drop_last=True, device=device,
                                                  local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                                  pin_memory=device.type == "cuda"):
                yield {k: to_model_range(v) for k, v in batch.items()}

        return streamed, cfg.train.steps_per_epoch
    from ..data.pipeline import CropStream

    rows, total = [], 0
    for total, row in enumerate(shard.iter_rows(), 1):
        if (total - 1) % world == rank:
            rows.append(row)
    stream = CropStream(rows, cfg.data.crop, cfg.data.batch_size, cfg.data.crops_per_pair, cfg.data.blur,
                        seed=None if cfg.train.seed is None else cfg.train.seed * 1000 + rank)
    steps = total // world * cfg.data.crops_per_pair // cfg.data.batch_size
    if cfg.train.steps_per_epoch:
        steps = min(steps, cfg.train.steps_per_epoch)

    def batches(epoch: int):
        for batch in stream.epoch(epoch):  # uint8 crosses to the device, then becomes [-1, 1] there
            yield {k: to_model_range(to_device(torch.from_numpy(v), device)) for k, v in batch.items()}

    return batches, steps


def train_loop(config: dict[str, Any]) -> None:
    cfg = Config.model_validate(config["cfg"])
    run_uri = config["run_uri"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()
    # training batches all have one shape; validation's sizes repeat every epoch, so each is tuned once
    tune_cuda(fixed_shapes=True)
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config.get("threads", 1))))

    g = build_generator(cfg.model.generator, **cfg.model.generator_kwargs)
    d = build_critic(cfg.model.critic, **cfg.model.critic_kwargs)
    start_epoch, global_step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    state = _load_checkpoint(checkpoint) if checkpoint else None
    if state:
        g.load_state_dict(state["generator"])
        d.load_state_dict(state["critic"])
        start_epoch, global_step = int(state["epoch"]) + 1, int(state["step"])
    # channels-last, as the engines run: oneDNN (CPU) and cuDNN (tensor cores) convolve NHWC fastest
    g = ray.train.torch.prepare_model(g.to(memory_format=torch.channels_last))
    d = ray.train.torch.prepare_model(d.to(memory_format=torch.channels_last))
    step = GANStep(cfg, g, d, device)
    if state:
        step.load_state_dict(state["optim"])
        print(f"[rank {rank}] resumed from epoch {start_epoch - 1} (step {global_step})")

    num_nodes = _worker_nodes()
    runlog = None
    if rank == 0:
        from .runlog import RunLog

        runlog = RunLog(run_uri)
    batches_of, steps_per_epoch = _training_batches(cfg, rank, ctx.get_world_size(), device)
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n_steps = n_images = 0
        batches = batches_of(epoch)
        shown = t0
        for batch in batches:
            if steps_per_epoch and n_steps >= steps_per_epoch:
                break
            # the rate moves every step where an epoch's length is known (else once per epoch)
            step.set_progress(epoch + (n_steps / steps_per_epoch if steps_per_epoch else 0.0), global_step)
            out = step(batch["blur"], batch["sharp"])
            for k, v in vars(out).items():
                sums[k] = sums.get(k, 0.0) + v
            n_steps += 1
            global_step += 1
            n_images += batch["blur"].shape[0]
            if rank == 0 and time.perf_counter() - shown > PROGRESS_EVERY_S:  # long epochs show progress
                shown = time.perf_counter()
                print(f"epoch {epoch + 1}/{cfg.train.epochs}  step {n_steps}  {(shown - t0) / n_steps:.2f} s/step  "
                      f"loss_g {sums['loss_g'] / n_steps:.4f}")
        if n_steps == 0:
            raise ValueError(f"{cfg.data.uri}: no training batch of {cfg.data.batch_size} for this worker (split too small)")
        seconds = time.perf_counter() - t0
        losses = _mean_across_workers({k: v / n_steps for k, v in sums.items()}, device)
        epoch_metrics: dict[str, Any] = {
            "epoch": epoch,
            "step": global_step,
            **losses,
            "lr_g": step.opt_g.param_groups[0]["lr"],
            "images_per_s": n_images * ctx.get_world_size() / seconds,
            "epoch_seconds": seconds,
            "workers": ctx.get_world_size(),
            "nodes": num_nodes,
            "ddp_param_spread": _param_spread([g, d], device),
        }
        last = epoch == cfg.train.epochs - 1
        if (epoch + 1) % cfg.train.val_every and not last:
            if runlog:
                runlog.log(epoch_metrics)
            ray.train.report(epoch_metrics, checkpoint=None)
            continue
        if rank == 0:
            val, images = validate(cfg, g, device)
            epoch_metrics.update(val)
            runlog.log(epoch_metrics, images)
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, cfg, g, d, step, epoch, global_step, epoch_metrics)
                ray.train.report(epoch_metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"epoch-{epoch:04d}")
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs}  loss_g {losses['loss_g']:.4f}  loss_d {losses['loss_d']:.4f}  "
                f"val PSNR {val['val_psnr']:.2f} dB (input {val['val_psnr_input']:.2f})  SSIM {val['val_ssim']:.4f}  "
                f"{epoch_metrics['images_per_s']:.1f} img/s"
            )
        else:
            ray.train.report(epoch_metrics, checkpoint=None)
    if runlog:
        runlog.close()
