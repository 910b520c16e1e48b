"""Deblur an archive with Ray Data: list → (skip what is done) → actors holding the engine read, decode,
deblur, encode and write each image → the driver only tallies small result rows. Videos in the archive go
through `deblur.video` (segments in parallel, then joined) with the same resume, error list and summary.

Every decoded image gets a blur score (`deblur.metrics.blur_score`, in `_blur.jsonl` and the summary);
with `only_blurred` set, images scoring below it are copied through instead of deblurred (most photos in a
real archive are sharp). Resumable by construction: every output is written whole (temporary name + rename locally, one PUT on
S3), so an output that exists is complete and a re-run skips it. A file that fails is recorded in
`_errors.jsonl` with its reason and the run goes on.
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any, Literal

import numpy as np
import ray
from pydantic import Field, model_validator

from .. import storage, video
from ..imagefile import EXTENSIONS, FORMATS, PNG_COMPRESSION, BadImage, decode, encode, output_format
from ..inference import BACKENDS, Precision, check_engine_choice, load_engine
from ..metrics import blur_score
from ..options import Strict
from ..progress import bar as progress_bar
from ..ray_env import WorkerStartError, actor_gpus, actor_pool, actor_start_errors, worker_device
from ..video import VideoOptions
from .sources import list_inputs, read_input

ERRORS, SUMMARY, BLUR = "_errors.jsonl", "_summary.json", "_blur.jsonl"


#: the default --only-blurred threshold, measured on ../shared/data: 0.35 deblurs all 48 Köhler photos and 95
#: of Lai's 100 real-blur photos, and copies 62 of CBSD68's 68 and 11 of McMaster18's 18 sharp photos through
#: (they score 0.16-0.46)
SHARP_BELOW = 0.35


class Options(Strict):
    """What the archive job does with each file; checked when built (`Options.parse` for a one-line error)."""

    model: str = Field("default", description="checkpoint, run dir, compiled folder or shipped model name")
    engine: Literal[BACKENDS] = "auto"
    precision: Precision = None
    format: Literal["same", "png", "jpg", "webp"] = "same"
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    max_pixels: int = Field(100_000_000, ge=1, description="larger images are refused (decompression bombs)")
    threads: int | None = Field(None, ge=1, description="engine threads per actor")
    #: deblur only images whose `blur_score` reaches this; sharper ones are copied through (None: deblur all)
    only_blurred: float | None = Field(None, gt=0, lt=1)
    png_compression: int = Field(PNG_COMPRESSION, ge=0, le=9)
    video: VideoOptions = Field(default_factory=VideoOptions)

    @model_validator(mode="after")
    def _engine_choice(self):
        check_engine_choice(self.engine, self.precision)
        return self


def output_rel(rel: str, fmt: str, video_codec: str = "h264") -> str:
    """The output's relative path: the input's, with the extension changed only when the format is (videos:
    the codec's container, `clip.mov` → `clip.mp4`)."""
    if video.is_video(rel):
        return video.video_rel(rel, video_codec)
    if fmt == "same":
        return rel
    stem, ext = posixpath.splitext(rel)
    target = output_format(fmt, "PNG")
    return rel if FORMATS.get(ext.lower().lstrip(".")) == target else stem + EXTENSIONS[target]


def plan_outputs(
    items: list[dict[str, Any]], fmt: str, video_codec: str = "h264"
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Give every input its output name ("out"); (items, rejected).

    Changing the format can map two inputs to one name (`a.jpg` and `a.png` both → `a.png`): those that
    would collide keep their source extension (`a.jpg.png`), so no output overwrites another. An input
    that still collides (its kept name is another input's name too) is rejected with the reason.
    """
    by_out: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_out.setdefault(output_rel(it["rel"], fmt, video_codec), []).append(it)
    for out, group in by_out.items():
        for it in group:
            it["out"] = out if len(group) == 1 or it["rel"] == out else it["rel"] + posixpath.splitext(out)[1]
    taken: dict[str, str] = {}
    kept, rejected = [], []
    for it in sorted(items, key=lambda it: (it["out"] != it["rel"], it["rel"])):  # unchanged names win
        if it["out"] in taken:
            rejected.append(
                {"path": it["rel"], "reason": f"not deblurred: its output {it['out']} is also {taken[it['out']]}'s"}
            )
            continue
        taken[it["out"]] = it["rel"]
        kept.append(it)
    return sorted(kept, key=lambda it: it["rel"]), rejected


class ImageDeblurrer:
    """One per actor: loads the engine once, then handles batches of listing rows."""

    def __init__(self, options: Options, output: str):
        self.options, self.output = options, output
        self.engine = load_engine(
            options.model, options.engine, worker_device(), threads=options.threads, precision=options.precision
        )
        info = self.engine.info
        self.engine_name = f"{info.backend} {info.precision} ({info.device})"
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        rel = str(item["rel"])
        result = {
            "rel": rel,
            "status": "done",
            "reason": "",
            "bytes_in": 0,
            "bytes_out": 0,
            "seconds": 0.0,
            "blur": -1.0,
            "engine": self.engine_name,
            "route": "",  # a kernel-aware route's choice for this photo (deblur.kernel.route.Decision.label)
            "node": self.node,
            "started": time.time(),  # when this image's work began (the job's start-up ends at the earliest)
        }
        t0 = time.perf_counter()
        try:
            data = read_input(item)
            result["bytes_in"] = len(data)
            img = decode(data, rel, self.options.max_pixels)
            fmt = output_format(self.options.format, img.format)
            result["blur"] = score = blur_score(img.rgb)
            if self.options.only_blurred is not None and score < self.options.only_blurred:
                # sharp enough already: the file as it came, or its pixels re-encoded when the format changes
                payload = (
                    data
                    if fmt == img.format
                    else encode(img.rgb, img, fmt, self.options.quality, self.options.png_compression)
                )
                storage.write_bytes(storage.join(self.output, item["out"]), payload)
                result.update(status="copied", bytes_out=len(payload), seconds=time.perf_counter() - t0)
                return result
            out = self.engine.deblur_image(img.rgb)
            if decisions := getattr(self.engine, "decisions", None):
                result["route"] = decisions[0].label
            payload = encode(out, img, fmt, self.options.quality, self.options.png_compression)
            storage.write_bytes(storage.join(self.output, item["out"]), payload)
            result["bytes_out"] = len(payload)
        except BadImage as e:
            result.update(status="failed", reason=str(e))
        except Exception as e:  # a model or storage failure on one file must not stop the archive
            result.update(
                status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            )
        result["seconds"] = time.perf_counter() - t0
        return result

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        """Ray Data `map` form: one listing row in, one result row out."""
        return self.process(item)


def pending(items: list[dict[str, Any]], output: str) -> tuple[list[dict[str, Any]], int]:
    """Drop inputs whose output already exists (written whole, so complete); returns (todo, skipped)."""
    fs, path = storage.filesystem(output)
    done = set()
    if fs.exists(path):
        done = {posixpath.relpath(p, path) for p in fs.find(path)}
    todo = [it for it in items if it["out"] not in done]
    return todo, len(items) - len(todo)


def deblur_archive(
    input_uri: str,
    output: str,
    options: Options,
    workers: int | None = None,
    gpus_per_worker: float | str = 0.0,
    cpus_per_worker: float = 1.0,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole job: list → skip what is done → images → videos → summary (also written to
    `output/_summary.json`, which is returned). `gpus_per_worker`: a number, or "auto"
    (`deblur.ray_env.actor_gpus`; deblur bulk's default). `workers`: the most engine actors on a cluster, the
    exact number on a Ray of the job's own (None: `deblur.ray_env.actor_pool`'s default)."""
    t0 = time.time()
    gpus_per_worker = actor_gpus(gpus_per_worker)
    options = Options.parse(options, "bulk options")
    storage.remove_partial_writes(output)  # left by a worker killed mid-write; the file itself is redone
    items, rejected = list_inputs(input_uri)
    items, collisions = plan_outputs(items, options.format, options.video.codec)
    todo, skipped = pending(items, output)
    images = [it for it in todo if not video.is_video(it["rel"])]
    videos = [it for it in todo if video.is_video(it["rel"])]
    tally = _deblur_images(images, output, options, workers, gpus_per_worker, cpus_per_worker, progress)
    video_outputs = {it["out"] for it in items if video.is_video(it["rel"])}
    video.drop_leftovers(output, video_outputs - {v["out"] for v in videos})
    clips = _deblur_videos(videos, output, options, workers, gpus_per_worker, cpus_per_worker, progress, bool(images))
    errors = rejected + collisions + tally["errors"] + clips["errors"]
    _append_lines(output, ERRORS, errors)
    _append_lines(output, BLUR, tally["scores"])
    wall = time.time() - t0
    listed_videos = len(video_outputs)
    blur = [s["blur"] for s in tally["scores"]]
    summary = {
        "input": input_uri,
        "output": output,
        "model": options.model,
        "engines": sorted(tally["engines"]),
        "routes": dict(sorted(tally["routes"].items())),  # empty unless the model is a kernel-aware route
        "nodes": dict(sorted(tally["nodes"].items())),  # Ray node id → images its actors deblurred
        "workers": max(tally["pool"], clips.get("pool", 0)),  # the most actors a stage could run
        "gpus_per_worker": gpus_per_worker,
        "images": len(items) + len(rejected) + len(collisions) - listed_videos,
        "done": tally["done"],
        "skipped": skipped - (listed_videos - len(videos)),
        "failed": len(errors),
        "copied_sharp": tally["copied"],
        "bytes_in": tally["bytes_in"],
        "bytes_out": tally["bytes_out"],
        "wall_seconds": round(wall, 2),
        "images_per_second": round(tally["done"] / wall, 3) if wall else 0.0,
        "worker_seconds": round(tally["seconds"], 2),
        # until the first image began: clearing partial writes, listing the input and the output, Ray Data's
        # plan and the actors' start (process, imports, engine); the fixed cost of a run, which weighs on a
        # short archive and fades on a long one
        "start_up_seconds": round(tally["first_started"] - t0, 2) if tally["first_started"] else None,
        "errors_file": storage.join(output, ERRORS) if errors else None,
        "blur": {
            "only_blurred": options.only_blurred,
            "scored": len(blur),
            "quantiles": dict(zip(("p10", "p50", "p90"), np.percentile(blur, [10, 50, 90]).round(4).tolist()))
            if blur
            else {},
            "scores_file": storage.join(output, BLUR) if blur else None,
        },
        "videos": {"listed": listed_videos, "skipped": listed_videos - len(videos)}
        | {k: clips[k] for k in ("done", "failed", "frames", "segments", "seconds")}
        | {"temporal": options.video.temporal, "codec": options.video.codec},
    }
    storage.write_text(storage.join(output, SUMMARY), json.dumps(summary, indent=2))
    return summary


def _deblur_images(
    todo: list[dict[str, Any]],
    output: str,
    options: Options,
    workers: int | None,
    gpus_per_worker: float,
    cpus_per_worker: float,
    progress: bool,
) -> dict[str, Any]:
    """The images through an actor pool; the driver only tallies the small result rows."""
    tally: dict[str, Any] = {
        "done": 0,
        "copied": 0,
        "failed": 0,
        "bytes_in": 0,
        "bytes_out": 0,
        "seconds": 0.0,
        "errors": [],
        "scores": [],
        "first_started": None,  # when the earliest image began (rows carry their start; a block may hold many)
        "engines": set(),  # what the actors ran: backend, precision, device
        "routes": {},  # a kernel-aware route's choices (deblur.kernel.route): reason → images
        "pool": 0,
        "nodes": {},  # images per node that deblurred them
    }
    if not todo:
        return tally
    pool = actor_pool(workers, cpus_per_worker, gpus_per_worker, len(todo))
    tally["pool"] = pool.most
    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 10_000)))
    ds = ds.map(
        ImageDeblurrer,
        fn_constructor_args=(options, output),
        # no more actors than images: each would start a process and load the engine for nothing
        compute=pool.strategy(),
        num_gpus=gpus_per_worker or None,
        num_cpus=cpus_per_worker,
    )
    with (
        actor_start_errors("the engine"),
        progress_bar(len(todo), "deblurring", "img", enabled=progress) as bar,
    ):
        for row in ds.iter_rows():
            started = float(row["started"])
            tally["first_started"] = min(tally["first_started"] or started, started)
            tally[row["status"]] += 1
            tally["engines"].add(row["engine"])
            if row["route"]:
                tally["routes"][row["route"]] = tally["routes"].get(row["route"], 0) + 1
            tally["nodes"][row["node"]] = tally["nodes"].get(row["node"], 0) + 1
            tally["bytes_in"] += int(row["bytes_in"])
            tally["bytes_out"] += int(row["bytes_out"])
            tally["seconds"] += float(row["seconds"])
            if row["status"] == "failed":
                tally["errors"].append({"path": row["rel"], "reason": row["reason"]})
            if row["blur"] >= 0:
                tally["scores"].append(
                    {"path": row["rel"], "blur": round(float(row["blur"]), 4), "status": row["status"]}
                    | ({"route": row["route"]} if row["route"] else {})
                )
            bar.update(1)
    return tally


def _deblur_videos(
    videos: list[dict[str, Any]],
    output: str,
    options: Options,
    workers: int | None,
    gpus_per_worker: float,
    cpus_per_worker: float,
    progress: bool,
    images_ran: bool,
) -> dict[str, Any]:
    """The videos through `deblur.video`; a failure of the whole stage becomes one error row per video, so the
    images' results and errors are still written (`images_ran`; without images, an engine the workers cannot
    load ends the job on one line)."""
    try:
        return video.deblur_videos(
            videos,
            output,
            options.model,
            options.engine,
            options.video,
            workers,
            gpus_per_worker,
            cpus_per_worker,
            options.threads,
            progress,
            precision=options.precision,
        )
    except Exception as e:
        if isinstance(e, WorkerStartError) and not images_ran:
            raise  # no engine loads on the workers and nothing else ran: one line for the job, as for images
        return {
            "done": 0,
            "failed": len(videos),
            "frames": 0,
            "segments": 0,
            "seconds": 0.0,
            "errors": [
                {"path": v["rel"], "reason": f"{v['rel']}: the video stage failed ({type(e).__name__}: {str(e)[:200]})"}
                for v in videos
            ],
        }


def _append_lines(output: str, name: str, rows: list[dict[str, Any]]) -> None:
    """This run's rows appended to an earlier run's file (errors: a failed file is retried by the next run;
    blur scores: a resumed run scores only what it processed)."""
    if not rows:
        return
    uri = storage.join(output, name)
    old = storage.read_text(uri) if storage.exists(uri) else ""
    storage.write_text(uri, old + "".join(json.dumps(r) + "\n" for r in rows))
