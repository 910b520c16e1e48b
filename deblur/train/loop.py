"""The per-worker training loop that Ray Train runs on every worker (`train_loop_per_worker`).

It reads as its stages: `set_up` (models, optimisers, and the checkpoint a resumed run continues from),
then each epoch `train_epoch` (GAN steps over this worker's batches), `validate` on rank 0 (full-resolution
PSNR/SSIM of output and blurred input over the val split) and `report` (metrics.jsonl, the epoch line, and
the metrics and checkpoint handed to Ray Train). `train_epoch` and `validate` take their batches and rows
as arguments, so both run, and are tested, without Ray. A restarted worker, or a resubmitted run of the same
name, resumes from the latest checkpoint Ray Train hands back: the epoch counter continues and at most one
epoch is lost.
"""

from __future__ import annotations

import io
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from .. import metrics
from ..config import Config
from ..images import to_image, to_model_range
from ..models import build_critic, build_generator, generator_checkpoint
from ..models.common import to_device, tune_cuda, unwrap
from ..models.reference import CHECKPOINT_FILE
from .step import GANStep

PROGRESS_EVERY_S = 120.0

#: validate()'s names for `metrics.score_methods`' output-vs-input numbers (metrics.jsonl, checkpoints, best.json)
VAL_METRICS = {
    "output_psnr": "val_psnr",
    "output_ssim": "val_ssim",
    "input_psnr": "val_psnr_input",
    "input_ssim": "val_ssim_input",
    "gain_psnr": "val_psnr_gain",
}


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
    total = torch.tensor(
        sum(float(p.detach().double().sum()) for m in models for p in m.parameters()),
        device=device,
        dtype=torch.float64,
    )
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


def save_checkpoint(
    path: str, cfg: Config, g, d, step: GANStep, epoch: int, global_step: int, epoch_metrics: dict
) -> None:
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
def validate(
    rows: Iterable[dict[str, Any]], g, device: torch.device, log_images: int = 0, what: str = "validation rows"
) -> tuple[dict[str, float], list[tuple[str, np.ndarray]]]:
    """Mean PSNR/SSIM (gopro convention, `metrics.score_methods`) of the output and of the blurred input
    over `rows` ({"key", "blur", "sharp"}, float 3×H×W in [-1, 1], as `eval_dataset` yields them), and the
    first `log_images` as blurred | output | sharp strips for TensorBoard. `what` names the rows in the
    error an empty split raises."""
    model = unwrap(g).eval()
    scores, images = [], []
    for i, row in enumerate(rows):
        blur = torch.from_numpy(np.array(row["blur"], dtype=np.float32))[None].to(device)  # a copy: rows are read-only
        output, blurred, sharp = to_image(model(blur)[0]), to_image(row["blur"]), to_image(row["sharp"])
        scores.append(metrics.score_methods({"output": output, "input": blurred}, sharp))
        if i < log_images:
            images.append((f"val/{row['key']}", np.concatenate([blurred, output, sharp], axis=1)))
    if not scores:
        raise ValueError(f"{what} is empty")
    result: dict[str, float] = {name: float(np.mean([s[key] for s in scores])) for key, name in VAL_METRICS.items()}
    result["val_images"] = len(scores)
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
            for batch in shard.iter_torch_batches(
                batch_size=cfg.data.batch_size,
                drop_last=True,
                device=device,
                local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                pin_memory=device.type == "cuda",
            ):
                yield {k: to_model_range(v) for k, v in batch.items()}

        return streamed, cfg.train.steps_per_epoch
    from ..data.pipeline import CropStream

    rows, total = [], 0
    for total, row in enumerate(shard.iter_rows(), 1):
        if (total - 1) % world == rank:
            rows.append(row)
    stream = CropStream(
        rows,
        cfg.data.crop,
        cfg.data.batch_size,
        cfg.data.crops_per_pair,
        cfg.data.blur,
        seed=None if cfg.train.seed is None else cfg.train.seed * 1000 + rank,
    )
    steps = total // world * cfg.data.crops_per_pair // cfg.data.batch_size
    if cfg.train.steps_per_epoch:
        steps = min(steps, cfg.train.steps_per_epoch)

    def batches(epoch: int):
        for batch in stream.epoch(epoch):  # uint8 crosses to the device, then becomes [-1, 1] there
            yield {k: to_model_range(to_device(torch.from_numpy(v), device)) for k, v in batch.items()}

    return batches, steps


@dataclass
class WorkerState:
    """What set-up hands to every epoch on one worker: its place in the group, the (DDP-wrapped) models
    and their step, where a resumed run continues, and rank 0's run log."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    g: torch.nn.Module
    d: torch.nn.Module
    step: GANStep
    start_epoch: int
    global_step: int
    nodes: int
    runlog: Any = None  # RunLog on rank 0


def initial_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """`model.init`'s generator weights (loaded with weights_only), refused in one line when its
    architecture is not the one the config builds: a silent partial load would train something else."""
    from ..models import load_generator
    from ..models.checkpoint import CheckpointError

    source = load_generator(cfg.model.init)
    target = build_generator(cfg.model.generator, **cfg.model.generator_kwargs)
    shapes = {k: tuple(v.shape) for k, v in source.state_dict().items()}
    if type(source) is not type(target) or shapes != {k: tuple(v.shape) for k, v in target.state_dict().items()}:
        raise CheckpointError(
            f"model.init {cfg.model.init!r} is a {type(source).__name__} of {sum(map(np.prod, shapes.values())):,.0f} "
            f"parameters, not the {cfg.model.generator} {cfg.model.generator_kwargs} this config trains"
        )
    return {k: v.float() for k, v in source.state_dict().items()}


def set_up(config: dict[str, Any]) -> WorkerState:
    """Models, optimisers and the run log for this worker, restored from Ray Train's latest checkpoint
    when there is one (a restarted worker or a resubmitted run continues where it stopped)."""
    cfg = Config.model_validate(config["cfg"])
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
    elif cfg.model.init:
        g.load_state_dict(initial_weights(cfg))
        if rank == 0:
            print(f"generator initialised from {cfg.model.init}")
    # channels-last, as the engines run: oneDNN (CPU) and cuDNN (tensor cores) convolve NHWC fastest
    g = ray.train.torch.prepare_model(g.to(memory_format=torch.channels_last))
    d = ray.train.torch.prepare_model(d.to(memory_format=torch.channels_last))
    step = GANStep(cfg, g, d, device)
    if state:
        step.load_state_dict(state["optim"])
        if rank == 0:
            print(f"resumed from epoch {start_epoch}/{cfg.train.epochs} (step {global_step})")
    runlog = None
    if rank == 0:
        from .runlog import RunLog

        runlog = RunLog(config["run_uri"])
    return WorkerState(
        cfg, rank, ctx.get_world_size(), device, g, d, step, start_epoch, global_step, _worker_nodes(), runlog
    )


@dataclass
class EpochStats:
    losses: dict[str, float]  # this worker's mean per step
    steps: int
    images: int
    seconds: float


def train_epoch(
    step: GANStep,
    batches: Iterable[dict[str, torch.Tensor]],
    epoch: int,
    global_step: int,
    steps_per_epoch: int | None = None,
    show_progress: bool = False,
) -> EpochStats:
    """GAN steps over `batches` ({"blur", "sharp"} in [-1, 1]), at most `steps_per_epoch`, the rates set
    for where the run is before each step; `show_progress` prints a line every PROGRESS_EVERY_S, which
    only long epochs reach."""
    cfg = step.cfg
    t0 = shown = time.perf_counter()
    sums: dict[str, float] = {}
    n_steps = n_images = 0
    for batch in batches:
        if steps_per_epoch and n_steps >= steps_per_epoch:
            break
        # the rate moves every step where an epoch's length is known (else once per epoch)
        step.set_progress(epoch + (n_steps / steps_per_epoch if steps_per_epoch else 0.0), global_step + n_steps)
        for k, v in vars(step(batch["blur"], batch["sharp"])).items():
            sums[k] = sums.get(k, 0.0) + v
        n_steps += 1
        n_images += batch["blur"].shape[0]
        if show_progress and time.perf_counter() - shown > PROGRESS_EVERY_S:
            shown = time.perf_counter()
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs}  step {n_steps}  {(shown - t0) / n_steps:.2f} s/step  "
                f"loss_g {sums['loss_g'] / n_steps:.4f}"
            )
    if n_steps == 0:
        raise ValueError(
            f"{cfg.data.uri}: no training batch of {cfg.data.batch_size} for this worker (split too small)"
        )
    return EpochStats({k: v / n_steps for k, v in sums.items()}, n_steps, n_images, time.perf_counter() - t0)


def epoch_metrics(w: WorkerState, epoch: int, stats: EpochStats) -> dict[str, Any]:
    """The epoch's numbers as every rank reports them: losses averaged over the workers (collective calls,
    so every rank makes them, in this order)."""
    losses = _mean_across_workers(stats.losses, w.device)
    return {
        "epoch": epoch,
        "step": w.global_step,
        **losses,
        "lr_g": w.step.opt_g.param_groups[0]["lr"],
        "images_per_s": stats.images * w.world / stats.seconds,
        "epoch_seconds": stats.seconds,
        "workers": w.world,
        "nodes": w.nodes,
        "ddp_param_spread": _param_spread([w.g, w.d], w.device),
    }


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    """The one line a user reads per epoch."""
    line = f"epoch {m['epoch'] + 1}/{epochs}  loss_g {m['loss_g']:.4f}  loss_d {m['loss_d']:.4f}"
    if "val_psnr" in m:
        line += (
            f"  val PSNR {m['val_psnr']:.2f} dB (input {m['val_psnr_input']:.2f}, {m['val_psnr_gain']:+.2f})"
            f"  SSIM {m['val_ssim']:.4f}"
        )
    return line + f"  {m['images_per_s']:.1f} img/s  {m['epoch_seconds']:.0f} s"


def report(
    w: WorkerState, m: dict[str, Any], images: list[tuple[str, np.ndarray]] = (), checkpoint: bool = False
) -> None:
    """Rank 0 appends to metrics.jsonl and TensorBoard, prints the epoch line and, after validation,
    hands Ray Train a checkpoint (kept or dropped by val_psnr); every rank reports, as Ray Train expects."""
    if w.rank != 0:
        ray.train.report(m, checkpoint=None)
        return
    w.runlog.log(m, images)
    if checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, w.cfg, w.g, w.d, w.step, m["epoch"], w.global_step, m)
            ray.train.report(
                m, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"epoch-{m['epoch']:04d}"
            )
    else:
        ray.train.report(m, checkpoint=None)
    print(epoch_line(m, w.cfg.train.epochs))


def train_loop(config: dict[str, Any]) -> None:
    w = set_up(config)
    cfg = w.cfg
    batches_of, steps_per_epoch = _training_batches(cfg, w.rank, w.world, w.device)
    for epoch in range(w.start_epoch, cfg.train.epochs):
        stats = train_epoch(w.step, batches_of(epoch), epoch, w.global_step, steps_per_epoch, show_progress=w.rank == 0)
        w.global_step += stats.steps
        m = epoch_metrics(w, epoch, stats)
        validating = (epoch + 1) % cfg.train.val_every == 0 or epoch == cfg.train.epochs - 1
        images: list[tuple[str, np.ndarray]] = []
        if validating and w.rank == 0:
            rows = itertools.islice(ray.train.get_dataset_shard("val").iter_rows(), cfg.data.val_max_images)
            val, images = validate(
                rows,
                w.g,
                w.device,
                cfg.train.log_images,
                what=f"{cfg.data.uri}: validation split {cfg.data.val_split!r}",
            )
            m.update(val)
        report(w, m, images, checkpoint=validating)
    if w.runlog:
        w.runlog.close()
