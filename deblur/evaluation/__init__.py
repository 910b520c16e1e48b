"""Evaluation: a checkpoint (or compiled model) on a test set → numbers comparable with the papers and a
report a person can look at. `evaluate()` is what `jobs/evaluate.py` runs."""
from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

from .. import storage
from ..pretrained import PretrainedWeightsMissing
from .protocols import PROTOCOLS, describe, score
from .run import Scorer, score_locally, summarise
from .sources import EmptyDatasetError, open_source


def _run_dir(model_uri: str) -> str | None:
    """The training run a checkpoint came from (for its curves), when it came from one."""
    from ..models.checkpoint import resolve_checkpoint

    try:
        path = resolve_checkpoint(model_uri)
    except Exception:  # a compiled folder: its compile.json names the checkpoint
        return None
    for candidate in (path.rsplit("/", 2)[0], path.rsplit("/", 3)[0]):
        if storage.exists(storage.join(candidate, "metrics.jsonl")):
            return candidate
    return None


def evaluate(
    model: str,
    out: str,
    data: str | None = None,
    dataset: str | None = None,
    root: str | None = None,
    split: str | None = None,
    protocol: str = "gopro",
    engine: str = "auto",
    lpips: bool = True,
    lpips_weights: str | None = None,
    lpips_random: bool = False,
    workers: int = 0,
    limit: int | None = None,
    progress: bool = True,
    engine_factory: Any = None,
    real: str | None = None,
    real_limit: int = 12,
    **options: Any,
) -> dict[str, Any]:
    """Score `model` on the pairs and write the report under `out`; returns metrics.json's content."""
    from ..inference import load_engine
    from ..metrics import LPIPS, describe_convention
    from .report import keys_to_show, real_photo_grids, training_curves, write_report

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    factory = engine_factory or partial(load_engine, model, engine)
    probe = factory()  # fail fast (and once) on a model that does not load
    source = open_source(data, dataset, root, split, limit, **options)
    try:
        metric = LPIPS("alex", lpips_weights, allow_random_weights=lpips_random) if lpips else None
    except PretrainedWeightsMissing as e:
        raise PretrainedWeightsMissing(f"{e} For evaluation: --lpips-weights FILE, --no-lpips, or --lpips-random "
                                       "(random AlexNet features, labelled as such)") from None
    if workers > 0:
        records = _score_with_ray(factory, source, out, protocol, lpips, lpips_weights, lpips_random, workers)
    else:
        scorer = Scorer(lambda: probe, out, protocol, metric)
        records = score_locally(scorer, source.rows(), source.total, progress)
    summary = summarise(records)
    header = {
        "model": model,
        "engine": f"{probe.info.backend} ({probe.info.device}, {probe.info.precision})",
        "model hash": probe.info.model_hash,
        "data": data or f"{dataset} at {root}",
        "images": len(records),
        "protocol": protocol,
        "convention": describe(protocol) if protocol == "realblur" else describe_convention(protocol),
        "LPIPS": metric.label if metric else "not computed",
        "baselines": "unsharp mask (x + 0.6 (x - G_2 x)); Wiener with the true kernel where the data records it",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    run = _run_dir(model)
    curves = training_curves(storage.join(run, "metrics.jsonl")) if run else None
    real_grids = real_photo_grids(probe, real, out, real_limit) if real else []
    shown = keys_to_show(records)
    files = write_report(out, header, records, summary, source.rows_for(set(shown)), curves, real=real_grids, shown=shown)
    return {"header": header, "summary": summary, "images": records, "files": files}


def _score_with_ray(factory, source, out, protocol, lpips, lpips_weights, lpips_random, workers) -> list[dict[str, Any]]:
    """Spread the images over a Ray cluster: an actor pool, each actor holding one engine and LPIPS."""
    import ray.data

    from ..metrics import LPIPS
    from ..ray_env import init_ray

    init_ray()

    class RayScorer(Scorer):
        def __init__(self):
            metric = LPIPS("alex", lpips_weights, allow_random_weights=lpips_random) if lpips else None
            super().__init__(factory, out, protocol, metric)

    ds = source.ray_dataset().map(RayScorer, compute=ray.data.ActorPoolStrategy(size=workers))
    records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in ds.iter_rows()]
    return sorted(records, key=lambda r: str(r["key"]))


__all__ = ["evaluate", "score", "PROTOCOLS", "EmptyDatasetError"]
