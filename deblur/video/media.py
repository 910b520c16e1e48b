"""Video files through FFmpeg (PyAV): probe, decode a time range, encode a segment, join segments with the
source's audio.

Frames are addressed by their presentation timestamps (pts, in the video stream's time base), never by
counting: a segment is the frames with `start <= pts < end`, so segments decoded by different workers
partition the video exactly (no frame twice, none missing) and keep the source's own timing, variable frame
rates included. Everything streams: a worker holds a few frames, the join holds a few packets.
"""

from __future__ import annotations

import heapq
import io
import os
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

from .. import storage

#: output codecs people can choose (`--video-codec`): FFmpeg encoder, container, pixel format for even sizes
CODECS = {
    "h264": ("libx264", "mp4", "yuv420p"),
    "hevc": ("libx265", "mp4", "yuv420p"),
    "vp9": ("libvpx-vp9", "webm", "yuv420p"),
}
#: audio codecs each container takes as they are; anything else is re-encoded (AAC in MP4, Opus in WebM)
AUDIO_COPY = {"mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}, "webm": {"opus", "vorbis"}}
AUDIO_ENCODER = {"mp4": "aac", "webm": "libopus"}
#: frames decoded on top of the warm-up, in case the keyframe seek lands a little late
SEEK_SLACK = 2
#: S3 reads in blocks this large (s3fs reads ahead 50 MiB per seek by default; a video is read by many seeks)
S3_BLOCK = 4 << 20
#: the encoder presets x264 and x265 know
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
#: sample rates libopus encodes (WebM's audio); other sources are resampled to 48 kHz
OPUS_RATES = (48000, 24000, 16000, 12000, 8000)


class BadVideo(ValueError):
    """A video that cannot be deblurred; the message names the file and the reason."""


@dataclass
class VideoInfo:
    """What the job needs to know about a source before it splits and re-encodes it."""

    width: int
    height: int
    rate: Fraction  # average frames per second (variable-rate sources keep their own pts)
    time_base: Fraction
    start: int  # pts of the first frame
    duration: int  # pts span of the video stream (0 when the container does not say)
    frames: int  # frame count as the container states it (0 when unknown)
    rotation: int  # degrees counter-clockwise the player turns the picture
    pix_fmt: str
    colour: dict[str, int] = field(default_factory=dict)  # colorspace, color_range, color_primaries, color_trc
    audio: str = ""  # codec of the first audio stream, "" when there is none

    @property
    def seconds(self) -> float:
        return float(self.duration * self.time_base)


class _Window(io.RawIOBase):
    """Bytes [offset, offset + size) of a seekable file as a file of their own (a member of a .tar)."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = max(0, min(self.size, (0, self.pos, self.size)[whence] + pos))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_source(item: dict[str, Any]):
    """An input container for a listing row: local paths by name (FFmpeg's own I/O), S3 objects and tar
    members through a seekable file object (ranged reads, nothing downloaded whole)."""
    uri, name = item["uri"], item.get("rel", item["uri"])
    try:
        if not storage.is_remote(uri) and item.get("offset", -1) < 0:
            return av.open(storage.filesystem(uri)[1], "r")
        fs, path = storage.filesystem(uri)
        f = fs.open(path, "rb", **({"block_size": S3_BLOCK} if storage.is_remote(uri) else {}))
        if item.get("offset", -1) >= 0:
            f = io.BufferedReader(_Window(f, item["offset"], item["size"]), 1 << 20)
        return av.open(f, "r")
    except (av.FFmpegError, OSError) as e:
        raise BadVideo(f"{name}: not a readable video ({_why(e)})") from None


def video_stream(c):
    """The first real video stream (cover art is a one-picture 'video' stream: not one); None if there is none."""
    for vs in c.streams.video:
        if not vs.disposition & av.stream.Disposition.attached_pic:
            return vs
    return None


def audio_stream(c):
    """The first audio stream this FFmpeg can decode, or None."""
    return next((a for a in c.streams.audio if a.codec_context is not None), None)


def _why(e: Exception) -> str:
    """FFmpeg's reason without the errno and path PyAV wraps around it."""
    text = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return str(text)[:200]


def probe(item: dict[str, Any]) -> VideoInfo:
    """The source's geometry and timing; decodes its first frame, so a file that cannot give one fails here."""
    name = item.get("rel", item["uri"])
    with open_source(item) as c:
        vs = video_stream(c)
        if vs is None:
            raise BadVideo(f"{name}: no video stream")
        try:
            first = next(c.decode(vs), None)
        except av.FFmpegError as e:
            raise BadVideo(f"{name}: the first frame does not decode ({_why(e)})") from None
        if first is None:
            raise BadVideo(f"{name}: no frames")
        if first.pts is None:
            raise BadVideo(f"{name}: its frames carry no timestamps")
        tb = vs.time_base or Fraction(1, 90000)
        rate = vs.average_rate or vs.guessed_rate or Fraction(25)
        if vs.duration:
            duration = int(vs.duration)
        elif c.duration:  # microseconds, for containers that state no per-stream duration (mkv, webm)
            duration = int(Fraction(c.duration, av.time_base) / tb)
        else:
            duration = 0
        cc = vs.codec_context
        a = audio_stream(c)
        audio = a.codec_context.name if a is not None else ""
        return VideoInfo(
            width=first.width,
            height=first.height,
            rate=Fraction(rate),
            time_base=Fraction(tb),
            start=int(first.pts),
            duration=duration,
            frames=int(vs.frames or 0),
            rotation=int(round(first.rotation or 0)) % 360,
            pix_fmt=cc.pix_fmt or first.format.name,
            # RGB sources (matrix 0) come out YUV: their matrix is the encoder's default, not "RGB"
            colour={
                k: int(getattr(first, k))
                for k in ("colorspace", "color_range", "color_primaries", "color_trc")
                if k != "colorspace" or int(first.colorspace) != 0
            },
            audio=audio,
        )


def boundaries(info: VideoInfo, segment_seconds: float) -> list[int]:
    """Segment starts in pts, about `segment_seconds` apart: segment k holds the frames with
    starts[k] <= pts < starts[k+1] (the first also any before, the last any after)."""
    step = int(Fraction(segment_seconds) / info.time_base)
    if not info.duration or step <= 0 or info.duration <= step * 1.5:
        return [info.start]
    n = int(round(info.duration / step))
    return [info.start + int(info.duration * k / n) for k in range(n)]


def frames(
    item: dict[str, Any], info: VideoInfo, start: int | None, end: int | None, warmup: int, threads: int = 0
) -> Iterator[tuple[int, np.ndarray, bool]]:
    """(pts, RGB uint8 frame, is_warmup) for the frames with start <= pts < end, preceded by up to `warmup`
        earlier frames (for the temporal state; the caller drops them). None means the video's own start or end.
    `threads` caps the decoder's threads (0: FFmpeg's choice), so one actor per core does not run cores² threads.

        Seeks to the keyframe before the warm-up; if the seek lands past the start (some containers index
        coarsely), decodes from the beginning instead, so no frame of the range is ever lost.
    """
    name = item.get("rel", item["uri"])
    for seek in (start is not None and start > info.start, False):
        with open_source(item) as c:
            vs = video_stream(c)
            vs.thread_type = "AUTO"
            vs.codec_context.thread_count = threads
            if seek:
                back = int((warmup + SEEK_SLACK) / info.rate / info.time_base)
                c.seek(max(info.start, start - back), stream=vs, backward=True)
            ring: deque = deque(maxlen=max(0, warmup))  # the last frames before `start`
            before = started = False
            try:
                for frame in c.decode(vs):
                    pts = frame.pts
                    if pts is None:
                        raise BadVideo(f"{name}: a frame without a timestamp")
                    if start is not None and pts < start:
                        before = True
                        ring.append(frame)
                        continue
                    if seek and not before:
                        break  # landed past the start: frames would be lost, decode from the beginning
                    if end is not None and pts >= end:
                        return  # the range is done (or empty: a gap in a variable-rate video)
                    if not started:
                        started = True
                        for w in ring:
                            yield int(w.pts), w.to_ndarray(format="rgb24"), True
                        ring.clear()
                    yield int(pts), frame.to_ndarray(format="rgb24"), False
                else:
                    if not (seek and not before):
                        return  # the video's end (a seek that found nothing decodes from the beginning)
            except av.FFmpegError as e:
                raise BadVideo(f"{name}: decoding failed ({_why(e)})") from None


class SegmentWriter:
    """Encodes RGB frames at the source's pts into one segment file (local path), H.264 by default."""

    def __init__(
        self, path: str, info: VideoInfo, codec: str = "h264", crf: int = 18, preset: str = "medium", threads: int = 0
    ):
        encoder, fmt, pix_fmt = CODECS[codec]
        self.info, self.container = info, av.open(path, "w", format=fmt)
        s = self.stream = self.container.add_stream(encoder, rate=info.rate)
        s.width, s.height = info.width, info.height
        # 4:2:0 needs even sides; an odd-sized source keeps its size in 4:4:4 (plays in FFmpeg-based players)
        s.pix_fmt = pix_fmt if info.width % 2 == 0 and info.height % 2 == 0 else "yuv444p"
        s.time_base = info.time_base
        s.codec_context.time_base = info.time_base
        for k, v in info.colour.items():
            setattr(s.codec_context, k, v)
        if encoder == "libx265" and fmt == "mp4":
            s.codec_tag = "hvc1"  # what Apple's players require of HEVC in MP4 (FFmpeg's default is hev1)
        # parameter sets in every keyframe, not only in the container's header: the join takes the header
        # from the first segment, and a segment whose encoder chose other parameters must still decode
        per_codec = {
            "libx264": {"preset": preset, "x264-params": "repeat-headers=1"},
            "libx265": {"preset": preset, "x265-params": "repeat-headers=1:log-level=error"},
            "libvpx-vp9": {"b:v": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"},
        }
        s.options = {"crf": str(crf), **per_codec[encoder]}
        s.thread_count = threads

    def write(self, pts: int, rgb: np.ndarray) -> None:
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        f = f.reformat(
            format=self.stream.pix_fmt,
            dst_colorspace=self.info.colour.get("colorspace") or None,
            dst_color_range=self.info.colour.get("color_range") or None,
        )
        f.pts, f.time_base = pts, self.info.time_base
        for p in self.stream.encode(f):
            self.container.mux(p)

    def close(self) -> None:
        for p in self.stream.encode(None):
            self.container.mux(p)
        self.container.close()


def _packets(container, stream) -> Iterator[Any]:
    for p in container.demux(stream):
        if p.dts is not None:  # the flush packet at the end carries none
            yield p


def join(segments: list[str], source: dict[str, Any], info: VideoInfo, dest: str, codec: str = "h264") -> None:
    """The segments' video (copied, not re-encoded; local paths or s3:// URIs) and the source's audio into `dest`
    (a local path: the MP4 index is moved to the front after writing),
    written under a temporary name and renamed, so `dest` appears only complete. Packets are interleaved by
    time as they are read: memory stays a few packets whatever the length."""
    _, fmt, _ = CODECS[codec]
    tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with av.open(tmp, "w", format=fmt, options={"movflags": "+faststart"} if fmt == "mp4" else {}) as out:
            with open_source({"uri": segments[0]}) as first:
                ov = out.add_stream_from_template(video_stream(first))
            if info.rotation:
                ov.set_display_rotation(info.rotation)
            src = open_source(source) if info.audio else None
            try:
                # every stream exists before the first packet is written (the header goes out with it)
                audio = _audio(src, out, fmt) if src is not None else iter(())
                for _, packet in heapq.merge(_video(segments, ov), audio, key=lambda p: p[0]):
                    out.mux(packet)
            finally:
                if src is not None:
                    src.close()
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _video(segments: list[str], ov) -> Iterator[tuple[float, Any]]:
    """Every segment's packets in order, re-stamped onto the output stream; dts kept strictly rising across
    a seam (each segment's encoder starts its own decode-order offset)."""
    last = None
    for uri in segments:
        with open_source({"uri": uri}) as c:
            for p in _packets(c, video_stream(c)):
                if last is not None and p.dts * p.time_base <= last:
                    p.dts = int(last / p.time_base) + 1  # never past its pts: a seam's offset is a frame or two
                last = p.dts * p.time_base
                p.stream = ov
                yield float(last), p


def _audio(src, out, fmt: str) -> Iterator[tuple[float, Any]]:
    """The source's first audio stream, added to `out` now: copied when the container takes its codec as this
    source stores it (MP4 from MP4/MOV, WebM from Matroska/WebM; AAC in AVI or TS is framed for streaming and
    would not mux), re-encoded otherwise (the encoder re-times and resamples)."""
    a = audio_stream(src)
    family = {"mp4": "mp4", "webm": "matroska"}[fmt]
    if a.codec_context.name in AUDIO_COPY[fmt] and family in src.format.name:
        oa = out.add_stream_from_template(a)
        return _restamped(_packets(src, a), oa)
    rate = a.codec_context.sample_rate or 48000
    if fmt == "webm" and rate not in OPUS_RATES:
        rate = 48000
    oa = out.add_stream(AUDIO_ENCODER[fmt], rate=rate, layout=a.codec_context.layout)
    return _restamped(_encoded(src, a, oa), oa)


def _encoded(src, a, oa) -> Iterator[Any]:
    for frame in src.decode(a):
        yield from oa.encode(frame)  # PyAV resamples and re-times each frame onto the encoder's clock
    yield from oa.encode(None)


def _restamped(packets: Iterator[Any], stream) -> Iterator[tuple[float, Any]]:
    for p in packets:
        t = float(p.dts * p.time_base)
        p.stream = stream
        yield t, p
