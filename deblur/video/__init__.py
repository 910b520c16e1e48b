"""Video deblurring: clips split into segments that Ray Data actors deblur in parallel, stabilised with
optical flow for temporal consistency, joined with the source's audio (`deblur_videos`, `deblur_file`)."""

from __future__ import annotations

import posixpath

from .job import VideoOptions, deblur_videos, drop_leftovers, is_video, video_rel
from .media import CODECS, VIDEO_SUFFIXES, BadVideo

__all__ = [
    "CODECS",
    "VIDEO_SUFFIXES",
    "BadVideo",
    "VideoOptions",
    "deblur_file",
    "deblur_videos",
    "drop_leftovers",
    "is_video",
    "video_rel",
]


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
