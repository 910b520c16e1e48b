"""Video deblurring: clips split into segments that Ray Data actors deblur in parallel, stabilised with
optical flow for temporal consistency, joined with the source's audio (`deblur_videos`, `deblur_file`)."""

from .job import VideoOptions, deblur_file, deblur_videos, drop_leftovers, is_video, video_rel
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
