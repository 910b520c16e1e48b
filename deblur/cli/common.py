"""What every sub-command shares: one-line errors instead of traceback walls, logging, and the options and Ray
set-up of the stages whose engines run on actors (bulk, video, serve, evaluate)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a stage's main and exit with its code; user errors (ValueError/OSError and subclasses) become one line
    on stderr, exit code 1, or the error's own `exit_code` (2 for a path the cluster's nodes cannot all use:
    `deblur.cluster_paths`)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = getattr(e, "exit_code", 1)
    sys.exit(code)


def parser(doc: str | None, prog: str | None) -> argparse.ArgumentParser:
    """A stage's parser: its docstring (examples first) as the description, kept as written."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


MODEL_HELP = (
    "checkpoint, run dir (best.json), compiled folder, or a shipped name (default: deblur-shake-v1, blind "
    "deconvolution for camera shake and the shipped network deblur-nafnet-v1 for the rest; deblur-nafnet-v1: the "
    "network alone)"
)


def add_model_argument(p: argparse.ArgumentParser, checkpoint: bool = False, help: str = MODEL_HELP) -> None:
    """--model, as every stage that runs a model takes it; `checkpoint`: also its older name --checkpoint (compile,
    evaluate), the value then in `args.checkpoint`."""
    flags = ("--checkpoint", "--model") if checkpoint else ("--model",)
    p.add_argument(*flags, dest="checkpoint" if checkpoint else "model", default="default", help=help)


def checked(p: argparse.ArgumentParser, build: Callable[[], T]) -> T:
    """`build()`, a stage's options checked as they are built (`Strict.parse`) before Ray starts; a ConfigError is the
    parser's own usage error (one line, exit code 2)."""
    from deblur.options import ConfigError

    try:
        return build()
    except ConfigError as e:
        p.error(str(e))


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--engine and --precision, as every job that deblurs takes them (`deblur.inference.load_engine`)."""
    from deblur.inference import BACKENDS, PRECISIONS

    p.add_argument("--engine", default="auto", choices=BACKENDS)
    p.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="default: fp32, or a compiled folder's TensorRT plan as it was built (fp32 named refuses an fp16 "
        "plan); bf16: on a CPU with AMX or AVX512-BF16, ~1.3x faster than fp32 with images within a few uint8 "
        "levels (the torch engine; README, Engines); bf16/fp16 on a GPU (torch autocast)",
    )


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The video flags of `deblur bulk` and `deblur video`."""
    from deblur.video import CODECS
    from deblur.video.job import MIN_SEGMENT_SECONDS, SEGMENT_SECONDS

    g = p.add_argument_group("videos")
    g.add_argument(
        "--temporal",
        default="flow",
        choices=["flow", "off"],
        help="flow: stabilise the per-frame results along the optical flow (no flicker); off: every frame on its own",
    )
    g.add_argument("--video-codec", default="h264", choices=sorted(CODECS), help="h264 and hevc in MP4, vp9 in WebM")
    g.add_argument(
        "--video-crf",
        type=int,
        default=18,
        metavar="0-51",
        help="the encoder's constant-quality factor: lower is better and larger (default 18, visually lossless)",
    )
    g.add_argument("--video-preset", default="medium", help="x264/x265 speed preset (ultrafast .. veryslow)")
    g.add_argument(
        "--segment-seconds",
        type=float,
        default=SEGMENT_SECONDS,
        help=f"split videos into segments this long, deblurred in parallel (at least {MIN_SEGMENT_SECONDS})",
    )


def add_workers_argument(p: argparse.ArgumentParser) -> None:
    """--workers of the jobs whose engine actors form a pool (bulk, video; `deblur.ray_env.actor_pool`)."""
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="engine actors: on a cluster at most this many, the pool growing as nodes join (default: as many as "
        "the cluster's autoscaler allows, else its nodes hold); on a Ray of the job's own, this many where they fit "
        "(default: one per --cpus-per-worker CPUs)",
    )


def add_gpus_argument(p: argparse.ArgumentParser, flag: str, per: str) -> None:
    """`flag` (--gpus-per-worker, Serve's --num-gpus): a number of GPUs, or "auto" (the default), resolved once
    Ray is up by `deblur.ray_env.actor_gpus`."""
    from deblur.ray_env import gpu_request

    def gpus(text: str) -> float | str:
        try:
            return gpu_request(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument(
        flag,
        type=gpus,
        default="auto",
        metavar="N|auto",
        help=f"GPUs per {per} (default auto: 1 when the Ray cluster has GPUs, else 0 and the models run on CPUs; "
        "an autoscaler's GPU nodes that have not started count only when asked for with a number)",
    )


def resolve_gpus(args: argparse.Namespace, attr: str, flag: str, where: str) -> None:
    """`args.<attr>` resolved on the Ray joined or started (`deblur.ray_env.resolve_actor_gpus`), and where it
    was "auto" (`args.gpus_auto`), what that chose said where it matters."""
    import ray

    from deblur.ray_env import resolve_actor_gpus

    args.gpus_auto = getattr(args, attr) == "auto"
    gpus = resolve_actor_gpus(getattr(args, attr), args.engine, args.precision, where, flag)
    setattr(args, attr, gpus)
    if args.gpus_auto and (gpus or where != "local"):  # a laptop without a GPU is no news; a cluster's choice is
        from deblur.ray_env import configured_most

        total, most = ray.cluster_resources().get("GPU", 0.0), configured_most("GPU")
        print(
            f"{flag} auto: {gpus:g} GPU each ({total:g} in the Ray cluster"
            + (f", up to {most:g} as its autoscaler adds nodes)" if most else ")")
            if gpus
            else f"{flag} auto: 0, the Ray cluster has no GPU node (a number asks for them); the models run on CPUs",
            flush=True,
        )


def check_local_ray(
    engine: str,
    precision: str | None,
    cpus: tuple[str, float],
    gpus: tuple[str, float],
    at_once: tuple[str, int] = ("", 1),
) -> None:
    """For a Ray the job started itself (`init_ray()` said "local"): it has no autoscaler and runs every actor
    on this machine, so actors it could never place, or an engine this hardware refuses, are one line now
    rather than a hang or a traceback from every actor. `cpus`/`gpus`: (flag, amount per actor); `at_once`:
    (flag, actors that must all run before the job goes on: Serve's --min-replicas; one at least)."""
    from deblur.inference import check_engine_here
    from deblur.ray_env import check_actors_fit

    count_flag, count = at_once
    wanted = {}
    for resource, (flag, amount) in (("CPU", cpus), ("GPU", gpus)):
        what = f"{flag} {amount:g}" if count <= 1 else f"{count_flag} {count} × {flag} {amount:g}"
        wanted[resource] = (what, amount * max(count, 1))
    check_actors_fit(wanted)
    check_engine_here(engine, precision, gpus[1])


def init_ray_for_workers(args: argparse.Namespace) -> None:
    """`init_ray`, --gpus-per-worker resolved (`resolve_gpus`), then, on a Ray of its own, `check_local_ray`
    with the actors' --cpus-per-worker and --gpus-per-worker (the jobs whose actors take those flags: bulk,
    video)."""
    from deblur.ray_env import init_ray

    where = init_ray(announce=True)
    resolve_gpus(args, "gpus_per_worker", "--gpus-per-worker", where)
    if where == "local":
        check_local_ray(
            args.engine,
            args.precision,
            cpus=("--cpus-per-worker", args.cpus_per_worker),
            gpus=("--gpus-per-worker", args.gpus_per_worker),
        )


def video_options(args: argparse.Namespace) -> dict:
    """The video flags as `deblur.video.VideoOptions` fields (validated by the job's own options)."""
    return {
        "temporal": args.temporal == "flow",
        "codec": args.video_codec,
        "crf": args.video_crf,
        "preset": args.video_preset,
        "segment_seconds": args.segment_seconds,
    }
