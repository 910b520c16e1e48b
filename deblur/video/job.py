"""Deblur videos with Ray Data: probe and split each video into segments → actors holding the engine decode,
deblur, stabilise and encode one segment each → a join task per video copies the segments' packets and the
source's audio into the output.

Segments are time ranges of presentation timestamps (see `media`), so they partition a video exactly. Each
starts `warmup` frames early to settle the temporal state; those frames are deblurred and dropped. Every
segment and every output is written whole (temporary name + rename, or one upload on S3), so a re-run skips
finished videos and reuses finished segments. A segment's name holds its pts range and a key of everything
that shaped it (the source's geometry and length, model, codec, quality, temporal mode, warm-up), so a re-run
with other settings or another split never reuses a segment that does not fit. A video that fails is
reported with its reason and the run goes on. Memory is a few frames per actor and a few packets per join.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict
from fractions import Fraction
from typing import Any

import ray
from pydantic import Field, model_validator

from .. import storage
from ..images import VIDEO_SUFFIXES
from ..inference import load_engine
from ..inference.load import model_fingerprint, network_of
from ..options import Strict
from ..progress import bar as progress_bar
from ..ray_env import actor_gpus, actor_pool, actor_start_errors, worker_device
from .media import (
    CODECS,
    PRESETS,
    BadVideo,
    SegmentWriter,
    VideoInfo,
    boundaries,
    frames,
    join,
    open_source,
    probe,
    video_stream,
)
from .temporal import Stabiliser

SEGMENTS = "_segments"
#: a video is split into at most this long segments, and into one per worker when shorter, but never below
#: MIN_SEGMENT_SECONDS (the warm-up would then cost more than the parallelism gains)
SEGMENT_SECONDS, MIN_SEGMENT_SECONDS = 10.0, 4.0
#: a video whose frames end this much before the end its container states is reported as truncated
#: (a second, or 5 % of a long video: trimmed files legitimately end a few frames early)
TRUNCATED_SECONDS, TRUNCATED_SHARE = 1.0, 0.05


class VideoOptions(Strict):
    """How videos are deblurred and encoded; checked when built (`VideoOptions.parse` for a one-line error)."""

    temporal: bool = True  # stabilise with optical flow (False: each frame deblurred on its own)
    codec: str = Field("h264", description="one of media.CODECS: h264/hevc in MP4, vp9 in WebM")
    crf: int = Field(18, ge=0, description="constant-quality factor of the encoder (lower: better and larger)")
    preset: str = Field("medium", description="x264/x265 speed preset (VP9 uses its own speed setting)")
    segment_seconds: float = Field(SEGMENT_SECONDS, ge=MIN_SEGMENT_SECONDS)
    #: frames decoded before each segment for the temporal state, then dropped: the stabiliser's memory
    #: fades as alpha^n (0.8^12 ≈ 7 % after 12 frames, less where its weights are below alpha)
    warmup: int = Field(12, ge=0)

    @model_validator(mode="after")
    def _codec_settings(self) -> "VideoOptions":
        if self.codec not in CODECS:
            raise ValueError(f"video codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        top = 63 if self.codec == "vp9" else 51
        if self.crf > top:
            raise ValueError(f"video crf must be within 0..{top} for {self.codec}, got {self.crf}")
        if self.preset not in PRESETS:
            raise ValueError(f"video preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        return self


def is_video(rel: str) -> bool:
    return rel.lower().endswith(VIDEO_SUFFIXES)


def video_rel(rel: str, codec: str) -> str:
    """The output's relative name: the input's, in the codec's container (`clip.mov` → `clip.mp4`)."""
    return posixpath.splitext(rel)[0] + "." + CODECS[codec][1]


def _info_from(row: dict[str, Any]) -> VideoInfo:
    d = json.loads(row["info"])
    return VideoInfo(**{**d, "rate": Fraction(d["rate"]), "time_base": Fraction(d["time_base"])})


def _info_json(info: VideoInfo) -> str:
    return json.dumps({**asdict(info), "rate": str(info.rate), "time_base": str(info.time_base)})


def segments_folder(output: str, out: str) -> str:
    return storage.join(output, SEGMENTS, out)


def _segment_uri(
    output: str,
    item: dict[str, Any],
    info: VideoInfo,
    options: VideoOptions,
    model_key: str,
    start: int | None,
    end: int | None,
    precision: str | None = None,
) -> str:
    shaped_by = [
        item["uri"],
        item["offset"],
        item["size"],
        _info_json(info),
        model_key,
        options.model_dump() | {"segment_seconds": 0},
    ]
    if precision is not None:
        shaped_by.append(precision)
    shaped_by = json.dumps(shaped_by)
    key = hashlib.sha256(shaped_by.encode()).hexdigest()[:12]
    ext = CODECS[options.codec][1]
    return storage.join(
        segments_folder(output, item["out"]),
        key,
        f"{'start' if start is None else start}-{'end' if end is None else end}.{ext}",
    )


def plan(
    item: dict[str, Any], options: VideoOptions, workers: int, model_key: str, output: str, precision: str | None = None
) -> list[dict[str, Any]]:
    """One row per segment of a video (or one row with the reason it cannot be read); a segment's file is named
    by everything that shapes its frames (the model by its content: `model_fingerprint`), so a resumed run reuses
    only segments made the way it would make them."""
    base = {"rel": item["rel"], "uri": item["uri"], "offset": item["offset"], "size": item["size"], "out": item["out"]}
    try:
        info = probe(item)
    except BadVideo as e:
        return [{**base, "error": str(e)}]
    except Exception as e:  # storage or library failures: reported for this video, the others go on
        return [{**base, "error": f"{item['rel']}: {_reason(e)}"}]
    length = max(MIN_SEGMENT_SECONDS, min(options.segment_seconds, info.seconds / max(1, workers)))
    starts = boundaries(info, length)
    bounds = list(zip([None] + starts[1:], starts[1:] + [None]))  # None: from the video's start, to its end
    return [
        {
            **base,
            "error": "",
            "k": k,
            "n": len(bounds),
            "start": -1 if s is None else s,
            "end": -1 if e is None else e,
            "open_start": s is None,
            "open_end": e is None,
            "info": _info_json(info),
            "segment": _segment_uri(output, item, info, options, model_key, s, e, precision),
        }
        for k, (s, e) in enumerate(bounds)
    ]


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


class SegmentDeblurrer:
    """One per actor: the engine (and a stabiliser) loaded once, then segments one after another."""

    def __init__(
        self, model: str, engine: str, threads: int | None, options: VideoOptions, precision: str | None = None
    ):

        self.options = options
        self.engine = load_engine(model, engine, worker_device(), threads=threads, precision=precision)
        self.stabiliser = Stabiliser() if options.temporal else None
        self.threads = threads or 0

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        result = {
            "rel": row["rel"],
            "k": row["k"],
            "n": row["n"],
            "status": "done",
            "reason": "",
            "frames": 0,
            "last": -1.0,
            "seconds": 0.0,
            "segment": row["segment"],
            "info": row["info"],
            "out": row["out"],
        }
        t0 = time.perf_counter()
        try:
            reused = _finished(row["segment"], _info_from(row).rate)
            if reused is not None:  # written whole by an earlier, interrupted run
                result.update(status="reused", frames=reused[0], last=reused[1])
            else:
                result["frames"], result["last"] = self._segment(row)
        except BadVideo as e:
            result.update(status="failed", reason=str(e))
        except Exception as e:  # a model, codec or storage failure on one video must not stop the run
            result.update(status="failed", reason=f"{row['rel']}: {_reason(e)}")
        result["seconds"] = time.perf_counter() - t0
        return result

    def _segment(self, row: dict[str, Any]) -> tuple[int, float]:
        """Deblur one segment into its file; (frames written, end time of the last in seconds). A segment
        with no frames (a gap in a variable-rate video) writes no file."""
        info = _info_from(row)
        start = None if row["open_start"] else int(row["start"])
        end = None if row["open_end"] else int(row["end"])
        if self.stabiliser is not None:
            self.stabiliser.reset()
        warmup = self.options.warmup if self.stabiliser is not None else 0
        count, last, writer = 0, -1.0, None
        with tempfile.TemporaryDirectory(prefix="deblur-segment-") as tmp:
            local = os.path.join(tmp, posixpath.basename(row["segment"]))
            try:
                for pts, rgb, warming in frames(row, info, start, end, warmup, self.threads):
                    out = self.engine.deblur_image(rgb)
                    if self.stabiliser is not None:
                        out = self.stabiliser(out)
                    if warming:
                        continue
                    if writer is None:
                        writer = SegmentWriter(
                            local, info, self.options.codec, self.options.crf, self.options.preset, self.threads
                        )
                    writer.write(pts, out)
                    count, last = count + 1, float(pts * info.time_base + 1 / info.rate)
            finally:
                if writer is not None:
                    writer.close()
            if writer is not None:
                _put(local, row["segment"])
        return count, last


def _finished(uri: str, rate: Fraction) -> tuple[int, float] | None:
    """(frames, end of the last in seconds) of a segment an earlier run wrote (its packets keep the source's
    times), or None when there is none; one that cannot be read (a machine lost mid-rename) is deleted."""
    if not storage.exists(uri):
        return None
    try:
        with open_source({"uri": uri}) as c:
            stamps = [p.pts * p.time_base for p in c.demux(video_stream(c)) if p.pts is not None]
        if not stamps:
            raise BadVideo(f"{uri}: empty")
        return len(stamps), float(max(stamps) + 1 / rate)
    except Exception:
        fs, path = storage.filesystem(uri)
        fs.rm(path)
        return None


def _put(local: str, uri: str) -> None:
    """A finished local file to its place in storage, appearing only whole (and durable before it appears)."""
    fs, path = storage.filesystem(uri)
    if storage.is_remote(uri):
        fs.put_file(local, path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # the name storage.remove_partial_writes clears after a kill
    shutil.move(local, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def join_video(rows: list[dict[str, Any]], source: dict[str, Any], output: str, codec: str) -> dict[str, Any]:
    """The segments of one video (all finished) into its output, then its segments deleted; never raises."""
    rel = rows[0]["rel"]
    try:
        rows = sorted(rows, key=lambda r: r["k"])
        info = _info_from(rows[0])
        written = [r for r in rows if r["frames"] > 0]
        stated = float((info.start + info.duration) * info.time_base)  # where the container says it ends
        last = max((float(r["last"]) for r in written), default=0.0)
        if not written:
            problem = "no frame decodes"
        elif info.duration and last < stated - max(TRUNCATED_SECONDS, TRUNCATED_SHARE * info.seconds):
            problem = f"truncated or damaged: its frames end at {last:.2f} s of the {stated:.2f} s it states"
        else:
            problem = ""
        if problem:  # nothing that looks complete, and nothing to resume: a re-run would decode the same
            drop_segments(output, rows[0]["out"])
            return {"rel": rel, "status": "failed", "reason": f"{rel}: {problem}"}
        dest = storage.join(output, rows[0]["out"])
        with tempfile.TemporaryDirectory(prefix="deblur-join-") as tmp:
            target = (
                os.path.join(tmp, posixpath.basename(dest)) if storage.is_remote(dest) else storage.filesystem(dest)[1]
            )
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            join([r["segment"] for r in written], source, info, target, codec)
            if storage.is_remote(dest):  # the MP4 index goes to the front after writing: a local file, then one upload
                _put(target, dest)
        drop_segments(output, rows[0]["out"])
        return {"rel": rel, "status": "done", "reason": ""}
    except Exception as e:
        return {"rel": rel, "status": "failed", "reason": f"{rel}: joining failed ({_reason(e)})"}


def drop_segments(output: str, out: str) -> None:
    """Delete one video's segments (only its own folder: other videos' joins may be writing beside it)."""
    fs, folder = storage.filesystem(segments_folder(output, out))
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def drop_leftovers(output: str, finished: set[str]) -> None:
    """Segments of videos whose output exists (a run killed between its join and the clean-up), and the
    segments folder itself once empty (local outputs; S3 has no folders)."""
    fs, top = storage.filesystem(storage.join(output, SEGMENTS))
    if not fs.exists(top):
        return
    owners = {posixpath.dirname(posixpath.dirname(posixpath.relpath(p, top))) for p in fs.find(top)}
    for out in owners & finished:
        drop_segments(output, out)
    if not storage.is_remote(output):
        for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(folder)
            except OSError:
                pass  # holds a failed video's segments, kept for the next run


def deblur_videos(
    videos: list[dict[str, Any]],
    output: str,
    model: str,
    engine: str,
    options: VideoOptions,
    workers: int | None = None,
    gpus_per_worker: float | str = 0.0,
    cpus_per_worker: float = 1.0,
    threads: int | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> dict[str, Any]:
    """Deblur `videos` (listing rows with "out" set) into `output`; returns counts and the failures. Segments are
    kept under a key of the model's content (`model_fingerprint`), not its name: a resumed run after best.json
    or an s3:// object changed makes them again rather than mixing two models in one video.
    `gpus_per_worker`: a number, or "auto" (`deblur.ray_env.actor_gpus`; deblur video's default). `workers`:
    the most engine actors on a cluster, the exact number on a Ray of the job's own (`deblur.ray_env.actor_pool`;
    None: its default). A kernel-aware route (the default) deblurs video with its network (`network_of`): a
    kernel estimated frame by frame would differ between frames and flicker."""
    gpus_per_worker = actor_gpus(gpus_per_worker)
    model = network_of(model)

    report = {"videos": len(videos), "done": 0, "failed": 0, "frames": 0, "segments": 0, "seconds": 0.0, "errors": []}
    if not videos:
        return report
    # videos are cut for the actors that run at the start (a pool that grows later gets more segments queued)
    present = actor_pool(workers, cpus_per_worker, gpus_per_worker, 1 << 20).initial
    # probing is small parallel work; its rows come back so that every segment becomes its own block (a
    # fused flat_map would hand all of a video's segments to one actor)
    planned = (
        ray.data.from_items(videos, override_num_blocks=max(1, min(len(videos), 10_000)))
        .flat_map(plan, fn_args=(options, present, model_fingerprint(model), output, precision))
        .take_all()
    )
    failed: dict[str, str] = {r["rel"]: r["error"] for r in planned if r["error"]}
    segments = [r for r in planned if not r["error"]]
    report["segments"] = len(segments)
    sources = {v["rel"]: v for v in videos}
    joiner = ray.remote(num_cpus=0)(join_video)
    # joins read and write whole videos: a few at a time, so a node's disk and network are not all theirs
    pending_joins: dict[Any, str] = {}
    max_joins = max(2, present)

    def settle(limit: int) -> None:
        """Collect finished joins until at most `limit` are running."""
        while len(pending_joins) > limit:
            ready, _ = ray.wait(list(pending_joins), num_returns=1)
            rel = pending_joins.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as e:  # the join's worker died (out of memory, a lost node)
                result = {"rel": rel, "status": "failed", "reason": f"{rel}: joining failed ({_reason(e)})"}
            if result["status"] == "failed":
                failed[rel] = result["reason"]
            else:
                report["done"] += 1

    finished: dict[str, dict[int, dict[str, Any]]] = {}
    if segments:
        pool = actor_pool(workers, cpus_per_worker, gpus_per_worker, len(segments))
        report["pool"] = pool.most
        ds = ray.data.from_items(segments, override_num_blocks=min(len(segments), 10_000)).map(
            SegmentDeblurrer,
            fn_constructor_args=(model, engine, threads, options, precision),
            # one segment at a time per actor: a queued segment waits for a free actor, not behind a busy one
            compute=pool.strategy(max_tasks_in_flight_per_actor=1),
            num_gpus=gpus_per_worker or None,
            num_cpus=cpus_per_worker,
        )
        with (
            actor_start_errors("the engine"),
            progress_bar(len(segments), "video segments", "seg", enabled=progress) as bar,
        ):
            for row in ds.iter_rows():
                bar.update(1)
                rel = row["rel"]
                report["frames"] += int(row["frames"])
                report["seconds"] += float(row["seconds"])
                if row["status"] == "failed":
                    failed.setdefault(rel, row["reason"])
                    continue
                parts = finished.setdefault(rel, {})
                parts[int(row["k"])] = row
                if set(parts) == set(range(int(row["n"]))) and rel not in failed:
                    settle(max_joins - 1)
                    pending_joins[
                        joiner.remote(list(finished.pop(rel).values()), sources[rel], output, options.codec)
                    ] = rel
    settle(0)
    drop_leftovers(output, set())  # the segments folder, once empty
    report["failed"] = len(failed)
    report["errors"] = [{"path": rel, "reason": reason} for rel, reason in sorted(failed.items())]
    report["seconds"] = round(report["seconds"], 2)
    return report


def deblur_file(
    source: str,
    dest: str,
    model: str = "default",
    engine: str = "auto",
    options: VideoOptions | None = None,
    workers: int | None = None,
    gpus_per_worker: float | str = 0.0,
    cpus_per_worker: float = 1.0,
    threads: int | None = None,
    progress: bool = True,
    precision: str | None = None,
) -> dict:
    """One clip (a path or s3:// URI) to `dest`: the archive job's video path on a single file."""
    item = {"rel": posixpath.basename(source), "uri": source, "offset": -1, "size": -1, "out": posixpath.basename(dest)}
    return deblur_videos(
        [item],
        posixpath.dirname(dest) or ".",
        model,
        engine,
        options or VideoOptions(),
        workers,
        gpus_per_worker,
        cpus_per_worker,
        threads,
        progress,
        precision=precision,
    )
