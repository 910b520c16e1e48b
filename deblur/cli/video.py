"""Deblur one video: the archive job's video path (segments in parallel on Ray, optical-flow stabilisation,
the source's frame rate, size, rotation and audio kept) on a single file.

  deblur video shaky.mp4 sharp.mp4                         # the shipped model, H.264 MP4
  deblur video s3://b/in.mov s3://b/out.mp4 --model s3://b/models/gopro --temporal off
  ray job submit -- deblur video s3://... s3://... --gpus-per-worker 1
  python jobs/video.py ...                                 # a checkout: the same options
"""

from __future__ import annotations

import argparse
import glob
import os
import posixpath

from . import common


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:

    p = common.parser(__doc__, prog)
    p.add_argument("input", help="video file (local or s3://)")
    p.add_argument("output", help="where the deblurred video goes (.mp4 for h264/hevc, .webm for vp9)")
    common.add_model_argument(
        p,
        help="checkpoint, run dir (best.json), compiled folder, or a shipped name (default: the shipped network, "
        "deblur-nafnet-v1; a route such as deblur-shake-v1 runs its network on video: a kernel per frame flickers)",
    )
    common.add_engine_arguments(p)
    common.add_video_arguments(p)
    common.add_workers_argument(p)
    common.add_gpus_argument(p, "--gpus-per-worker", "actor")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from deblur.video import CODECS, VideoOptions, is_video

    # checked here, before Ray starts
    args.video = common.checked(p, lambda: VideoOptions.parse(common.video_options(args), "video options"))

    if not is_video(args.input):
        p.error(f"{args.input}: not a video name (expected one of .mp4 .mov .mkv .avi .webm .m4v)")
    want = "." + CODECS[args.video.codec][1]
    if not args.output.lower().endswith(want):
        p.error(f"{args.output}: --video-codec {args.video.codec} writes {want} files")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    import ray

    from deblur import storage
    from deblur.cluster_paths import check_shared, input_path, output_path
    from deblur.inference import check_engine_request
    from deblur.video import deblur_file, drop_leftovers

    storage.set_s3_endpoint(args.s3_endpoint)
    args.input, args.output = input_path(args.input), output_path(args.output, "output")
    args.model = input_path(args.model)
    if not storage.exists(args.input):
        raise FileNotFoundError(f"{args.input}: no such file")
    check_engine_request(args.model, args.engine, args.precision, args.gpus_per_worker)
    folder, name = posixpath.split(args.output)
    if not storage.is_remote(args.output):  # what a run killed mid-write leaves: never under the final name
        for partial in glob.glob(glob.escape(args.output) + ".tmp-*"):
            os.remove(partial)
    if storage.exists(args.output):
        drop_leftovers(folder or ".", {name})  # segments of a run killed after its join
        print(f"{args.output} exists already: nothing to do (delete it to deblur again)")
        return 0
    common.init_ray_for_workers(args)
    check_shared(reads={"input": args.input, "--model": args.model}, writes={"the output's folder": folder or "."})
    ray.data.DataContext.get_current().enable_progress_bars = not args.no_progress
    r = deblur_file(
        args.input,
        args.output,
        args.model,
        args.engine,
        args.video,
        args.workers or None,
        args.gpus_per_worker,
        args.cpus_per_worker,
        max(1, int(args.cpus_per_worker)),
        not args.no_progress,
        precision=args.precision,
    )
    if r["failed"]:
        print(f"error: {r['errors'][0]['reason']}")
        return 1
    print(f"{args.output}: {r['frames']} frames in {r['segments']} segments, {r['seconds']:.1f} s of worker time")
    return 0
