"""`python -m deblur.models`: every registered model with its size and cost (and a forward check).

Parameters, the weights' size in fp32 and fp16, and GFLOPs per megapixel of input (multiply-adds × 2,
counted by torch's FlopCounterMode on a `--size`² input, so padding to the model's stride is included).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import CRITICS, GENERATORS, build_critic, build_generator, count_parameters

DEFAULT_KWARGS = {
    "unet_fpn": [{"base_channels": 64}, {"base_channels": 16}],
    "resnet": [{}],
    "fpn_mobilenet": [{}],
    "nafnet": [{"base_channels": 32}, {"base_channels": 16}],
    "patchgan": [{}],
}


def cost(model: torch.nn.Module, size: int) -> tuple[tuple[int, ...], float]:
    """(output shape, GFLOPs per megapixel) of one size×size image."""
    x = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        shape = tuple(model(x).shape)
    return shape, counter.get_total_flops() / 1e9 / (size * size / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="input side for the output-shape and FLOP columns")
    args = parser.parse_args()
    print(
        f"{'kind':<10} {'name':<14} {'kwargs':<24} {'parameters':>12} {'fp32 MB':>8} {'fp16 MB':>8} "
        f"{'GFLOPs/Mpx':>10}  output for {args.size}²"
    )
    for kind, table, build in (("generator", GENERATORS, build_generator), ("critic", CRITICS, build_critic)):
        for name in table:
            for kw in DEFAULT_KWARGS.get(name, [{}]):
                model = build(name, **kw).eval()
                shape, gflops = cost(model, args.size)
                n = count_parameters(model)
                print(
                    f"{kind:<10} {name:<14} {str(kw):<24} {n:>12,} {n * 4 / 2**20:>8.1f} {n * 2 / 2**20:>8.1f} "
                    f"{gflops:>10.1f}  {shape}"
                )


if __name__ == "__main__":
    main()
