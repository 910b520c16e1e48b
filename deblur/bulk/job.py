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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import storage, video
from ..metrics import blur_score
from .imagefile import EXTENSIONS, FORMATS, PNG_COMPRESSION, BadImage, decode, encode, output_format
from .sources import list_inputs, read_input

ERRORS, SUMMARY, BLUR = "_errors.jsonl", "_summary.json", "_blur.jsonl"


@dataclass
class Options:
    model: str
    engine: str = "auto"
    format: str = "same"
    quality: int = 95
    max_pixels: int = 100_000_000
    threads: int | None = None
    #: deblur only images whose `blur_score` reaches this; sharper ones are copied through (None: deblur all)
    only_blurred: float | None = None
    png_compression: int = PNG_COMPRESSION
    video: video.VideoOptions = field(default_factory=video.VideoOptions)


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


def plan_outputs(items: list[dict[str, Any]], fmt: str, video_codec: str = "h264") -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
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
            rejected.append({"path": it["rel"], "reason": f"not deblurred: its output {it['out']} is also {taken[it['out']]}'s"})
            continue
        taken[it["out"]] = it["rel"]
        kept.append(it)
    return sorted(kept, key=lambda it: it["rel"]), rejected


class Deblurrer:
    """One per actor: loads the engine once, then handles batches of listing rows."""

    def __init__(self, options: Options, output: str):
        from ..inference import load_engine

        self.options, self.output = options, output
        self.engine = load_engine(options.model, options.engine, threads=options.threads)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        rel = str(item["rel"])
        result = {"rel": rel, "status": "done", "reason": "", "bytes_in": 0, "bytes_out": 0, "seconds": 0.0, "blur": -1.0}
        t0 = time.perf_counter()
        try:
            data = read_input(item)
            result["bytes_in"] = len(data)
            img = decode(data, rel, self.options.max_pixels)
            fmt = output_format(self.options.format, img.format)
            result["blur"] = score = blur_score(img.rgb)
            if self.options.only_blurred is not None and score < self.options.only_blurred:
                # sharp enough already: the file as it came, or its pixels re-encoded when the format changes
                payload = data if fmt == img.format else encode(img.rgb, img, fmt, self.options.quality, self.options.png_compression)
                storage.write_bytes(storage.join(self.output, item["out"]), payload)
                result.update(status="copied", bytes_out=len(payload), seconds=time.perf_counter() - t0)
                return result
            if img.rgb.dtype == np.uint16:
                x = img.rgb.transpose(2, 0, 1)[None].astype(np.float32) / 32767.5 - 1.0
                y = self.engine.run(x)[0].transpose(1, 2, 0)
                out = np.clip(np.rint((y + 1.0) * 32767.5), 0, 65535).astype(np.uint16)
            else:
                out = self.engine.deblur_image(img.rgb)
            payload = encode(out, img, fmt, self.options.quality, self.options.png_compression)
            storage.write_bytes(storage.join(self.output, item["out"]), payload)
            result["bytes_out"] = len(payload)
        except BadImage as e:
            result.update(status="failed", reason=str(e))
        except Exception as e:  # a model or storage failure on one file must not stop the archive
            result.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
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


def run(input_uri: str, output: str, options: Options, workers: int = 1, gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0, progress: bool = True) -> dict[str, Any]:
    """The whole job; returns the summary also written to `output/_summary.json`."""
    import ray
    from tqdm import tqdm

    t0 = time.time()
    output_format(options.format, "PNG")  # a bad --format or video option fails here, not per file
    options.video.check()
    storage.remove_partial_writes(output)  # left by a worker killed mid-write; the file itself is redone
    items, rejected = list_inputs(input_uri)
    items, collisions = plan_outputs(items, options.format, options.video.codec)
    errors: list[dict[str, str]] = rejected + collisions
    listed = len(items) + len(errors)
    todo, skipped = pending(items, output)
    videos = [it for it in todo if video.is_video(it["rel"])]
    listed_videos = sum(video.is_video(it["rel"]) for it in items)
    todo = [it for it in todo if not video.is_video(it["rel"])]
    counts = {"done": 0, "copied": 0, "failed": len(errors)}
    scores: list[dict[str, Any]] = []
    bytes_in = bytes_out = 0
    compute_s = 0.0
    if todo:
        ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 10_000)))
        ds = ds.map(
            Deblurrer, fn_constructor_args=(options, output), compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
            num_gpus=gpus_per_worker or None, num_cpus=cpus_per_worker,
        )
        with tqdm(total=len(todo), desc="deblurring", unit="img", disable=not progress) as bar:
            for row in ds.iter_rows():
                counts[row["status"]] += 1
                bytes_in += int(row["bytes_in"])
                bytes_out += int(row["bytes_out"])
                compute_s += float(row["seconds"])
                if row["status"] == "failed":
                    errors.append({"path": row["rel"], "reason": row["reason"]})
                if row["blur"] >= 0:
                    scores.append({"path": row["rel"], "blur": round(float(row["blur"]), 4), "status": row["status"]})
                bar.update(1)
    video.drop_leftovers(output, {it["out"] for it in items if video.is_video(it["rel"])} - {v["out"] for v in videos})
    try:
        clips = video.run(videos, output, options.model, options.engine, options.video, workers, gpus_per_worker,
                          cpus_per_worker, options.threads, progress)
    except Exception as e:  # the images' results and errors are still written below
        clips = {"done": 0, "failed": len(videos), "frames": 0, "segments": 0, "seconds": 0.0,
                 "errors": [{"path": v["rel"], "reason": f"{v['rel']}: the video stage failed ({type(e).__name__}: {str(e)[:200]})"}
                            for v in videos]}
    errors += clips["errors"]
    counts["failed"] += clips["failed"]
    _append_lines(output, ERRORS, errors)
    _append_lines(output, BLUR, scores)
    wall = time.time() - t0
    blur = [s["blur"] for s in scores]
    summary = {
        "input": input_uri, "output": output, "model": options.model, "images": listed - listed_videos, "done": counts["done"],
        "skipped": skipped - (listed_videos - len(videos)), "failed": counts["failed"], "copied_sharp": counts["copied"], "bytes_in": bytes_in, "bytes_out": bytes_out,
        "wall_seconds": round(wall, 2), "images_per_second": round(counts["done"] / wall, 3) if wall else 0.0,
        "worker_seconds": round(compute_s, 2), "errors_file": storage.join(output, ERRORS) if errors else None,
        "blur": {"only_blurred": options.only_blurred, "scored": len(blur),
                 "quantiles": dict(zip(("p10", "p50", "p90"), np.percentile(blur, [10, 50, 90]).round(4).tolist())) if blur else {},
                 "scores_file": storage.join(output, BLUR) if blur else None},
        "videos": {"listed": listed_videos, "skipped": listed_videos - len(videos)}
        | {k: clips[k] for k in ("done", "failed", "frames", "segments", "seconds")}
        | {"temporal": options.video.temporal, "codec": options.video.codec},
    }
    storage.write_text(storage.join(output, SUMMARY), json.dumps(summary, indent=2))
    return summary


def _append_lines(output: str, name: str, rows: list[dict[str, Any]]) -> None:
    """This run's rows appended to an earlier run's file (errors: a failed file is retried by the next run;
    blur scores: a resumed run scores only what it processed)."""
    if not rows:
        return
    uri = storage.join(output, name)
    old = storage.read_text(uri) if storage.exists(uri) else ""
    storage.write_text(uri, old + "".join(json.dumps(r) + "\n" for r in rows))
