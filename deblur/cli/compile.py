"""Compile the best checkpoint: ONNX (dynamic batch and size, verified against torch) and, when this
machine has TensorRT and a CUDA GPU, a TensorRT engine verified against ONNX Runtime.

  deblur compile --checkpoint runs/sample --out runs/sample/compiled
  deblur compile --checkpoint s3://bucket/runs/gopro --out s3://bucket/models/gopro --precision fp16
  ray job submit -- deblur compile --checkpoint s3://... --out s3://...
  python jobs/compile.py ...                                      # a checkout: the same options
"""

from __future__ import annotations

import argparse
import json

from . import common


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = common.parser(__doc__, prog)
    common.add_model_argument(
        p,
        checkpoint=True,
        help="checkpoint file, Ray checkpoint dir, run dir (uses best.json) or a shipped model's name (default: the "
        "shipped network, deblur-nafnet-v1, which the default route wraps)",
    )
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"], help="TensorRT precision")
    p.add_argument("--min-shape", default="64x64", help="TensorRT profile: smallest HEIGHTxWIDTH")
    p.add_argument("--opt-shape", default="720x1280", help="TensorRT profile: the size it is tuned for")
    p.add_argument("--max-shape", default="2160x3840", help="TensorRT profile: largest (bigger frames are tiled)")
    p.add_argument("--max-batch", type=int, default=4, help="TensorRT profile: largest batch")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    from deblur import storage
    from deblur.cluster_paths import input_path, output_path
    from deblur.inference.compile import compile_checkpoint, parse_shape

    storage.set_s3_endpoint(args.s3_endpoint)
    args.checkpoint, args.out = input_path(args.checkpoint), output_path(args.out, "--out")  # no Ray: this machine
    shapes = [parse_shape(s) for s in (args.min_shape, args.opt_shape, args.max_shape)]
    summary = compile_checkpoint(args.checkpoint, args.out, args.precision, *shapes, max_batch=args.max_batch)
    onnx = summary["onnx"]
    print(f"ONNX: max |onnxruntime - torch| = {onnx['max_abs_error']:.2e} (limit {onnx['tolerance_max_abs']:.0e})")
    trt = summary["tensorrt"]
    print("TensorRT: " + (f"{trt['precision']} engine built" if trt["built"] else f"not built ({trt['reason']})"))
    print(f"wrote {', '.join(summary['files'])} to {args.out}/{summary['version']} and switched compile.json to it")
    print(json.dumps({"out": args.out, "model_hash": summary["model_hash"]}))
    return 0
