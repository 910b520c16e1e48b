"""The evaluation driver's memory on a GoPro-sized test set: does it stay bounded as the set grows?

`evaluate()` streams rows to the scorer and keeps only keys and metrics (the report re-reads the few rows it
shows). This measures the driver's peak resident memory on a GOPRO_Large-shaped test split of 1280×720 PNG
pairs (11 scenes, 1,111 pairs as in GoPro's test set) and on a tenth of it, side by side, each in a fresh
process; beside them, the PNG bytes a driver that listed every row would have held.

The engine is an identity model: the driver's memory does not depend on what the model computes, and a real
network would spend ~1 s per 720p pair on 2 CPU cores without changing what the driver keeps. LPIPS is off
(its AlexNet weights are a download); everything else (decode, baselines, SSIM/PSNR under the GoPro protocol,
writing each output PNG, the report with its grids) runs as `deblur evaluate` runs it.

  python benchmarks/eval_memory.py [--root GOPRO_Large] [--pairs 1111] [--distinct 101]
With --root, the real test split is read; without it, a GoPro-shaped folder is made from bundled photos
(--distinct different pairs, hard-linked under GoPro's names up to --pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

SCENES = 11


def make_gopro(root: Path, pairs: int, distinct: int) -> None:
    """test/<scene>/{blur,sharp}/NNNNNN.png like GOPRO_Large, 1280×720, blurred with the data plane's linear kernels."""
    from skimage import data as skdata

    from deblur.data import synth
    from deblur.images import cover, encode_png

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.immunohistochemistry()]
    rng = np.random.default_rng(0)
    made: list[tuple[Path, Path]] = []
    for i in range(pairs):
        scene = root / "test" / f"GOPR{i % SCENES:04d}_11_00"
        for sub in ("blur", "sharp"):
            (scene / sub).mkdir(parents=True, exist_ok=True)
        blur_path, sharp_path = scene / "blur" / f"{i // SCENES:06d}.png", scene / "sharp" / f"{i // SCENES:06d}.png"
        if i < distinct:
            sharp = cover(photos[i % len(photos)], 720, 1280, view=i // len(photos))
            kernel = synth.normalise_kernel(synth.linear_kernel(float(rng.uniform(9, 21)), float(rng.uniform(0, 180))))
            sharp_path.write_bytes(encode_png(sharp))
            blur_path.write_bytes(encode_png(synth.apply_kernel(sharp, kernel)))
            made.append((blur_path, sharp_path))
        else:
            src_blur, src_sharp = made[i % distinct]
            os.link(src_blur, blur_path)
            os.link(src_sharp, sharp_path)


def child(root: str, out: str, limit: int) -> None:
    """One evaluation in this process; prints its peak RSS as JSON."""
    from deblur.evaluation import evaluate
    from deblur.inference.engine import Engine, EngineInfo

    class Identity(Engine):
        info = EngineInfo("identity", "cpu", "fp32", 1, "identity (benchmark)")

        def _infer(self, batch):
            return batch

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = evaluate(
        "identity", out, dataset="gopro", root=root, limit=limit, lpips=False, progress=False, engine_factory=Identity
    )
    print(
        json.dumps(
            {
                "images": result["header"]["images"],
                "seconds": time.perf_counter() - t0,
                "rss_before_mb": before / 1024,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="a GOPRO_Large folder (default: make a GoPro-shaped one)")
    p.add_argument("--pairs", type=int, default=1111)
    p.add_argument("--distinct", type=int, default=101)
    p.add_argument("--child", nargs=3, metavar=("ROOT", "OUT", "LIMIT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    from deblur.data import layouts

    with tempfile.TemporaryDirectory(prefix="eval-memory-") as tmp:
        root = args.root or str(Path(tmp) / "GOPRO_Large")
        if not args.root:
            t0 = time.perf_counter()
            make_gopro(Path(root), args.pairs, args.distinct)
            print(
                f"made {args.pairs} GoPro-shaped pairs ({args.distinct} distinct) in {time.perf_counter() - t0:.0f} s"
            )
        test = [pr for pr in layouts.gopro(root) if pr.split == "test"]
        row_mb = sum(os.path.getsize(pr.blur) + os.path.getsize(pr.sharp) for pr in test) / 2**20
        rows = []
        for n in (len(test) // 10, len(test)):
            out = str(Path(tmp) / f"report-{n}")
            run = subprocess.run(
                [sys.executable, __file__, "--child", root, out, str(n)], capture_output=True, text=True
            )
            if run.returncode:
                sys.exit(f"evaluation of {n} pairs failed:\n{run.stderr[-3000:]}")
            r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{n} pairs: peak {r['peak_rss_mb']:.0f} MB in {r['seconds']:.0f} s", flush=True)
            rows.append(
                [
                    r["images"],
                    round(r["peak_rss_mb"]),
                    round(r["peak_rss_mb"] - r["rss_before_mb"]),
                    round(row_mb * n / len(test)),
                    round(r["seconds"]),
                    round(r["images"] / r["seconds"], 2),
                ]
            )
        rows[-1].append(round(rows[-1][1] / rows[0][1], 2))
        rows[0].append(1.0)
    _common.report(
        "eval_memory",
        [
            "pairs",
            "driver peak RSS MB",
            "growth during run MB",
            "PNG bytes of all rows MB",
            "seconds",
            "pairs/s",
            "peak vs a tenth",
        ],
        rows,
        {
            "size": "1280x720",
            "engine": "identity",
            "lpips": False,
            "data": args.root or f"GoPro-shaped, {args.distinct} distinct pairs hard-linked to {args.pairs}",
        },
    )


if __name__ == "__main__":
    main()
