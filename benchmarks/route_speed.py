"""The kernel-aware route's cost beside the network it wraps: seconds per megapixel at photo sizes people shoot.

For each size, a sharp photo (coffee, 600×400, tiled with mirrored copies to the size: no upscaling, which would
blur it) and the same shaken by held-out tremor kernels from shake.py (15 and 30 px paths), each through the
shipped network alone and through the route (`deblur-shake-v1`), in one run, alternating, best of `--repeat`.
A shaken photo takes the route's costly path (two blind estimates on a 321² crop, four when those two disagree,
as they do when the blur outgrows the smaller's 25 px; then a Wiener deconvolution of the whole photo, or the
network after them when the estimates disagree; with sensor noise on it, total variation instead of Wiener,
six Fourier solves a channel instead of one); the sharp one its cheapest (blur score, then the network). The
table says which route each took. The estimates cost the same at any size, so the ratio to the network falls
as photos grow.

  python benchmarks/route_speed.py [--sizes 1 4 12] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _common


def mirrored_tiles(photo: np.ndarray, h: int, w: int) -> np.ndarray:
    """photo repeated to h×w, every other copy mirrored so no seam makes an edge the photo does not have."""
    block = np.concatenate([photo, photo[::-1]], axis=0)
    block = np.concatenate([block, block[:, ::-1]], axis=1)
    reps = (-(-h // block.shape[0]), -(-w // block.shape[1]), 1)
    return np.ascontiguousarray(np.tile(block, reps)[:h, :w])


def timed(engine, image: np.ndarray, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        engine.deblur_image(image)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[1.0, 4.0, 12.0], help="megapixels (3:2 photos)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--engine", default="onnxruntime")
    args = p.parse_args()
    from shake import tremor_kernel

    from deblur.data.layouts import sample_photo
    from deblur.data.synth import expose
    from deblur.images import read_image
    from deblur.inference import load_engine
    from deblur.models.shipped import DEFAULT, NETWORK

    network = load_engine(NETWORK, args.engine)
    route = load_engine(DEFAULT, args.engine)
    photo = read_image(str(sample_photo("coffee")))
    kernels = {f"shaken {n} px": tremor_kernel(np.random.default_rng(0), length=(n, n)) for n in (15, 30)}
    rows, raw = [], []
    for mp in args.sizes:
        h = int(round((mp * 1e6 / 1.5) ** 0.5))
        sharp = mirrored_tiles(photo, h, int(h * 1.5))
        images = {what: expose(sharp, k) for what, k in kernels.items()} | {"sharp": sharp}
        noisy = expose(sharp, kernels["shaken 15 px"], shot_noise=4.0, noise_sigma=2.0, rng=np.random.default_rng(0))
        images["shaken 15 px + noise"] = noisy  # deconvolved by total variation: six Fourier solves, not one
        for what, image in images.items():
            t_net, t_route = timed(network, image, args.repeat), timed(route, image, args.repeat)
            d = route.decisions[0]
            reason = f"{d.label} ({d.estimates} estimates)" if d.estimates else d.label
            megapixels = image.shape[0] * image.shape[1] / 1e6
            rows.append(
                [
                    f"{megapixels:.1f}",
                    what,
                    reason,
                    round(t_net / megapixels, 2),
                    round(t_route / megapixels, 2),
                    round(t_route / t_net, 2),
                ]
            )
            raw.append(
                {"megapixels": megapixels, "photo": what, "route": reason, "network_s": t_net, "route_s": t_route}
            )
    _common.report(
        "route_speed",
        ["MP", "photo", "route took", "network s/MP", "route s/MP", "route / network"],
        rows,
        {"engine": network.info.as_dict(), "runs": raw},
    )


if __name__ == "__main__":
    main()
