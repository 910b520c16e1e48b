"""`evaluate()`: score a model on pairs (locally or over a Ray actor pool) and write the report."""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from .. import storage
from ..cluster_paths import check_shared
from ..inference import (
    BACKENDS,
    Precision,
    check_engine_choice,
    check_engine_request,
    load_engine,
)
from ..metrics import LPIPS
from ..models.reference import resolve_checkpoint
from ..options import Strict
from ..pretrained import PretrainedWeightsMissing
from ..ray_env import (
    ActorPool,
    GpuRequest,
    actor_pool,
    actor_start_errors,
    check_actors_fit,
    init_ray,
    resolve_actor_gpus,
    worker_device,
)
from .protocols import PROTOCOLS, describe
from .report import keys_to_show, real_photo_grids, training_curves, write_report
from .scoring import Scorer, score_locally, summarise
from .sources import open_source


def _run_dir(model_uri: str) -> str | None:
    """The training run a checkpoint came from (for its curves), when it came from one."""
    try:
        path = resolve_checkpoint(model_uri)
    except Exception:  # a compiled folder: its compile.json names the checkpoint
        return None
    for candidate in (path.rsplit("/", 2)[0], path.rsplit("/", 3)[0]):
        if storage.exists(storage.join(candidate, "metrics.jsonl")):
            return candidate
    return None


class EvalOptions(Strict):
    """What an evaluation scores and how; checked before any model loads or Ray starts."""

    model: str = Field("default", description="checkpoint, run dir, compiled folder or shipped model name")
    out: str = Field("report", description="report folder (local or s3://)")
    data: str | None = Field(None, description="prepared shards or a paired blur/ sharp/ folder")
    dataset: Literal["gopro", "realblur", "paired"] | None = None
    root: str | None = Field(None, description="the dataset folder for `dataset`")
    variant: Literal["J", "R"] = Field("J", description="RealBlur-J or RealBlur-R")
    split: str | None = Field(None, description="default: test, else val")
    protocol: Literal[PROTOCOLS] = "gopro"
    engine: Literal[BACKENDS] = "auto"
    precision: Precision = None
    lpips: bool = True
    lpips_weights: str | None = Field(None, description="torchvision AlexNet ImageNet weights file")
    lpips_random: bool = Field(False, description="random AlexNet features when the weights are missing (labelled)")
    workers: int = Field(0, ge=0, description="N > 0: score on N Ray actors")
    gpus_per_worker: GpuRequest = Field(
        "auto", description="GPUs per actor (0: the actors run on CPUs; auto: 1 where the Ray cluster has GPUs)"
    )
    limit: int | None = Field(None, ge=1)
    progress: bool = True
    real: str | None = Field(None, description="real blurred photos without a sharp truth, shown in the report")
    real_limit: int = Field(12, ge=1)
    real_compare: list[str] = Field(
        default_factory=list, description="other models drawn beside this one in the real-photo grids"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "EvalOptions":
        check_engine_choice(self.engine, self.precision)
        if not self.data and not (self.dataset and self.root):
            raise ValueError("give data (shards or a paired folder), or dataset with root")
        if self.gpus_per_worker not in (0, "auto") and not self.workers:
            raise ValueError("gpus_per_worker is for the Ray actors: give workers too")
        return self


def evaluate(
    model: str = "default", out: str = "report", engine_factory: Callable[[], Any] | None = None, **options: Any
) -> dict[str, Any]:
    """Score `model` on the pairs and write the report under `out`; returns metrics.json's content.

    `options` are EvalOptions' fields; `engine_factory` replaces `load_engine` (tests score reference engines)."""
    o = EvalOptions.parse({"model": model, "out": out, **options}, "evaluation")
    if o.workers:
        o = _ready_actors(o, check=engine_factory is None)
    # With actors, the driver (a cluster's CPU head, say) loads an engine only to draw the real photos, and then
    # on its CPU in fp32 (what any machine runs; the header names it): the actors' fp16, TensorRT or GPU need
    # not be there.
    if not o.workers:
        here = partial(load_engine, o.model, o.engine, precision=o.precision)
    else:
        here = partial(load_engine, o.model, "auto" if o.engine == "tensorrt" else o.engine, "cpu")
    probe = (engine_factory or here)() if not o.workers or o.real else None
    factory = engine_factory or partial(_worker_engine, o.model, o.engine, o.precision)
    folder_options = {"variant": o.variant} if o.dataset == "realblur" else {}
    source = open_source(o.data, o.dataset, o.root, o.split, o.limit, **folder_options)
    try:
        metric = LPIPS("alex", o.lpips_weights, allow_random_weights=o.lpips_random) if o.lpips else None
    except PretrainedWeightsMissing as e:
        raise PretrainedWeightsMissing(
            f"{e} For evaluation: --lpips-weights FILE, --no-lpips, or --lpips-random "
            "(random AlexNet features, labelled as such)"
        ) from None
    actors = ""
    if o.workers > 0:
        # on a cluster at most `workers` actors, as many as fit at first, more as nodes join (`actor_pool`)
        pool = actor_pool(o.workers, 1.0, o.gpus_per_worker, source.total or o.workers)
        records, engines, hashes = _score_with_ray(factory, source, o, pool)
        count = f"{pool.most}" if pool.initial == pool.most else f"{pool.initial} to {pool.most} (as nodes join)"
        actors = f"{count} Ray actor{'s' if pool.most != 1 else ''}, {o.gpus_per_worker:g} GPU each"
    else:
        scorer = Scorer(lambda: probe, o.out, o.protocol, metric)
        records = score_locally(scorer, source.rows(), source.total, o.progress)
        engines, hashes = [_engine_label(probe.info)], [probe.info.model_hash]
    summary = summarise(records)
    header = {
        "model": o.model,
        "engine": ", ".join(engines) or "none ran (no images)",  # what scored the images
        **({"actors": actors} if actors else {}),
        "model hash": ", ".join(hashes) or "none ran (no images)",
        **({"real photos drawn by": _engine_label(probe.info)} if o.real and o.workers else {}),
        "data": o.data or f"{o.dataset} at {o.root}",
        "images": len(records),
        "protocol": o.protocol,
        "convention": describe(o.protocol),
        "LPIPS": metric.label if metric else "not computed",
        "baselines": "unsharp mask (x + 0.6 (x - G_2 x)); Wiener with the true kernel where the data records it",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    run_dir = _run_dir(o.model)
    curves = training_curves(storage.join(run_dir, "metrics.jsonl")) if run_dir else None
    # the models compared with run where the real photos are drawn: the driver, on its CPU in fp32 when actors score
    others = {m: load_engine(m, "auto", "cpu" if o.workers else None) for m in o.real_compare} if o.real else {}
    real_grids = real_photo_grids(probe, o.real, o.out, o.real_limit, others) if o.real else []
    columns = " | ".join(["blurred", "unsharp mask", *others, f"model ({o.model})"])
    shown = keys_to_show(records)
    files = write_report(
        o.out,
        header,
        records,
        summary,
        source.rows_for(set(shown)),
        curves,
        real=real_grids,
        shown=shown,
        real_columns=columns,
    )
    return {"header": header, "summary": summary, "images": records, "files": files}


def _worker_engine(model: str, engine: str, precision: str | None) -> Any:
    """The engine on an evaluation actor: on the device Ray gave it (the CPU when it gave no GPU)."""
    return load_engine(model, engine, worker_device(), precision=precision)


def _ready_actors(o: EvalOptions, check: bool) -> EvalOptions:
    """Ray joined or started, the job's paths checked on every node (`check_shared`), `gpus_per_worker` resolved
    ("auto": `actor_gpus`), and what the actors could never run refused in one line first (`check`: a model
    reference of our own)."""
    if check:  # fp16 or TensorRT for actors given no GPU: one line, before Ray where the GPUs are known
        check_engine_request(o.model, o.engine, o.precision, gpus=o.gpus_per_worker)
    where = init_ray(announce=True)
    check_shared(
        reads={"--model": o.model, "--data": o.data, "--root": o.root, "--lpips-weights": o.lpips_weights},
        writes={"--out": o.out},
    )
    gpus = resolve_actor_gpus(o.gpus_per_worker, o.engine, o.precision, where)
    if where == "local":  # no autoscaler: actors asking for GPUs this machine lacks would wait forever
        check_actors_fit({"GPU": (f"--gpus-per-worker {gpus:g}", gpus)})
    return o.model_copy(update={"gpus_per_worker": gpus})


def _engine_label(info: Any) -> str:
    return f"{info.backend} ({info.device}, {info.precision})"


def _score_with_ray(
    factory: Callable[[], Any], source: Any, o: EvalOptions, pool: ActorPool
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Spread the images over a Ray cluster: an actor pool, each actor holding one engine and LPIPS. Returns the
    records, and the engines the actors ran (on their nodes' devices, which the driver's may not be) and their
    models' hashes."""

    class RayScorer(Scorer):
        def __init__(self):
            metric = LPIPS("alex", o.lpips_weights, allow_random_weights=o.lpips_random) if o.lpips else None
            super().__init__(factory, o.out, o.protocol, metric)

        def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
            info = self.engine.info
            return self.score_row(row) | {"engine": _engine_label(info), "model_hash": info.model_hash}

    ds = source.ray_dataset().map(RayScorer, compute=pool.strategy(), num_gpus=o.gpus_per_worker or None)
    with actor_start_errors("the scorer (engine and LPIPS)"):
        records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in ds.iter_rows()]
    engines = sorted({str(r.pop("engine")) for r in records})
    hashes = sorted({str(r.pop("model_hash")) for r in records})
    return sorted(records, key=lambda r: str(r["key"])), engines, hashes
