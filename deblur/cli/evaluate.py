"""Evaluate a checkpoint (or a compiled model) on a test set: PSNR / SSIM / LPIPS of the output, the blurred
input and the classical baselines (unsharp mask; Wiener where the kernel is known), side by side, and a
report with comparison grids and training curves.

  deblur evaluate --checkpoint runs/sample --data runs/data/sample --out runs/sample/report
  deblur evaluate --checkpoint s3://b/runs/gopro --dataset gopro --root /data/GOPRO_Large --out report/
  deblur evaluate --checkpoint model/ --dataset realblur --root /data/RealBlur --protocol realblur --out r/
  deblur evaluate --checkpoint ckpt.pt --data ./my_pairs --out report/      # my_pairs/{blur,sharp}/
  deblur evaluate --data ./levin --protocol shift --out report/   # recorded shake: best integer shift
  deblur evaluate --data runs/data/sample --real ../shared/data/realblur/lai-real --out report/  # the shipped model
  deblur evaluate --checkpoint runs/shake --data runs/data/shake --real ../shared/data/realblur/kohler \
      --real-compare deblur-nafnet-v1 --out report/   # real shake: blurred | unsharp | v1 | this model
  ray job submit -- deblur evaluate ... --workers 8 [--gpus-per-worker 1]  # over the cluster
  python jobs/evaluate.py ...                                   # a checkout: the same options
"""

from __future__ import annotations

import argparse

from . import common


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    from deblur.evaluation import PROTOCOLS

    p = common.parser(__doc__, prog)
    common.add_model_argument(p, checkpoint=True)
    p.add_argument("--data", help="prepared shards (a split is scored) or a paired blur/ sharp/ folder")
    p.add_argument("--dataset", choices=["gopro", "realblur", "paired"], help="read a dataset folder directly")
    p.add_argument("--root", help="the dataset folder for --dataset")
    p.add_argument("--variant", default="J", choices=["J", "R"], help="RealBlur: J or R")
    p.add_argument("--split", help="split to score (default: test, else val)")
    p.add_argument("--out", default="report", help="report folder (local or s3://)")
    p.add_argument(
        "--protocol",
        default="gopro",
        choices=PROTOCOLS,
        help="gopro (default), basicsr, realblur (ECC-aligned, for RealBlur), shift (blind deblurring of recorded "
        "shake, e.g. Levin et al.'s: gray, best integer shift within ±10 px, 15 px border cropped)",
    )
    common.add_engine_arguments(p)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--lpips-weights", help="torchvision AlexNet ImageNet weights file (else the torch hub cache)")
    p.add_argument(
        "--lpips-random",
        action="store_true",
        help="without ImageNet weights, compute LPIPS on random AlexNet features (labelled; not comparable)",
    )
    p.add_argument("--workers", type=int, default=0, help="N > 0: score on N Ray actors (Ray Data)")
    common.add_gpus_argument(p, "--gpus-per-worker", "actor (with --workers)")
    p.add_argument("--limit", type=int, help="score only the first N pairs")
    p.add_argument(
        "--real",
        help="also show real blurred photos without a sharp truth (a folder or s3:// prefix): "
        "grids of blurred | unsharp mask | model in the report",
    )
    p.add_argument("--real-limit", type=int, default=12, help="at most this many --real photos")
    p.add_argument(
        "--real-compare",
        action="append",
        default=[],
        metavar="MODEL",
        help="also draw this model in the --real grids, before the one evaluated (repeatable; e.g. deblur-nafnet-v1)",
    )
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from deblur.cluster_paths import input_path, output_path
    from deblur.evaluation import EvalOptions

    args.out = output_path(args.out, "--out")
    args.checkpoint, args.data, args.root, args.real = (
        input_path(p) if p else p for p in (args.checkpoint, args.data, args.root, args.real)
    )
    args.options = common.checked(  # checked here, before any model loads
        p,
        lambda: EvalOptions.parse(
            {
                "model": args.checkpoint,
                "out": args.out,
                "data": args.data,
                "dataset": args.dataset,
                "root": args.root,
                "variant": args.variant,
                "split": args.split,
                "protocol": args.protocol,
                "engine": args.engine,
                "precision": args.precision,
                "lpips": not args.no_lpips,
                "lpips_weights": args.lpips_weights,
                "lpips_random": args.lpips_random,
                "workers": args.workers,
                "gpus_per_worker": args.gpus_per_worker,
                "limit": args.limit,
                "progress": not args.no_progress,
                "real": args.real,
                "real_limit": args.real_limit,
                "real_compare": [input_path(m) for m in args.real_compare],
            },
            "evaluation",
        ),
    )
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    from deblur import storage
    from deblur.evaluation import evaluate
    from deblur.evaluation.scoring import METHOD_NAMES

    storage.set_s3_endpoint(args.s3_endpoint)
    result = evaluate(**args.options.model_dump())
    s, h = result["summary"], result["header"]
    print(f"{s['images']} images, protocol {h['protocol']}; {h['LPIPS']}")
    print(f"{'':18}{'PSNR':>9}{'SSIM':>9}{'LPIPS':>9}")
    for method, name in METHOD_NAMES.items():
        if f"{method}_psnr" in s:
            lp = s.get(f"{method}_lpips")
            print(
                f"{name[:18]:18}{s[f'{method}_psnr']:9.2f}{s[f'{method}_ssim']:9.4f}{lp if lp is None else round(lp, 4)!s:>9}"
            )
    print(f"gain {s['gain_psnr']:+.2f} dB; report: {storage.join(args.out, 'index.html')}")
    return 0
