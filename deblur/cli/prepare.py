"""Pack a dataset into Parquet shards on storage (local path or s3://).

  deblur prepare --dataset gopro --root /data/GOPRO_Large --out s3://bucket/gopro
  deblur prepare --dataset sample --out runs/data/sample
  deblur prepare --dataset synthetic --root ./sharp_photos --online --out ./shards  # blur drawn per crop
  ray job submit -- deblur prepare --dataset paired --root /data/x --out s3://b/x
  python jobs/prepare_data.py ...                                 # a checkout: the same options

Training reads them with Ray Data (data.uri in its config). Preparing again keeps the shards whose pairs and
blur are unchanged.
"""

from __future__ import annotations

import argparse

from . import common


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    from deblur.data.layouts import DATASETS
    from deblur.data.synth import KINDS, MODES

    p = common.parser(__doc__, prog)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", help="dataset folder (not needed for 'sample')")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--blur-kind", default="blur", choices=["blur", "blur_gamma"], help="GoPro: which blurred frames")
    p.add_argument("--variant", default="J", choices=["J", "R"], help="RealBlur: J (JPEG) or R (raw)")
    p.add_argument("--split", default="train", help="paired: split name for a single blur/sharp folder")
    p.add_argument("--val-fraction", type=float, default=0.1, help="synthetic: share held out as 'val'")
    p.add_argument(
        "--online",
        action="store_true",
        help="synthetic: keep training photos sharp and draw a fresh blur for every training crop "
        "(the config's data.blur); held-out photos get fixed linear motion blur of 9-21 px",
    )
    p.add_argument("--variants", type=int, default=None, help="synthetic/sample: blurred copies per training photo")
    p.add_argument("--kernel", default="motion", choices=KINDS, help="synthetic blur kernel kind")
    p.add_argument("--blur-mode", default="physical", choices=MODES)
    p.add_argument("--max-len", type=float, default=60.0, help="synthetic motion: trajectory length in px")
    p.add_argument("--gamma", type=float, default=None, help="synthetic: blur in linear light with this gamma")
    p.add_argument("--noise", type=float, default=0.0, help="synthetic: Gaussian noise σ in 0..255 units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-mb", type=float, default=256.0, help="target shard size")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable pairs (listed in the manifest)")
    p.add_argument("--workers", default="auto", help="'0': encode in this process; 'auto'/N: encode through Ray")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    from deblur import storage
    from deblur.cluster_paths import check_shared, output_path
    from deblur.data import layouts, shards

    storage.set_s3_endpoint(args.s3_endpoint)
    args.out = output_path(args.out, "--out")  # written here; trainings on other nodes check it as they start
    synth = {
        "kind": args.kernel,
        "mode": args.blur_mode,
        "max_len": args.max_len,
        "gamma": args.gamma,
        "noise_sigma": args.noise,
        "seed": args.seed,
    }
    options: dict = {}
    if args.dataset == "gopro":
        options = {"blur_kind": args.blur_kind}
    elif args.dataset == "realblur":
        options = {"variant": args.variant}
    elif args.dataset == "paired":
        options = {"split": args.split}
    elif args.dataset == "synthetic":
        options = {"val_fraction": args.val_fraction, "online": args.online}
        options |= {} if args.online else {"variants": args.variants or 1, "synth": synth}
    elif args.variants:  # the sample with prepare-time blur instead of per-crop blur
        options = {"online": False, "variants": args.variants, "synth": synth}
    pairs = layouts.discover(args.dataset, args.root, **options)
    encoder = shards.local_map
    if args.workers != "0" and (args.workers != "auto" or len(pairs) > 64):
        from deblur.data.pipeline import ray_map_ordered
        from deblur.ray_env import init_ray

        init_ray(num_cpus=None if args.workers == "auto" else int(args.workers), announce=True)
        check_shared(reads={"--root": args.root})  # Ray's tasks read the pairs' files
        encoder = ray_map_ordered
    manifest = shards.prepare(
        pairs,
        args.out,
        shards.layout_info(args.dataset, args.root, **options),
        shard_mb=args.shard_mb,
        skip_bad=args.skip_bad,
        encoder=encoder,
        progress=not args.no_progress,
    )
    counts = ", ".join(
        f"{s}: {v['pairs']} pairs in {v['shards']} shards" for s, v in sorted(manifest["splits"].items())
    )
    print(f"prepared {args.out}: {counts}; skipped {len(manifest['skipped'])}")
    return 0
