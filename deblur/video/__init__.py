"""Video deblurring: clips split into segments that Ray Data actors deblur in parallel, stabilised with
optical flow for temporal consistency, joined with the source's audio (`deblur_videos`, `deblur_file`). Names
import on first use: the segment job needs Ray and the codecs PyAV, which naming a video suffix does not."""

# ruff: noqa: F401

from typing import TYPE_CHECKING

from ..images import VIDEO_SUFFIXES
from ..lazy import exports

__getattr__, __dir__, _lazy = exports(
    __name__,
    {
        "job": ["VideoOptions", "deblur_file", "deblur_videos", "drop_leftovers", "is_video", "video_rel"],
        "media": ["CODECS", "BadVideo"],
    },
)
__all__ = sorted([*_lazy, "VIDEO_SUFFIXES"])

if TYPE_CHECKING:  # for type checkers and editors
    from .job import VideoOptions, deblur_file, deblur_videos, drop_leftovers, is_video, video_rel
    from .media import CODECS, BadVideo
