"""Deblur videos with Ray Data: probe and split each video into segments → actors holding the engine decode,
deblur, stabilise and encode one segment each → a join task per video copies the segments' packets and the
source's audio into the output.

Segments are time ranges of presentation timestamps (see `media`), so they partition a video exactly. Each
starts `warmup` frames early to settle the temporal state; those frames are deblurred and dropped. Every
segment and every output is written whole (temporary name + rename, or one upload on S3), so a re-run skips
finished videos and finished segments alike; a video that fails is reported with its reason and the run
goes on. Memory is a few frames per actor and a few packets per join, whatever the length.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from .. import storage
from .media import CODECS, VIDEO_SUFFIXES, BadVideo, SegmentWriter, VideoInfo, frames, join, probe, boundaries

SEGMENTS = "_segments"
#: a video is split into at most this long segments, and into one per worker when shorter, but never below
#: MIN_SEGMENT_SECONDS (the warm-up would then cost more than the parallelism gains)
SEGMENT_SECONDS, MIN_SEGMENT_SECONDS = 10.0, 4.0


@dataclass
class VideoOptions:
    temporal: bool = True  # stabilise with optical flow (False: each frame deblurred on its own)
    codec: str = "h264"
    crf: int = 18  # constant-quality factor of the encoder (lower: better and larger)
    preset: str = "medium"
    segment_seconds: float = SEGMENT_SECONDS
    warmup: int = 8  # frames decoded before each segment for the temporal state, then dropped

    def check(self) -> "VideoOptions":
        if self.codec not in CODECS:
            raise ValueError(f"video codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"video crf must be within 0..51, got {self.crf}")
        if self.segment_seconds < MIN_SEGMENT_SECONDS:
            raise ValueError(f"segments must be at least {MIN_SEGMENT_SECONDS} s, got {self.segment_seconds}")
        if self.warmup < 0:
            raise ValueError(f"warm-up frames cannot be negative, got {self.warmup}")
        return self


def is_video(rel: str) -> bool:
    return rel.lower().endswith(VIDEO_SUFFIXES)


def video_rel(rel: str, codec: str) -> str:
    """The output's relative name: the input's, in the codec's container (`clip.mov` → `clip.mp4`)."""
    return posixpath.splitext(rel)[0] + "." + CODECS[codec][1]


def _segment_uri(output: str, out: str, k: int) -> str:
    return storage.join(output, SEGMENTS, out, f"{k:05d}.{posixpath.splitext(out)[1].lstrip('.')}")


def _info_from(row: dict[str, Any]) -> VideoInfo:
    d = json.loads(row["info"])
    return VideoInfo(**{**d, "rate": Fraction(d["rate"]), "time_base": Fraction(d["time_base"])})


def _info_json(info: VideoInfo) -> str:
    return json.dumps({**asdict(info), "rate": str(info.rate), "time_base": str(info.time_base)})


def plan(item: dict[str, Any], options: VideoOptions, workers: int) -> list[dict[str, Any]]:
    """One row per segment of a video (or one failed row saying why it cannot be read)."""
    base = {"rel": item["rel"], "uri": item["uri"], "offset": item["offset"], "size": item["size"], "out": item["out"]}
    try:
        info = probe(item)
    except BadVideo as e:
        return [{**base, "k": 0, "n": 1, "start": None, "end": None, "info": "", "error": str(e)}]
    length = max(MIN_SEGMENT_SECONDS, min(options.segment_seconds, info.seconds / max(1, workers)))
    starts = boundaries(info, length)
    ends = starts[1:] + [None]  # None: from the video's start, to its end
    return [{**base, "k": k, "n": len(starts), "start": s if k else None, "end": e, "info": _info_json(info), "error": ""}
            for k, (s, e) in enumerate(zip(starts, ends))]


def _pts(value: Any) -> int | None:
    """A segment bound from a dataset row: None (open), or an int that a pandas block may have made a float."""
    return None if value is None or value != value else int(value)


class SegmentDeblurrer:
    """One per actor: the engine (and a stabiliser) loaded once, then segments one after another."""

    def __init__(self, model: str, engine: str, threads: int | None, options: VideoOptions, output: str):
        from ..inference import load_engine
        from .temporal import Stabiliser

        self.options, self.output = options, output
        self.engine = load_engine(model, engine, threads=threads)
        self.stabiliser = Stabiliser() if options.temporal else None
        self.threads = threads or 0

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        result = {"rel": row["rel"], "out": row["out"], "k": row["k"], "n": row["n"], "status": "done", "reason": "",
                  "frames": 0, "seconds": 0.0, "segment": _segment_uri(self.output, row["out"], row["k"]), "info": row["info"]}
        t0 = time.perf_counter()
        try:
            if storage.exists(result["segment"]):  # finished by an earlier, interrupted run
                return {**result, "status": "reused", "frames": _frames_in(result["segment"])}
            result["frames"] = self._segment(row, result["segment"])
        except BadVideo as e:
            result.update(status="failed", reason=str(e))
        except Exception as e:  # a model, codec or storage failure on one video must not stop the run
            result.update(status="failed", reason=f"{row['rel']}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        result["seconds"] = time.perf_counter() - t0
        return result

    def _segment(self, row: dict[str, Any], dest: str) -> int:
        info = _info_from(row)
        start, end = _pts(row["start"]), _pts(row["end"])
        if self.stabiliser is not None:
            self.stabiliser.reset()
        with tempfile.TemporaryDirectory(prefix="deblur-segment-") as tmp:
            local = os.path.join(tmp, posixpath.basename(dest))
            writer = SegmentWriter(local, info, self.options.codec, self.options.crf, self.options.preset, self.threads)
            count = 0
            try:
                for pts, rgb, warming in frames(row, info, start, end, self.options.warmup if self.stabiliser else 0):
                    out = self.engine.deblur_image(rgb)
                    if self.stabiliser is not None:
                        out = self.stabiliser(out)
                    if not warming:
                        writer.write(pts, out)
                        count += 1
            finally:
                writer.close()
            if count == 0:
                raise BadVideo(f"{row['rel']}: segment {row['k']} has no frames")
            _put(local, dest)
        return count


def _frames_in(uri: str) -> int:
    from .media import open_source

    with open_source({"uri": uri, "offset": -1}) as c:
        return int(c.streams.video[0].frames)


def _put(local: str, uri: str) -> None:
    """A finished local file to its place in storage, appearing only whole."""
    fs, path = storage.filesystem(uri)
    if storage.is_remote(uri):
        fs.put_file(local, path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"  # the name storage.remove_partial_writes clears after a kill
    shutil.move(local, tmp)
    os.replace(tmp, path)


def join_video(rows: list[dict[str, Any]], source: dict[str, Any], output: str, codec: str) -> dict[str, Any]:
    """The segments of one video (all done) into its output, then the segments deleted."""
    rows = sorted(rows, key=lambda r: r["k"])
    info = _info_from(rows[0])
    dest = storage.join(output, rows[0]["out"])
    segments = [r["segment"] for r in rows]
    decoded = sum(int(r["frames"]) for r in rows)
    if info.frames and decoded < info.frames:  # a file cut short: no output that looks complete
        _drop_segments(output, rows[0]["out"])  # and nothing to resume: a re-run would decode the same
        return {"rel": rows[0]["rel"], "status": "failed",
                "reason": f"{rows[0]['rel']}: truncated or damaged: {decoded} of its {info.frames} frames decode"}
    try:
        with tempfile.TemporaryDirectory(prefix="deblur-join-") as tmp:
            if storage.is_remote(output):  # FFmpeg's muxer wants seekable local files: fetch, join, upload
                local = [os.path.join(tmp, posixpath.basename(uri)) for uri in segments]
                for uri, path in zip(segments, local):
                    fs, key = storage.filesystem(uri)
                    fs.get_file(key, path)
                target = os.path.join(tmp, "out" + posixpath.splitext(dest)[1])
                join(local, source, info, target, codec)
                _put(target, dest)
            else:
                target = storage.filesystem(dest)[1]
                os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
                join([storage.filesystem(uri)[1] for uri in segments], source, info, target, codec)
        _drop_segments(output, rows[0]["out"])
        return {"rel": rows[0]["rel"], "status": "done", "reason": ""}
    except Exception as e:
        return {"rel": rows[0]["rel"], "status": "failed", "reason": f"{rows[0]['rel']}: joining failed ({type(e).__name__}: {str(e)[:200]})"}


def _drop_segments(output: str, out: str) -> None:
    """Delete a video's segments, and the segments folder once no video has any left in it."""
    fs, folder = storage.filesystem(storage.join(output, SEGMENTS, out))
    if fs.exists(folder):
        fs.rm(folder, recursive=True)
    if storage.is_remote(output):  # S3 has no folders to remove
        return
    top = storage.filesystem(storage.join(output, SEGMENTS))[1]
    for folder, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # still holds another video's segments (or another join is removing it)


def run(videos: list[dict[str, Any]], output: str, model: str, engine: str, options: VideoOptions, workers: int = 1,
        gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, threads: int | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Deblur `videos` (listing rows with "out" set) into `output`; returns counts and the failures."""
    import ray
    from tqdm import tqdm

    options.check()
    report = {"videos": len(videos), "done": 0, "failed": 0, "frames": 0, "segments": 0, "seconds": 0.0, "errors": []}
    if not videos:
        return report
    joiner = ray.remote(num_cpus=0)(join_video)
    # probing is small parallel work; its rows come back so that every segment becomes its own block (a
    # fused flat_map would hand all of a video's segments to one actor)
    planned = ray.data.from_items(videos, override_num_blocks=max(1, min(len(videos), 10_000))).flat_map(
        plan, fn_args=(options, workers)).take_all()
    failed: dict[str, str] = {r["rel"]: r["error"] for r in planned if r["error"]}
    segments = [r for r in planned if not r["error"]]
    report["segments"] = len(segments)
    finished: dict[str, list[dict[str, Any]]] = {}
    joins = []
    if segments:
        ds = ray.data.from_items(segments, override_num_blocks=min(len(segments), 10_000)).map(
            SegmentDeblurrer, fn_constructor_args=(model, engine, threads, options, output),
            # one segment at a time per actor: a queued segment waits for a free actor, not behind a busy one
            compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(segments))), max_tasks_in_flight_per_actor=1),
            num_gpus=gpus_per_worker or None, num_cpus=cpus_per_worker)
        results = ds.iter_rows()
    else:
        results = iter(())
    sources = {v["rel"]: v for v in videos}
    with tqdm(total=len(segments), desc="video segments", unit="seg", disable=not progress) as bar:
        for row in results:
            bar.update(1)
            rel = row["rel"]
            report["frames"] += int(row["frames"])
            report["seconds"] += float(row["seconds"])
            if row["status"] == "failed":
                failed.setdefault(rel, row["reason"])
                continue
            finished.setdefault(rel, []).append(row)
            if len(finished[rel]) == row["n"] and rel not in failed:
                joins.append(joiner.remote(finished.pop(rel), sources[rel], output, options.codec))
    for result in ray.get(joins):
        if result["status"] == "failed":
            failed[result["rel"]] = result["reason"]
        else:
            report["done"] += 1
    report["failed"] = len(failed)
    report["errors"] = [{"path": rel, "reason": reason} for rel, reason in sorted(failed.items())]
    report["seconds"] = round(report["seconds"], 2)
    return report
