"""`python -m deblur.models`: every registered model with its parameter count (and a forward check)."""
from __future__ import annotations

import argparse

import torch

from . import CRITICS, GENERATORS, build_critic, build_generator, count_parameters

DEFAULT_KWARGS = {"unet_fpn": [{"base_channels": 64}, {"base_channels": 16}], "resnet": [{}], "patchgan": [{}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="input side for the output-shape column")
    args = parser.parse_args()
    x = torch.zeros(1, 3, args.size, args.size)
    print(f"{'kind':<10} {'name':<10} {'kwargs':<22} {'parameters':>12}  output for {args.size}²")
    for kind, table, build in (("generator", GENERATORS, build_generator), ("critic", CRITICS, build_critic)):
        for name in table:
            for kw in DEFAULT_KWARGS.get(name, [{}]):
                model = build(name, **kw).eval()
                with torch.no_grad():
                    shape = tuple(model(x).shape)
                print(f"{kind:<10} {name:<10} {str(kw):<22} {count_parameters(model):>12,}  {shape}")


if __name__ == "__main__":
    main()
