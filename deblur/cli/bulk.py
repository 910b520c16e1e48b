"""Deblur every image and video under a folder, an s3:// prefix or inside a .tar archive, at full resolution,
keeping relative names (videos come out as H.264 MP4 unless --video-codec says otherwise, with their frame
rate, size, rotation and audio). Resumable (finished outputs are skipped), and one bad file never stops the
run: it is listed in <output>/_errors.jsonl.

  deblur bulk --input photos/ --output deblurred/                 # the shipped model
  deblur bulk --input photos/ --output deblurred/ --model runs/sample
  deblur bulk --input s3://b/raw --output s3://b/sharp --model s3://b/models/gopro --workers 8 --gpus-per-worker 1
  ray job submit -- deblur bulk --input s3://... --output s3://... --model ...
  python jobs/bulk.py ...                                         # a checkout: the same options
"""

from __future__ import annotations

import argparse

from . import common


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    from deblur.bulk import SHARP_BELOW
    from deblur.imagefile import PNG_COMPRESSION

    p = common.parser(__doc__, prog)
    p.add_argument("--input", required=True, help="folder, s3://bucket/prefix or archive.tar")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix")
    common.add_model_argument(p)
    common.add_engine_arguments(p)
    p.add_argument("--format", default="same", choices=["same", "png", "jpg", "webp"])
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    p.add_argument(
        "--png-compression",
        type=int,
        default=PNG_COMPRESSION,
        choices=range(10),
        metavar="0-9",
        help="zlib level of PNG outputs (default 1: zlib's RLE strategy, fastest and on photos about as "
        "small as level 6; 2-9: the standard strategy at that level)",
    )
    p.add_argument(
        "--only-blurred",
        type=float,
        nargs="?",
        const=SHARP_BELOW,
        metavar="THRESHOLD",
        help=f"deblur only images whose blur score (0 sharp .. 1 flat) reaches THRESHOLD (default "
        f"{SHARP_BELOW}) and copy the sharper ones through as they are (re-encoded only when --format "
        f"changes it); every score goes to _blur.jsonl",
    )
    common.add_video_arguments(p)
    common.add_workers_argument(p)
    common.add_gpus_argument(p, "--gpus-per-worker", "actor")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--max-megapixels", type=float, default=100.0, help="refuse larger images (decompression bombs)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from deblur.bulk import Options

    args.options = common.checked(  # every option checked here, before Ray starts
        p,
        lambda: Options.parse(
            {
                "model": args.model,
                "engine": args.engine,
                "precision": args.precision,
                "format": args.format,
                "quality": args.quality,
                "max_pixels": int(args.max_megapixels * 1e6),
                "threads": max(1, int(args.cpus_per_worker)),
                "only_blurred": args.only_blurred,
                "png_compression": args.png_compression,
                "video": common.video_options(args),
            },
            "bulk options",
        ),
    )
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    import ray

    from deblur import storage
    from deblur.bulk import deblur_archive
    from deblur.bulk.sources import check_input
    from deblur.cluster_paths import check_shared, input_path, output_path
    from deblur.inference import check_engine_request

    storage.set_s3_endpoint(args.s3_endpoint)
    args.input, args.output = input_path(args.input), output_path(args.output, "--output")
    args.options.model = input_path(args.options.model)
    check_input(args.input)
    check_engine_request(args.options.model, args.engine, args.precision, args.gpus_per_worker)
    common.init_ray_for_workers(args)
    check_shared(reads={"--input": args.input, "--model": args.options.model}, writes={"--output": args.output})
    ray.data.DataContext.get_current().enable_progress_bars = not args.no_progress
    s = deblur_archive(
        args.input,
        args.output,
        args.options,
        args.workers or None,
        args.gpus_per_worker,
        args.cpus_per_worker,
        progress=not args.no_progress,
    )
    copied = f", {s['copied_sharp']} sharp ones copied" if args.only_blurred is not None else ""
    v = s["videos"]
    image_failures = s["failed"] - v["failed"]
    if s["images"] or not v["listed"]:
        print(
            f"{s['done']} done{copied}, {s['skipped']} skipped, {image_failures} failed of {s['images']} images; "
            f"{s['bytes_in'] / 1e6:.1f} MB in, {s['bytes_out'] / 1e6:.1f} MB out; {s['wall_seconds']:.1f} s, "
            f"{s['images_per_second']:.2f} images/s"
            + (f" (the first began after {s['start_up_seconds']:.1f} s)" if s["start_up_seconds"] else "")
        )
    if v["listed"]:
        print(
            f"{v['done']} done, {v['skipped']} skipped, {v['failed']} failed of {v['listed']} videos; "
            f"{v['frames']} frames in {v['segments']} segments; {s['wall_seconds']:.1f} s"
        )
    if s["failed"]:
        print(f"failures listed in {s['errors_file']}")
    return 1 if s["failed"] else 0
