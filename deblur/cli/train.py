"""Train DeblurGAN on Ray Train: the main job.

  deblur train                                          # the embedded default (the shipped config `sample`)
  deblur train --config gopro --set scaling.num_workers=8 --set run.storage_path=s3://b/runs
  deblur train --config ./my.yaml --set train.epochs=3  # a config of your own (a YAML path)
  ray job submit -- deblur train --config gopro         # on a cluster whose image has the package
  ray job submit --working-dir . -- python jobs/train.py --config gopro   # a checkout: the same options

--config takes a shipped config's name (deblur/configs/) or a YAML file. Joins the cluster in RAY_ADDRESS (set by
`ray job submit`) or a running local one; otherwise starts Ray on this machine. Resubmitting the same run name
resumes that run from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from . import common

DEFAULT_CONFIG = "sample"
#: Ray Train's switch (read by its controller, which the driver's environment reaches)
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = common.parser(__doc__, prog)
    shipped = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help=f"a shipped config ({', '.join(shipped)}) or a YAML file (default: {DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    p.add_argument(
        "--verbose", action="store_true", help="Ray's own INFO lines too (Ray Data plans, Ray Train checkpoints)"
    )
    return p.parse_args(argv)


def ensure_shards(cfg) -> None:
    """Prepare, or bring up to date, the shards named by `data.prepare` (the embedded default).

    `shards.prepare` is incremental: a shard whose pairs and blur recipe are unchanged is kept after
    reading its footer, so this is cheap when nothing changed, and shards left by an older version
    with a different synthetic blur (or by other `prepare.options`) are made again instead of trained on.
    """
    from deblur import storage
    from deblur.data import layouts, shards

    if cfg.data.prepare is None:
        return
    spec = cfg.data.prepare
    have = storage.exists(storage.join(cfg.data.uri, shards.MANIFEST))
    if not have:
        print(f"preparing {spec.dataset} shards in {cfg.data.uri} ...")
    try:
        pairs = layouts.discover(spec.dataset, spec.root, **spec.options)
    except layouts.LayoutError as e:
        if not have:
            raise
        print(f"note: cannot check the shards in {cfg.data.uri} against their source ({e}); using them as they are")
        return
    shards.prepare(pairs, cfg.data.uri, shards.layout_info(spec.dataset, spec.root, **spec.options))


def held_out_table(summary: dict, cfg) -> None:
    """PSNR of blurred input, unsharp mask and output on the held-out test photos (the val split if the
    data has no test split), with the best checkpoint; per image for small splits, else the mean. Scored by
    `metrics.score_methods`, the comparison validation reports, so the two tables read alike."""
    import numpy as np
    import torch

    from deblur import metrics, storage
    from deblur.data.shards import read_manifest, read_rows
    from deblur.evaluation.baselines import unsharp
    from deblur.images import decode_image, to_image, to_tensor
    from deblur.models import load_generator

    manifest = read_manifest(cfg.data.uri)
    split = cfg.data.test_split if cfg.data.test_split in manifest["splits"] else cfg.data.val_split
    if manifest["splits"][split]["pairs"] > 32:
        print(
            f"{split} split: {manifest['splits'][split]['pairs']} pairs; score them with deblur evaluate --split {split}"
        )
        return
    rows = [
        r for e in manifest["shards"] if e["split"] == split for r in read_rows(storage.join(cfg.data.uri, e["path"]))
    ]
    g = load_generator(summary["checkpoint"])
    what = (
        "never trained on, not used to pick the checkpoint" if split != cfg.data.val_split else "the validation split"
    )
    print(f"\nheld-out {split!r} images ({what}), PSNR dB:")
    print(f"{'image':<20} {'input':>7} {'unsharp':>8} {'output':>7} {'gain':>6}")
    table = []
    for row in rows:
        blur, sharp = decode_image(row["blur"]), decode_image(row["sharp"])
        with torch.no_grad():
            out = to_image(g(to_tensor(blur)[None])[0])
        s = metrics.score_methods({"input": blur, "unsharp": unsharp(blur), "output": out}, sharp)
        table.append(s)
        print(
            f"{row['key']:<20} {s['input_psnr']:>7.2f} {s['unsharp_psnr']:>8.2f} {s['output_psnr']:>7.2f} {s['gain_psnr']:>+6.2f}"
        )
    mean = {k: float(np.mean([s[k] for s in table])) for k in table[0]}
    print(
        f"{'mean':<20} {mean['input_psnr']:>7.2f} {mean['unsharp_psnr']:>8.2f} {mean['output_psnr']:>7.2f} "
        f"{mean['gain_psnr']:>+6.2f}   (output vs unsharp mask: {mean['output_psnr'] - mean['unsharp_psnr']:+.2f} dB)"
    )
    print(
        f"{'mean SSIM (gopro)':<20} {mean['input_ssim']:>7.4f} {mean['unsharp_ssim']:>8.4f} {mean['output_ssim']:>7.4f}"
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    from deblur import storage
    from deblur.config import load_config

    cfg = load_config(args.config, args.overrides)  # errors here, before Ray starts
    storage.set_s3_endpoint(args.s3_endpoint)
    from deblur.cluster_paths import check_shared, input_path, output_path

    cfg.run.storage_path = output_path(cfg.run.storage_path, "run.storage_path")
    cfg.data.uri = output_path(cfg.data.uri, "data.uri") if cfg.data.prepare else input_path(cfg.data.uri)
    if cfg.loss.lambda_per > 0 and not cfg.loss.allow_random_vgg:
        from torchvision.models import VGG19_Weights

        from deblur.pretrained import check_available

        check_available(VGG19_Weights.IMAGENET1K_V1, "perceptual loss (VGG19)", cfg.loss.vgg_weights_path)
    ensure_shards(cfg)
    from deblur.train.trainer import check_data

    check_data(cfg)
    from deblur.ray_env import init_ray

    t0 = time.time()
    where = init_ray(log_level="INFO" if args.verbose else "WARNING", quiet_workers=True, announce=True)
    if where == "local":  # one machine, no spot nodes to lose: without Ray Train's preemption watcher, whose
        os.environ.setdefault(PREEMPTION_WATCHER, "0")  # start logs an error line about its own restarts
    check_shared(reads={"data.uri": cfg.data.uri}, writes={"run.storage_path": cfg.run.storage_path})
    print(
        f"run {cfg.run.name!r} in {cfg.run.storage_path}; {cfg.scaling.num_workers} worker(s), "
        f"{'GPU' if cfg.scaling.use_gpu else 'CPU'}; {cfg.train.epochs} epochs"
    )
    from deblur.train.trainer import fit

    summary = fit(cfg, "INFO" if args.verbose else "WARNING")
    m = summary["metrics"]
    print(f"\nbest checkpoint: {summary['checkpoint']}")
    print(
        f"  epoch {m['epoch'] + 1}/{cfg.train.epochs}  val PSNR {m['val_psnr']:.2f} dB (input {m['val_psnr_input']:.2f}, gain "
        f"{m['val_psnr_gain']:+.2f})  val SSIM {m['val_ssim']:.4f} (input {m['val_ssim_input']:.4f})"
    )
    print(f"  best.json: {storage.join(summary['run'], 'best.json')}   wall time {time.time() - t0:.0f} s")
    held_out_table(summary, cfg)
    return 0
