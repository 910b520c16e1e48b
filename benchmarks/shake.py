"""Held-out camera shake: how well each model undoes hand shake it never trained on, side by side in one run.

The kernels come from a shake model other than the one training draws from (deblur/data/synth.py walks a
particle after Boracchi & Foi, and rotates the camera): here the camera's velocity is a slow drift plus
two tremor frequencies with random phases, its speed is modulated so the path lingers (the bright knots of
recorded kernels), the path is 15-45 px long and drawn through optics of σ 0.5 px. This generator lives
only in this file, so no training can see it. The photos are never trained on either: the `held-out` split
is McMaster18 and the odd-numbered CBSD68 photos (../shared/data); `--split dev` (the even-numbered CBSD68
photos) is the one to tune on, so the held-out numbers stay honest.

Sets, each scored against the sharp photo:
  - gray shake (Levin-style): 255² gray centre crops, read noise σ 0.5 levels; the `shift` protocol
    (best integer shift within ±10 px, 15 px border, gray), as Levin et al.'s recorded-shake pairs are scored;
  - colour shake: whole colour photos, same kernel family, `shift` protocol, no noise;
  - colour shake + noise: the same with Poisson-Gaussian sensor noise (σ 4 levels at white, read σ 2);
  - sharp photos: no blur at all, output against input (a model must leave them as they are).
Methods: the input, unsharp masking, Wiener deconvolution with the true kernel (non-blind: a bound, not a
competitor), and each --model (default: the shipped default route) through the jobs' engine.

  python benchmarks/shake.py [--model default --model runs/shake] [--split dev] [--limit 20]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import cv2
import numpy as np

import _common

SETS = ("gray shake (Levin-style)", "colour shake", "colour shake + noise", "sharp photos")


def tremor_kernel(rng: np.random.Generator, length: tuple[float, float] = (15, 45), canvas: int = 75) -> np.ndarray:
    """A recorded-looking shake kernel: drift + tremor velocity, lingering speed, optical blur; sums to 1."""
    from deblur.data.synth import normalise_kernel

    t = np.linspace(0, 1, 600)
    velocity = np.zeros(len(t), np.complex128)
    for freq, amp in ((rng.uniform(0.2, 0.8), 1.0), (rng.uniform(1, 3), rng.uniform(0.3, 1)), (rng.uniform(3, 6), 0.3)):
        velocity += amp * (np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)))
        velocity += 1j * amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    speed = 0.15 + np.abs(np.sin(np.pi * rng.uniform(0.5, 2.5) * t + rng.uniform(0, np.pi))) ** rng.uniform(0.5, 2)
    path = np.cumsum(velocity / np.maximum(np.abs(velocity), 1e-6) * speed)
    path = (path - path.mean()) * rng.uniform(*length) / np.abs(np.diff(path)).sum()
    ss = 4  # drawn at 4× and averaged down, then the optics' blur
    big = np.zeros((canvas * ss, canvas * ss))
    rows = np.clip((path.imag * ss + canvas * ss / 2).astype(int), 0, canvas * ss - 1)
    cols = np.clip((path.real * ss + canvas * ss / 2).astype(int), 0, canvas * ss - 1)
    np.add.at(big, (rows, cols), 1.0)
    k = cv2.GaussianBlur(cv2.resize(big, (canvas, canvas), interpolation=cv2.INTER_AREA), (0, 0), 0.5)
    k[k < k.max() * 0.01] = 0
    return normalise_kernel(k)


def photos(split: str, limit: int | None) -> list[tuple[str, np.ndarray]]:
    from deblur.images import read_image

    cbsd = sorted((_common.SHARED_DATA / "sharp" / "cbsd68").glob("*.png"))
    if split == "dev":
        files = cbsd[0::2]
    else:
        files = sorted((_common.SHARED_DATA / "sharp" / "mcmaster18").iterdir()) + cbsd[1::2]
    if not files:
        raise SystemExit(f"no photos under {_common.SHARED_DATA / 'sharp'}: this benchmark needs ../shared/data")
    return [(f.name, read_image(str(f))) for f in files[:limit]]


def pairs(split: str, limit: int | None) -> dict[str, list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]]:
    """(name, blurred, sharp, kernel) per set; seeded per photo, so every run scores the same pairs."""
    from deblur.data.synth import expose, pair_seed

    out: dict[str, list] = {s: [] for s in SETS}
    for name, img in photos(split, limit):
        rng = np.random.default_rng(pair_seed(44, name))
        h, w = img.shape[:2]
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[(h - 255) // 2 :, (w - 255) // 2 :][:255, :255]
        gray3 = np.repeat(gray[..., None], 3, axis=2)
        k = tremor_kernel(rng)
        out[SETS[0]].append((name, expose(gray3, k, noise_sigma=0.5, rng=rng), gray3, k))
        k = tremor_kernel(rng)
        out[SETS[1]].append((name, expose(img, k), img, k))
        out[SETS[2]].append((name, expose(img, k, shot_noise=4.0, noise_sigma=2.0, rng=rng), img, k))
        out[SETS[3]].append((name, img, img, None))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="a model (repeatable; default: the shipped default, the route)")
    p.add_argument("--split", default="held-out", choices=["held-out", "dev"])
    p.add_argument("--limit", type=int, help="photos per set (default: all)")
    p.add_argument("--engine", default="auto")
    args = p.parse_args()
    from deblur.evaluation.baselines import unsharp, wiener_deconvolve
    from deblur.evaluation.protocols import score
    from deblur.inference import load_engine

    engines = {m: load_engine(m, args.engine) for m in args.model or ["default"]}
    rows, details = [], {}
    for set_name, items in pairs(args.split, args.limit).items():
        protocol = "gopro" if set_name == "sharp photos" else "shift"
        psnr: dict[str, list[float]] = {}
        seconds: dict[str, float] = Counter()
        routes: dict[str, Counter] = {m: Counter() for m, e in engines.items() if hasattr(e, "decisions")}
        for name, blurred, sharp, kernel in items:
            outputs = {"input": blurred, "unsharp mask (σ 2, 0.6)": unsharp(blurred)}
            if kernel is not None:
                outputs["Wiener, true kernel (non-blind)"] = wiener_deconvolve(blurred, kernel)
            for m, e in engines.items():
                start = time.perf_counter()
                outputs[f"model {m}"] = e.deblur_image(blurred)
                seconds[m] += time.perf_counter() - start
                if m in routes:  # a kernel-aware route: which way each photo went
                    routes[m].update(d.label for d in e.decisions)
            for method, img in outputs.items():
                psnr.setdefault(method, []).append(score(img, sharp, protocol)[0])
        base = float(np.mean(psnr["input"]))
        for method, values in psnr.items():
            if set_name == "sharp photos" and method == "input":
                continue  # the input is the truth here: each row is the output against it, no gain to show
            mean = float(np.mean(values))
            gain = None if set_name == "sharp photos" else round(mean - base, 2)
            model = method.removeprefix("model ")
            secs = round(seconds[model] / len(items), 2) if model in seconds else None
            rows.append([set_name, len(items), method, round(mean, 2), gain, secs])
        details[set_name] = {
            "protocol": protocol,
            "seconds_per_photo": {m: round(t / len(items), 3) for m, t in seconds.items()},
            "route_reasons": {m: dict(c) for m, c in routes.items()},
            "per_image_psnr": {m: [round(v, 3) for v in vs] for m, vs in psnr.items()},
        }
    _common.report(
        "shake" if args.split == "held-out" else "shake-dev",
        ["set", "pairs", "method", "PSNR dB", "gain dB", "s/photo"],
        rows,
        {
            "split": args.split,
            "models": list(engines),
            "engines": {m: e.info.as_dict() for m, e in engines.items()},
            "details": details,
        },
    )


if __name__ == "__main__":
    main()
