"""Train DeblurGAN on Ray Train: the main job.

  python jobs/train.py                                  # the embedded default (jobs/configs/sample.yaml)
  python jobs/train.py --config jobs/configs/gopro.yaml --set scaling.num_workers=8 --set run.storage_path=s3://b/runs
  ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/gopro.yaml

Joins the cluster in RAY_ADDRESS (set by `ray job submit`) or a running local one; otherwise starts Ray
on this machine. Resubmitting the same run name resumes that run from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import time

import _common

DEFAULT_CONFIG = _common.ROOT / "jobs" / "configs" / "sample.yaml"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: the sample)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
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
    """PSNR/SSIM of blurred input vs output for the held-out images, with the best checkpoint."""
    import numpy as np
    import torch

    from deblur import metrics
    from deblur.data.shards import read_manifest, read_rows
    from deblur import storage
    from deblur.images import decode_image, to_tensor, to_uint8
    from deblur.models import load_generator

    manifest = read_manifest(cfg.data.uri)
    rows = [r for e in manifest["shards"] if e["split"] == cfg.data.val_split for r in read_rows(storage.join(cfg.data.uri, e["path"]))]
    if len(rows) > 16:
        m = summary["metrics"]
        print(f"held-out ({m['val_images']} images): input {m['val_psnr_input']:.2f} dB / {m['val_ssim_input']:.4f}  "
              f"output {m['val_psnr']:.2f} dB / {m['val_ssim']:.4f}")
        return
    g = load_generator(summary["checkpoint"])
    print(f"\n{'held-out image':<20} {'input PSNR':>10} {'output PSNR':>11} {'gain':>6} {'input SSIM':>10} {'output SSIM':>11}")
    gains = []
    for row in rows:
        blur, sharp = decode_image(row["blur"]), decode_image(row["sharp"])
        with torch.no_grad():
            out = to_uint8(g(to_tensor(blur)[None])[0])
        pi, po = metrics.psnr(blur, sharp), metrics.psnr(out, sharp)
        si, so = metrics.ssim(blur, sharp), metrics.ssim(out, sharp)
        gains.append(po - pi)
        print(f"{row['key']:<20} {pi:>10.2f} {po:>11.2f} {po - pi:>+6.2f} {si:>10.4f} {so:>11.4f}")
    print(f"{'mean gain':<20} {'':>10} {'':>11} {np.mean(gains):>+6.2f}   (PSNR dB; SSIM convention 'gopro')")


def main(argv: list[str] | None) -> int:
    args = parse(argv)
    from deblur import storage
    from deblur.config import load_config

    cfg = load_config(args.config, args.overrides)  # errors here, before Ray starts
    storage.set_s3_endpoint(args.s3_endpoint)
    ensure_shards(cfg)
    from deblur.train.trainer import check_data

    check_data(cfg)
    from deblur.ray_env import init_ray

    t0 = time.time()
    how = init_ray()
    print(f"Ray: {how}; run {cfg.run.name!r} in {cfg.run.storage_path}; {cfg.scaling.num_workers} worker(s), "
          f"{'GPU' if cfg.scaling.use_gpu else 'CPU'}; {cfg.train.epochs} epochs")
    from deblur.train.trainer import fit

    summary = fit(cfg)
    m = summary["metrics"]
    print(f"\nbest checkpoint: {summary['checkpoint']}")
    print(f"  epoch {m['epoch']}  val PSNR {m['val_psnr']:.2f} dB (input {m['val_psnr_input']:.2f}, gain "
          f"{m['val_psnr_gain']:+.2f})  val SSIM {m['val_ssim']:.4f} (input {m['val_ssim_input']:.4f})")
    print(f"  best.json: {storage.join(summary['run'], 'best.json')}   wall time {time.time() - t0:.0f} s")
    held_out_table(summary, cfg)
    return 0


if __name__ == "__main__":
    _common.run(main)
