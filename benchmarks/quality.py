"""Deblurring quality on photos that no training used, blurred with linear motion of 9-21 px at random angles
(the blur the README's and the model card's numbers are measured on), side by side in one run:
  - the blurred input,
  - unsharp masking: the fixed one every report shows, and the best of a grid of (σ, amount) chosen on these
    very images (an optimistic classical reference: nobody tunes per test set),
  - Wiener deconvolution with the true kernel (non-blind: a bound no blind method is expected to reach),
  - each model given with --model (default: the shipped default route), through the same engine the jobs use, in each
    --precision given (default fp32; bf16 runs on torch where the CPU has AMX or AVX512-BF16; results/quality-<them>.json).
Sets: the sample's test photos (scikit-image's coffee and rocket, always here) and, where ../shared/data is
present, McMaster18 and CBSD68. Each photo gets --variants kernels (seeded: every run sees the same pairs).

  python benchmarks/quality.py [--model default] [--model runs/sample] [--variants 2] [--precision fp32 --precision bf16]
"""

from __future__ import annotations

import argparse

import numpy as np

import _common

UNSHARP_GRID = [(s, a) for s in (0.5, 1.0, 2.0, 3.0) for a in (0.3, 0.6, 1.0, 1.5)]


def eval_pairs(variants: int) -> dict[str, list[dict]]:
    """Encoded rows (key, blur, sharp, kernel) per set, made by the data plane's own code."""
    from deblur.data import layouts, shards

    sets = {"sample test (coffee, rocket)": layouts.sample_test_pairs()}
    for name, folder in (("McMaster18", "mcmaster18"), ("CBSD68", "cbsd68")):
        root = _common.SHARED_DATA / "sharp" / folder
        if root.is_dir():
            sets[name] = layouts.synthetic(str(root), val_fraction=1.0, online=True, eval_variants=variants)
    return {name: [shards.encode_pair(p) for p in pairs] for name, pairs in sets.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="a model (repeatable; default: the shipped default, the route)")
    p.add_argument("--variants", type=int, default=2, help="kernels per McMaster/CBSD68 photo")
    p.add_argument("--engine", default="auto")
    p.add_argument("--precision", action="append", help="fp32 (default), bf16, fp16; repeatable: side by side")
    args = p.parse_args()
    from deblur import metrics
    from deblur.evaluation.baselines import unsharp, wiener_deconvolve
    from deblur.images import decode_image
    from deblur.inference import load_engine

    models = args.model or ["default"]
    precisions = args.precision or ["fp32"]
    engines = {
        m if len(precisions) == 1 else f"{m} ({prec})": load_engine(m, args.engine, precision=prec)
        for m in models
        for prec in precisions
    }
    rows, details = [], {}
    for set_name, pairs in eval_pairs(args.variants).items():
        psnr: dict[str, list[float]] = {}
        ssim: dict[str, list[float]] = {}
        grid = np.zeros(len(UNSHARP_GRID))
        routes: dict[str, list[str]] = {m: [] for m, e in engines.items() if hasattr(e, "decisions")}
        for row in pairs:
            blur, sharp = decode_image(row["blur"]), decode_image(row["sharp"])
            kernel = np.asarray(row["kernel"], np.float32)
            outputs = {
                "blurred input": blur,
                "unsharp mask (σ 2, 0.6; reports)": unsharp(blur),
                "Wiener, true kernel (non-blind)": wiener_deconvolve(blur, kernel),
            }
            outputs |= {f"model {m}": e.deblur_image(blur) for m, e in engines.items()}
            for m in routes:  # a kernel-aware route: which way each pair went, beside its PSNR below
                routes[m] += [d.label for d in engines[m].decisions]
            for method, img in outputs.items():
                psnr.setdefault(method, []).append(metrics.psnr(img, sharp))
                ssim.setdefault(method, []).append(metrics.ssim(img, sharp))
            grid += [metrics.psnr(unsharp(blur, s, a), sharp) for s, a in UNSHARP_GRID]
        best = int(np.argmax(grid))
        base = float(np.mean(psnr["blurred input"]))
        table = {m: (float(np.mean(psnr[m])), float(np.mean(ssim[m]))) for m in psnr}
        table[f"unsharp mask, best of grid (σ {UNSHARP_GRID[best][0]}, {UNSHARP_GRID[best][1]})"] = (
            grid[best] / len(pairs),
            None,
        )
        for method, (ps, ss) in table.items():
            rows.append(
                [set_name, len(pairs), method, round(ps, 2), None if ss is None else round(ss, 4), round(ps - base, 2)]
            )
        details[set_name] = {
            "pairs": len(pairs),
            "per_image_psnr": {m: [round(v, 3) for v in vs] for m, vs in psnr.items()},
            "route_per_image": routes,
        }
    _common.report(
        "quality" if precisions == ["fp32"] else "quality-" + "-".join(precisions),
        ["set", "pairs", "method", "PSNR dB", "SSIM (gopro)", "gain dB"],
        rows,
        {
            "blur": "linear motion 9-21 px, random angle, no noise",
            "models": models,
            "engines": {name: e.info.as_dict() for name, e in engines.items()},
            "details": details,
        },
    )


if __name__ == "__main__":
    main()
