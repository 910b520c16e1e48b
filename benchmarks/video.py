"""Video deblurring on clips whose sharp truth is known, and the video job's speed.

Quality: a virtual camera on a smooth, shaky path over real photos (McMaster18 with ../shared/data, else
scikit-image's coffee and rocket, neither ever trained on), each frame blurred along its own motion during a
half-open shutter, 24 fps, 3 s, 320×192, written as H.264. The job (`deblur.video.deblur_file`, the shipped
model) deblurs each clip per frame and with optical-flow stabilisation; per clip:
  - PSNR/SSIM of the output frames vs the sharp frames (and of the blurred input),
  - temporal error: the mean difference between consecutive frames after warping one onto the other along
    the *sharp* frames' flow (forward–backward checked), for the input, both outputs and the sharp video.
Targets (issue 17): temporal error ≥ 30 % below per-frame, PSNR no more than 0.1 dB below per-frame.

Speed: a longer clip (8 s, 640×352) through the Ray job (Ray already up, as on a cluster; one single-thread
actor per core) vs a bare decode → engine (all cores) → encode loop, in both modes, side by side.
Target: the job ≥ 1.0× the bare loop on this machine's cores.

  python benchmarks/video.py [--model default] [--clips 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

FPS, QUALITY_SECONDS, QUALITY_HW = 24, 3.0, (192, 320)
SPEED_SECONDS, SPEED_HW = 8.0, (352, 640)


def photos(n: int) -> list[tuple[str, np.ndarray]]:
    from deblur.images import read_image

    shared = sorted((_common.SHARED_DATA / "sharp" / "mcmaster18").glob("*.tif"))
    if shared:
        return [(p.name, read_image(str(p))) for p in shared[:n]]
    import skimage.data

    return [(name, getattr(skimage.data, name)()) for name in ("coffee", "rocket")][:n]


def decoded(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def quality(model: str, n: int, tmp: Path) -> tuple[list[list], dict]:
    from deblur.metrics import psnr, ssim
    from deblur.video import VideoOptions, deblur_file
    from deblur.video.synthetic import random_path, render_clip, write_video
    from deblur.video.temporal import temporal_error

    rows, per_clip = [], {}
    for k, (name, photo) in enumerate(photos(n)):
        path = random_path(np.random.default_rng(k), photo.shape[:2], QUALITY_HW, QUALITY_SECONDS, shake_px=6.0)
        blurred, sharp = render_clip(photo, path, QUALITY_HW, int(FPS * QUALITY_SECONDS), FPS)
        src = str(tmp / f"clip{k}.mp4")
        write_video(src, blurred, FPS, crf=10)
        variants = {"blurred input": decoded(src), "sharp (floor)": sharp}
        for mode, temporal in (("per-frame", False), ("flow-stabilised", True)):
            dest = str(tmp / f"clip{k}-{mode}.mp4")
            deblur_file(src, dest, model, options=VideoOptions(temporal=temporal), workers=1, progress=False)
            variants[mode] = decoded(dest)
        result = {}
        for label, frames in variants.items():
            assert len(frames) == len(sharp), (label, len(frames))
            result[label] = {
                "psnr": float(np.mean([psnr(a, b) for a, b in zip(frames, sharp)])),
                "ssim": float(np.mean([ssim(a, b) for a, b in zip(frames, sharp)])),
                "temporal_error": temporal_error(frames, sharp),
            }
            rows.append(
                [
                    name,
                    label,
                    round(result[label]["psnr"], 2),
                    round(result[label]["ssim"], 4),
                    round(result[label]["temporal_error"], 3),
                ]
            )
        per, stab = result["per-frame"], result["flow-stabilised"]
        result["temporal_error_cut"] = 1 - stab["temporal_error"] / per["temporal_error"]
        result["psnr_change_db"] = stab["psnr"] - per["psnr"]
        rows.append(
            [
                name,
                "stabilised vs per-frame",
                f"{result['psnr_change_db']:+.2f} dB",
                "",
                f"{-result['temporal_error_cut']:+.1%}",
            ]
        )
        per_clip[name] = result
        print(
            f"{name}: temporal error {per['temporal_error']:.2f} → {stab['temporal_error']:.2f} "
            f"({result['temporal_error_cut']:.1%} lower), PSNR {per['psnr']:.2f} → {stab['psnr']:.2f} dB",
            flush=True,
        )
    return rows, per_clip


def bare_loop(src: str, dest: str, engine, temporal: bool) -> float:
    """decode → engine → (stabilise) → encode in one process, the engine on every core."""
    from deblur.video import media
    from deblur.video.temporal import Stabiliser

    t0 = time.perf_counter()
    item = {"uri": src, "rel": os.path.basename(src)}
    info = media.probe(item)
    stab = Stabiliser() if temporal else None
    writer = media.SegmentWriter(dest, info)
    for pts, rgb, _ in media.frames(item, info, None, None, 0):
        out = engine.deblur_image(rgb)
        writer.write(pts, stab(out) if stab else out)
    writer.close()
    return time.perf_counter() - t0


def speed(model: str, tmp: Path) -> tuple[list[list], dict]:
    import cv2

    from deblur.inference import load_engine
    from deblur.inference.load import network_of
    from deblur.video import VideoOptions, deblur_file
    from deblur.video.synthetic import random_path, render_clip, write_video

    name, photo = photos(1)[0]
    photo = cv2.resize(photo, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)  # room for 640×352 frames
    path = random_path(np.random.default_rng(7), photo.shape[:2], SPEED_HW, SPEED_SECONDS, shake_px=8.0)
    blurred, _ = render_clip(photo, path, SPEED_HW, int(FPS * SPEED_SECONDS), FPS)
    src = str(tmp / "speed.mp4")
    write_video(src, blurred, FPS, audio_seconds=SPEED_SECONDS)
    frames, cores = len(blurred), os.cpu_count()
    engine = load_engine(network_of(model), threads=cores)  # what the job runs on video: a route's network
    engine.deblur_image(blurred[0])  # warm
    rows, out = [], {}
    for mode, temporal in (("per-frame", False), ("flow-stabilised", True)):
        bare = bare_loop(src, str(tmp / f"bare-{mode}.mp4"), engine, temporal)
        t0 = time.perf_counter()
        r = deblur_file(
            src,
            str(tmp / f"job-{mode}.mp4"),
            model,
            options=VideoOptions(temporal=temporal),
            workers=cores,
            threads=1,
            progress=False,
        )
        job = time.perf_counter() - t0
        assert r["done"] == 1 and r["frames"] == frames, r
        out[mode] = {"bare_fps": frames / bare, "job_fps": frames / job, "ratio": bare / job, "segments": r["segments"]}
        rows.append(
            [
                mode,
                f"{SPEED_HW[1]}×{SPEED_HW[0]}",
                frames,
                round(frames / bare, 2),
                round(frames / job, 2),
                round(bare / job, 2),
                r["segments"],
            ]
        )
        print(f"speed {mode}: bare {frames / bare:.2f} fps, job {frames / job:.2f} fps ({bare / job:.2f}×)", flush=True)
    out["photo"] = name
    return rows, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    _common.start_ray()
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        q_rows, q = quality(args.model, args.clips, Path(tmp))
        s_rows, s = ([], {}) if args.skip_speed else speed(args.model, Path(tmp))
    _common.report(
        "video_quality",
        ["clip", "frames", "PSNR dB", "SSIM", "temporal error"],
        q_rows,
        {"clips": q, "fps": FPS, "seconds": QUALITY_SECONDS, "size": QUALITY_HW, "model": args.model},
    )
    if s_rows:
        print()
        _common.report(
            "video_speed",
            ["mode", "size", "frames", "bare loop fps", "Ray job fps", "job / bare", "segments"],
            s_rows,
            {"speed": s, "cores": os.cpu_count(), "model": args.model},
        )


if __name__ == "__main__":
    main()
