"""Video: clips made from a real photo by a shaky virtual camera (sharp truth known), segments that partition
the frames exactly, the optical-flow stabiliser, and the job on real Ray over a folder, a tar and S3, with
the awkward files people have (odd sizes, 10-bit, 4:4:4, variable frame rate, truncated, no video)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from deblur.bulk import Options, deblur_archive
from deblur.metrics import psnr
from deblur.video import VideoOptions, deblur_file, media
from deblur.video.synthetic import random_path, render_clip, write_video
from deblur.video.temporal import Stabiliser, temporal_error

from conftest import ROOT, job_env, model_share, write_image

FPS, SECONDS, HW = 12, 10, (96, 128)


@pytest.fixture(scope="module")
def shaky(real_photo) -> tuple[np.ndarray, np.ndarray]:
    """(blurred, sharp) 10 s at 12 fps, 128×96, over a real photo."""
    path = random_path(np.random.default_rng(3), real_photo.shape[:2], HW, SECONDS, shake_px=5.0)
    return render_clip(real_photo, path, HW, FPS * SECONDS, FPS)


@pytest.fixture(scope="module")
def clip(shaky, tmp_path_factory) -> Path:
    """The blurred clip as an H.264 MP4 with an audio track and a 90° display rotation, as phones write them."""
    path = tmp_path_factory.mktemp("clips") / "shaky.mp4"
    write_video(str(path), shaky[0], FPS, audio_seconds=SECONDS, rotation=90)
    return path


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def all_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


def index_first(src: Path, dest: Path) -> None:
    """`src` re-muxed with its index (moov) before the data, as streaming files are written."""
    with av.open(str(src)) as i, av.open(str(dest), "w", options={"movflags": "+faststart"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for p in i.demux(i.streams.video[0]):
            if p.dts is not None:
                p.stream = s
                o.mux(p)


def test_render_clip_blurs_each_frame_along_its_own_motion(shaky):
    blurred, sharp = shaky
    assert blurred.shape == sharp.shape == (FPS * SECONDS, *HW, 3) and blurred.dtype == np.uint8
    gains = [psnr(b, s) for b, s in zip(blurred, sharp)]
    assert 18 < np.mean(gains) < 40 and np.std(gains) > 0.5, gains  # blurred, and by a different amount each frame
    assert psnr(sharp[0], sharp[1]) < 30  # the camera moves


@pytest.mark.parametrize("seconds", [3.0, 4.0])
def test_segments_partition_the_frames_exactly(clip, seconds):
    """Every frame lands in exactly one segment, in order, at its own pts, and each later segment is preceded
    by its warm-up frames: the frames just before its start."""
    item = {"uri": str(clip), "rel": clip.name}
    info = media.probe(item)
    assert (info.width, info.height, info.rate, info.rotation, info.audio) == (HW[1], HW[0], FPS, 90, "aac")
    everything = all_pts(clip)
    starts = media.boundaries(info, seconds)
    assert len(starts) == round(SECONDS / seconds)
    got = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else None
        rows = list(media.frames(item, info, start if k else None, end, warmup=5))
        warm = [p for p, _, w in rows if w]
        kept = [p for p, _, w in rows if not w]
        assert warm == (everything[everything.index(kept[0]) - 5 : everything.index(kept[0])] if k else [])
        got += kept
    assert got == everything


def test_stabiliser_cuts_flicker_without_losing_detail(shaky):
    """A stand-in for per-frame deblurring: the sharp frames each left with a different residual blur and
    noise (what makes per-frame outputs flicker). The stabiliser must cut the flow-warped temporal error by a
    third and not lower PSNR, and the flicker it removes must be more than the sharp video's own error."""
    _, sharp = shaky
    rng = np.random.default_rng(0)
    per_frame = np.stack(
        [
            np.clip(
                cv2.GaussianBlur(s.astype(np.float32), (0, 0), rng.uniform(0.5, 2.0)) + rng.normal(0, 6, s.shape),
                0,
                255,
            ).astype(np.uint8)
            for s in sharp[:48]
        ]
    )
    stab = Stabiliser()
    steady = np.stack([stab(f) for f in per_frame])
    floor, before, after = (temporal_error(x, sharp[:48]) for x in (sharp[:48], per_frame, steady))
    assert after < 0.67 * before and before > 1.5 * floor, (floor, after, before)
    p_before = np.mean([psnr(a, b) for a, b in zip(per_frame, sharp)])
    p_after = np.mean([psnr(a, b) for a, b in zip(steady, sharp)])
    assert p_after > p_before - 0.1, (p_after, p_before)


def test_stabiliser_keeps_a_cut():
    """Two unrelated pictures in a row (a cut): nothing of the first may bleed into the second."""
    rng = np.random.default_rng(1)
    a, b = (cv2.GaussianBlur((rng.random((96, 128, 3)) * 255).astype(np.uint8), (0, 0), 2) for _ in range(2))
    stab = Stabiliser()
    stab(a)
    assert np.abs(stab(b).astype(int) - b).mean() < 2.0


def test_variable_frame_rate_keeps_every_timestamp(shaky, tmp_path):
    """Irregular frame times (phones drop to variable rates in low light): segments and the join keep each
    frame's own time, so the output plays in step with its audio."""
    rng = np.random.default_rng(2)
    pts = [int(v) for v in np.cumsum(rng.integers(40, 130, 60)) - 40]
    src = tmp_path / "vfr.mkv"
    write_video(str(src), shaky[0][:60], FPS, pts=pts, time_base="1/1000")
    item = {"uri": str(src), "rel": src.name}
    info = media.probe(item)
    starts = media.boundaries(info, 2.0)
    assert len(starts) >= 2
    segments = []
    for k, start in enumerate(starts):
        seg = tmp_path / f"{k}.mp4"
        writer = media.SegmentWriter(str(seg), info, crf=10)
        for p, rgb, warm in media.frames(
            item, info, start if k else None, starts[k + 1] if k + 1 < len(starts) else None, 0
        ):
            writer.write(p, rgb)
        writer.close()
        segments.append(str(seg))
    out = tmp_path / "out.mp4"
    media.join(segments, item, info, str(out))
    with av.open(str(out)) as c:
        seconds = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert np.allclose(seconds, np.array(pts) / 1000, atol=1e-3), (seconds[:5], pts[:5])


def test_odd_sizes_ten_bit_and_444_come_out_whole(shaky, tmp_path):
    for name, frames, pix_fmt in [
        ("odd.mkv", shaky[0][:24, :95, :127], "yuv444p"),
        ("ten.mp4", shaky[0][:24], "yuv420p10le"),
        ("full.mp4", shaky[0][:24], "yuv444p"),
    ]:
        src = tmp_path / name
        write_video(str(src), frames, FPS, pix_fmt=pix_fmt)
        item = {"uri": str(src), "rel": name}
        info = media.probe(item)
        seg = tmp_path / f"{name}.seg.mp4"
        writer = media.SegmentWriter(str(seg), info, crf=10)
        for p, rgb, _ in media.frames(item, info, None, None, 0):
            writer.write(p, rgb)
        writer.close()
        out = tmp_path / f"{name}.out.mp4"
        media.join([str(seg)], item, info, str(out))
        got = decoded(out)
        assert len(got) == 24 and got[0].shape == frames[0].shape, name
        assert np.mean([psnr(g, f) for g, f in zip(got, frames)]) > 35, name  # the picture itself, not just the size


@pytest.mark.parametrize("codec, audio", [("h264", "aac"), ("hevc", "aac"), ("vp9", "opus")])
def test_every_codec_joins_segments_encoded_differently(codec, audio, clip, tmp_path):
    """Segments whose encoders chose different parameters (other quality settings) still join into one stream
    that decodes whole, with the source's audio copied (MP4) or re-encoded to what the container takes (WebM)."""
    item = {"uri": str(clip), "rel": clip.name}
    info = media.probe(item)
    starts = media.boundaries(info, 5.0)
    segments = []
    for k, start in enumerate(starts):
        seg = tmp_path / f"{k}.{media.CODECS[codec][1]}"
        writer = media.SegmentWriter(str(seg), info, codec, crf=(12, 30)[k % 2], preset="ultrafast")
        for p, rgb, _ in media.frames(
            item, info, start if k else None, starts[k + 1] if k + 1 < len(starts) else None, 0
        ):
            writer.write(p, rgb)
        writer.close()
        segments.append(str(seg))
    out = tmp_path / f"out.{media.CODECS[codec][1]}"
    media.join(segments, item, info, str(out), codec)
    got, given = decoded(out), decoded(clip)
    assert len(got) == len(given) and min(psnr(a, b) for a, b in zip(got, given)) > 25  # a misread stream: ~10
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == audio
        last = max((p.pts + p.duration) * p.time_base for p in c.demux(c.streams.audio[0]) if p.pts is not None)
        assert abs(float(last) - SECONDS) < 0.2, last


@pytest.mark.parametrize("codec, audio", [("h264", "aac"), ("vp9", "opus")])
def test_audio_that_cannot_be_copied_is_reencoded_in_step(codec, audio, shaky, tmp_path):
    """44.1 kHz AAC in Matroska (as cameras and screen recorders write it): re-encoded for MP4 and resampled
    to 48 kHz Opus for WebM, and still as long as the video."""
    src = tmp_path / "cam.mkv"
    write_video(str(src), shaky[0][:60], FPS, audio_seconds=5.0, audio_rate=44100)
    item = {"uri": str(src), "rel": src.name}
    info = media.probe(item)
    seg = tmp_path / f"seg.{media.CODECS[codec][1]}"
    writer = media.SegmentWriter(str(seg), info, codec, preset="ultrafast")
    for p, rgb, _ in media.frames(item, info, None, None, 0):
        writer.write(p, rgb)
    writer.close()
    out = tmp_path / f"out.{media.CODECS[codec][1]}"
    media.join([str(seg)], item, info, str(out), codec)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == audio and a.codec_context.sample_rate == (48000 if codec == "vp9" else 44100)
        last = max((p.pts + p.duration) * p.time_base for p in c.demux(a) if p.pts is not None)
        assert abs(float(last) - 5.0) < 0.1, last
    assert len(decoded(out)) == 60


def check_output(out: Path, src: Path, frames_expected: int) -> None:
    """The output keeps the source's frame count, timing, size, rotation and audio, as browsers play it."""
    with av.open(str(out)) as c, av.open(str(src)) as s:
        v, sv = c.streams.video[0], s.streams.video[0]
        assert (v.codec_context.name, v.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (v.codec_context.width, v.codec_context.height) == (sv.codec_context.width, sv.codec_context.height)
        assert v.average_rate == sv.average_rate
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        first = next(c.decode(v))
        assert first.rotation == 90
    got = [float(p) for p in all_pts(out)]
    assert len(got) == frames_expected and got == sorted(got)


def awkward_folder(folder: Path, shaky, clip: Path) -> dict[str, str]:
    """Good and bad videos beside a photo; returns {name: what must happen}."""
    folder.mkdir()
    (folder / "shaky.mp4").write_bytes(clip.read_bytes())
    write_video(str(folder / "odd.mkv"), shaky[0][:20, :95, :127], FPS, pix_fmt="yuv444p")
    write_video(str(folder / "ten.mov"), shaky[0][:20], FPS, pix_fmt="yuv420p10le")
    data = clip.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])  # moov at the end: unreadable
    write_video(str(folder.parent / "whole.mp4"), shaky[0][:40], FPS)
    index_first(folder.parent / "whole.mp4", folder.parent / "indexed.mp4")  # readable, then cut: frames missing
    whole = (folder.parent / "indexed.mp4").read_bytes()
    (folder / "fast.mp4").write_bytes(whole[: int(len(whole) * 0.6)])
    gap = [int(1000 * t) for t in list(np.arange(24) / FPS) + list(9 + np.arange(36) / FPS)]  # 2 s, 7 s of nothing, 3 s
    write_video(str(folder / "gap.mkv"), shaky[0][:60], FPS, pts=gap, time_base="1/1000")
    (folder / "noise.webm").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "empty.avi").write_bytes(b"")
    with av.open(str(folder / "voice.mp4"), "w") as c:  # audio only
        a = c.add_stream("aac", rate=48000, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate = 48000
        c.mux(a.encode(f))
        c.mux(a.encode(None))
    write_image(folder / "photo.png", shaky[0][0])
    return {
        "shaky.mp4": "done",
        "odd.mkv": "done",
        "ten.mov": "done",
        "gap.mkv": "done",
        "cut.mp4": "not a readable video",
        "fast.mp4": "truncated",
        "noise.webm": "not a readable video",
        "empty.avi": "not a readable video",
        "voice.mp4": "no video stream",
    }


def test_archive_job_with_videos(trained_checkpoint, shaky, clip, tmp_path, ray_session):
    src, out = tmp_path / "in", tmp_path / "out"
    expect = awkward_folder(src, shaky, clip)
    options = Options(model=str(trained_checkpoint), engine="torch", video=VideoOptions(segment_seconds=4.0))
    summary = deblur_archive(str(src), str(out), options, workers=2, progress=False)
    v = summary["videos"]
    assert (v["listed"], v["done"], v["failed"], v["segments"] >= 7) == (9, 4, 5, True), v
    assert summary["done"] == summary["images"] == 1
    errors = {e["path"]: e["reason"] for e in map(json.loads, (out / "_errors.jsonl").read_text().splitlines())}
    for name, what in expect.items():
        stem = Path(name).stem + ".mp4"
        if what == "done":
            assert (out / stem).exists() and name not in errors, (name, errors.get(name))
        else:
            assert what in errors[name] and name in errors[name], (name, errors.get(name))
            assert not (out / stem).exists(), name
    check_output(out / "shaky.mp4", clip, FPS * SECONDS)
    # the frames are the model's: the first (no earlier frame to blend with) is the engine's output for it
    from deblur.inference import load_engine

    got, given = decoded(out / "shaky.mp4"), decoded(clip)
    expected = load_engine(str(trained_checkpoint), "torch").deblur_image(given[0])
    assert model_share(got[0], given[0], expected) > 0.6  # ≈ 0 for the input passed through
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part") or "_segments" in str(p)]
    assert not leftovers, leftovers
    again = deblur_archive(str(src), str(out), options, workers=2, progress=False)
    assert again["videos"]["skipped"] == 4 and again["videos"]["done"] == 0 and again["videos"]["failed"] == 5
    assert len(all_pts(out / "gap.mp4")) == 60  # its empty middle segment wrote nothing and lost nothing


def test_segment_seams_are_invisible(trained_checkpoint, clip, tmp_path, ray_session):
    """The same clip in one segment and in several: with per-frame deblurring the frames match (up to the
    encoder), and with temporal blending the warm-up makes the seam match too."""
    for temporal in (False, True):
        outs = {}
        for seconds in (4.0, 60.0):
            dest = tmp_path / f"{temporal}-{seconds}.mp4"
            r = deblur_file(
                str(clip),
                str(dest),
                str(trained_checkpoint),
                "torch",
                VideoOptions(temporal=temporal, segment_seconds=seconds, crf=4),
                workers=2 if seconds == 4.0 else 1,
                progress=False,
            )  # one worker: one segment
            assert r["done"] == 1 and r["segments"] == (2 if seconds == 4.0 else 1), r
            outs[seconds] = decoded(dest)
        assert len(outs[4.0]) == len(outs[60.0]) == FPS * SECONDS
        worst = min(psnr(a, b) for a, b in zip(outs[4.0], outs[60.0]))
        assert worst > (40 if not temporal else 35), (temporal, worst)


def test_video_from_a_tar_and_on_s3(trained_checkpoint, clip, tmp_path, bucket, ray_cluster):
    """A video inside a plain .tar (ranged reads of the member) and one on S3 through the single-clip command,
    output uploaded whole."""
    tar = tmp_path / "clips.tar"
    with tarfile.open(tar, "w") as t:
        t.add(clip, arcname="nested/shaky.mp4")
    summary = deblur_archive(
        str(tar),
        str(tmp_path / "out"),
        Options(model=str(trained_checkpoint), engine="torch", video=VideoOptions(temporal=False, segment_seconds=4.0)),
        workers=2,
        progress=False,
    )
    assert summary["videos"]["done"] == 1, summary
    check_output(tmp_path / "out" / "nested" / "shaky.mp4", clip, FPS * SECONDS)

    from deblur import storage

    storage.write_bytes(f"{bucket}/in/shaky.mp4", clip.read_bytes())
    cmd = [
        sys.executable,
        "jobs/video.py",
        f"{bucket}/in/shaky.mp4",
        f"{bucket}/out/sharp.mp4",
        "--model",
        str(trained_checkpoint),
        "--engine",
        "torch",
        "--workers",
        "2",
        "--no-progress",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=job_env(ray_cluster), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"{FPS * SECONDS} frames" in res.stdout
    local = tmp_path / "sharp.mp4"
    local.write_bytes(storage.read_bytes(f"{bucket}/out/sharp.mp4"))
    check_output(local, clip, FPS * SECONDS)
    fs, key = storage.filesystem(f"{bucket}/out")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(key)) == ["sharp.mp4"]  # no segments left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["in.mp4", "out.webm"], "--video-codec h264 writes .mp4 files"),
        (["photo.png", "out.mp4"], "not a video name"),
        (["missing.mp4", "out.mp4"], "missing.mp4: no such file"),
        (["in.mp4", "out.mp4", "--video-crf", "60"], "crf must be within 0..51"),
        (
            ["in.mp4", "out.mp4", "--segment-seconds", "1"],
            "segment_seconds: Input should be greater than or equal to 4",
        ),
    ],
)
def test_single_clip_command_refuses_bad_arguments_in_one_line(args, message, tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "video.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert message in res.stderr, res.stderr


STREAM_SCRIPT = """
import resource, sys, numpy as np
from deblur.video import media
from deblur.video.synthetic import write_video
seconds, folder = float(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
base = (rng.random((96, 160, 3)) * 255).astype(np.uint8)
src = f"{folder}/long.mp4"
frames = (np.roll(base, k, axis=1) for k in range(int(24 * seconds)))  # generated as written: never all in memory
write_video(src, frames, 24, audio_seconds=seconds, crf=30)
item = {"uri": src, "rel": "long.mp4"}
info = media.probe(item)
starts = media.boundaries(info, seconds / 2)
segments = []
for k, start in enumerate(starts):
    writer = media.SegmentWriter(f"{folder}/{k}.mp4", info, crf=30, preset="ultrafast")
    for pts, rgb, warm in media.frames(item, info, start if k else None, starts[k + 1] if k + 1 < len(starts) else None, 8):
        if not warm:
            writer.write(pts, 255 - rgb)
    writer.close()
    segments.append(f"{folder}/{k}.mp4")
media.join(segments, item, info, f"{folder}/out.mp4")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_memory_does_not_grow_with_the_length(tmp_path):
    """Decode → per-frame work → encode → join with audio streams: a video four times longer peaks at about the
    same memory (each run in a fresh process)."""
    peaks = {}
    for seconds in (30, 120):
        folder = tmp_path / str(seconds)
        folder.mkdir()
        res = subprocess.run(
            [sys.executable, "-c", STREAM_SCRIPT, str(seconds), str(folder)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        peaks[seconds] = int(res.stdout.split()[-1])
        assert len(all_pts(folder / "out.mp4")) == 24 * seconds
    # a frame is 46 KB: holding 4× the frames (2,160 more) would add ~100 MB
    assert peaks[120] - peaks[30] < 25, peaks


def test_an_interrupted_video_reuses_its_finished_segments(trained_checkpoint, clip, tmp_path, ray_session):
    """A run killed after its first segment: the next run uses that segment as it is (here a planted one, its
    frames inverted, so its use shows in the output) and deblurs only the rest."""
    from deblur.inference.load import model_fingerprint
    from deblur.video.job import _info_from, plan

    out = tmp_path / "out"
    options = VideoOptions(segment_seconds=4.0)
    item = {"rel": "shaky.mp4", "uri": str(clip), "offset": -1, "size": -1, "out": "shaky.mp4"}
    key = model_fingerprint(str(trained_checkpoint))
    rows = plan(item, options, 2, key, str(out))
    assert len(rows) == 2
    planted = Path(rows[0]["segment"])
    planted.parent.mkdir(parents=True)
    info = _info_from(rows[0])
    writer = media.SegmentWriter(str(planted), info, crf=10)
    kept = [writer.write(p, 255 - rgb) for p, rgb, _ in media.frames(item, info, None, rows[1]["start"], 0)]
    writer.close()
    summary = deblur_archive(
        str(clip.parent),
        str(out),
        Options(model=str(trained_checkpoint), engine="torch", video=options),
        workers=2,
        progress=False,
    )
    assert summary["videos"]["done"] == 1 and summary["videos"]["frames"] == FPS * SECONDS, summary
    got, given = decoded(out / "shaky.mp4"), decoded(clip)
    assert psnr(got[0], 255 - given[0]) > 30 and psnr(got[-1], given[-1]) > 25  # the planted part, then the model's
    assert len(got) == FPS * SECONDS and len(kept) < len(got)
    assert not planted.exists() and not (out / "_segments").exists()  # removed once joined
    # other settings (here another crf) never reuse a segment made with these: the key in its name differs
    other = plan(item, VideoOptions(segment_seconds=4.0, crf=30), 2, key, str(out))
    assert other[0]["segment"] != rows[0]["segment"] and Path(other[0]["segment"]).name == planted.name
    # nor a precision named (fp32 too: on a compiled folder it refuses the TensorRT plan the default may run)
    default, fp32, bf16 = (plan(item, options, 2, key, str(out), p) for p in (None, "fp32", "bf16"))
    assert default[0]["segment"] == rows[0]["segment"]
    assert len({rows[0]["segment"], fp32[0]["segment"], bf16[0]["segment"]}) == 3
    # nor another model under the same name: a run's best.json, or an s3:// object, that changed between runs
    model = tmp_path / "model.pt"
    shutil.copy(trained_checkpoint, model)
    before = model_fingerprint(str(model))
    from deblur.models.shipped import shipped_path

    shutil.copy(shipped_path("default"), model)
    assert model_fingerprint(str(model)) != before
    assert plan(item, options, 2, model_fingerprint(str(model)), str(out))[0]["segment"] != rows[0]["segment"]
