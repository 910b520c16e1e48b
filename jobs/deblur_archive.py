"""Deblur every image and video under a folder, an s3:// prefix or inside a .tar archive, at full resolution,
keeping relative names (videos come out as H.264 MP4 unless --video-codec says otherwise, with their frame
rate, size, rotation and audio). Resumable (finished outputs are skipped), and one bad file never stops the
run: it is listed in <output>/_errors.jsonl.

  python jobs/deblur_archive.py --input photos/ --output deblurred/                 # the shipped model
  python jobs/deblur_archive.py --input photos/ --output deblurred/ --model runs/sample
  python jobs/deblur_archive.py --input s3://b/raw --output s3://b/sharp --model s3://b/models/gopro --workers 8 --gpus-per-worker 1
  ray job submit --working-dir . -- python jobs/deblur_archive.py --input s3://... --output s3://... --model ...
"""
from __future__ import annotations

import argparse

import _common

#: measured on ../shared/data: 0.35 deblurs all 48 Köhler photos and 95 of Lai's 100 real-blur photos, and
#: copies 62 of CBSD68's 68 and 11 of McMaster18's 18 sharp photos through (they score 0.16-0.46)
SHARP_BELOW = 0.35


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The video flags, shared with jobs/deblur_video.py."""
    from deblur.video import CODECS
    from deblur.video.job import MIN_SEGMENT_SECONDS, SEGMENT_SECONDS

    g = p.add_argument_group("videos")
    g.add_argument("--temporal", default="flow", choices=["flow", "off"],
                   help="flow: stabilise the per-frame results along the optical flow (no flicker); off: every frame on its own")
    g.add_argument("--video-codec", default="h264", choices=sorted(CODECS), help="h264 and hevc in MP4, vp9 in WebM")
    g.add_argument("--video-crf", type=int, default=18, metavar="0-51",
                   help="the encoder's constant-quality factor: lower is better and larger (default 18, visually lossless)")
    g.add_argument("--video-preset", default="medium", help="x264/x265 speed preset (ultrafast .. veryslow)")
    g.add_argument("--segment-seconds", type=float, default=SEGMENT_SECONDS,
                   help=f"split videos into segments this long, deblurred in parallel (at least {MIN_SEGMENT_SECONDS})")


def default_workers(args: argparse.Namespace) -> int:
    """--workers, or one actor per GPU (GPU clusters) or per `--cpus-per-worker` CPUs: single-threaded actors
    on every core keep the cores busy while others decode and encode."""
    import ray

    resources = ray.cluster_resources()
    return args.workers or max(1, int(resources.get("GPU", 0) // args.gpus_per_worker) if args.gpus_per_worker
                               else int(resources.get("CPU", 1) // args.cpus_per_worker))


def video_options(args: argparse.Namespace, p: argparse.ArgumentParser):
    from deblur.video import VideoOptions

    try:
        return VideoOptions(temporal=args.temporal == "flow", codec=args.video_codec, crf=args.video_crf,
                            preset=args.video_preset, segment_seconds=args.segment_seconds).check()
    except ValueError as e:
        p.error(str(e))


def parse(argv: list[str] | None) -> argparse.Namespace:
    from deblur.bulk.imagefile import PNG_COMPRESSION
    from deblur.inference import BACKENDS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder, s3://bucket/prefix or archive.tar")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix")
    p.add_argument("--model", default="default",
                   help="checkpoint, run dir (best.json), compiled folder, or a shipped model's name (default: the shipped default)")
    p.add_argument("--engine", default="auto", choices=BACKENDS)
    p.add_argument("--format", default="same", choices=["same", "png", "jpg", "webp"])
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    p.add_argument("--png-compression", type=int, default=PNG_COMPRESSION, choices=range(10), metavar="0-9",
                   help="zlib level of PNG outputs (default 1: zlib's RLE strategy, fastest and on photos about as "
                        "small as level 6; 2-9: the standard strategy at that level)")
    p.add_argument("--only-blurred", type=float, nargs="?", const=SHARP_BELOW, metavar="THRESHOLD",
                   help=f"deblur only images whose blur score (0 sharp .. 1 flat) reaches THRESHOLD (default "
                        f"{SHARP_BELOW}) and copy the sharper ones through as they are (re-encoded only when --format "
                        f"changes it); every score goes to _blur.jsonl")
    add_video_arguments(p)
    p.add_argument("--workers", type=int, default=0, help="engine actors (default: as many as the CPUs/GPUs allow)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--max-megapixels", type=float, default=100.0, help="refuse larger images (decompression bombs)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.quality <= 100:
        p.error("--quality must be within 1..100")
    if args.only_blurred is not None and not 0 < args.only_blurred < 1:
        p.error("--only-blurred must be within 0..1 (blur scores lie there)")
    args.video = video_options(args, p)
    return args


def main(argv: list[str] | None) -> int:
    args = parse(argv)
    import ray

    from deblur import storage
    from deblur.bulk import Options, run
    from deblur.bulk.sources import check_input
    from deblur.ray_env import init_ray

    storage.set_s3_endpoint(args.s3_endpoint)
    check_input(args.input)
    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = not args.no_progress
    workers = default_workers(args)
    threads = max(1, int(args.cpus_per_worker))
    options = Options(args.model, args.engine, args.format, args.quality, int(args.max_megapixels * 1e6), threads,
                      args.only_blurred, args.png_compression, args.video)
    s = run(args.input, args.output, options, workers, args.gpus_per_worker, args.cpus_per_worker,
            progress=not args.no_progress)
    copied = f", {s['copied_sharp']} sharp ones copied" if args.only_blurred is not None else ""
    v = s["videos"]
    image_failures = s["failed"] - v["failed"]
    if s["images"] or not v["listed"]:
        print(f"{s['done']} done{copied}, {s['skipped']} skipped, {image_failures} failed of {s['images']} images; "
              f"{s['bytes_in'] / 1e6:.1f} MB in, {s['bytes_out'] / 1e6:.1f} MB out; {s['wall_seconds']:.1f} s, "
              f"{s['images_per_second']:.2f} images/s")
    if v["listed"]:
        print(f"{v['done']} done, {v['skipped']} skipped, {v['failed']} failed of {v['listed']} videos; "
              f"{v['frames']} frames in {v['segments']} segments; {s['wall_seconds']:.1f} s")
    if s["failed"]:
        print(f"failures listed in {s['errors_file']}")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    _common.run(main)
