"""Inference engines side by side: torch eager, torch.compile, ONNX Runtime (its CUDA provider on a GPU; there
also torch fp16 and bf16 and TensorRT fp16; on a CPU with AMX or AVX512-BF16 torch bf16) at 256², 1280×720 and
1920×1080, batch 1 and 4, in one run; plus the generator's GFLOPs per megapixel and the achieved GFLOP/s against
a large matmul on the same device in the engine's precision.

  python benchmarks/engines.py                  # unet_fpn base 16 (a quarter of the GoPro recipe's width)
  python benchmarks/engines.py --base 64        # unet_fpn's full width
  python benchmarks/engines.py --model default  # a real model: shipped name, checkpoint or run dir (S3 too)
  python benchmarks/engines.py --model default --sizes 800x800 --batches 1 --threads 1  # one bulk actor's engine
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401  (sys.path)

SIZES = [(256, 256), (720, 1280), (1080, 1920)]


def gflops_per_megapixel(model: torch.nn.Module, multiple: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, 2 * multiple, 2 * multiple)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9 / (x.shape[2] * x.shape[3] / 1e6)


def matmul_gflops(device: str, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a @ b
        reps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def time_engine(engine, batch: np.ndarray, budget_s: float) -> float:
    """Seconds per call: one warm-up, then repeat until the budget (at least twice)."""
    engine.deblur_batch(batch)
    times = []
    while len(times) < 2 or sum(times) < budget_s:
        t0 = time.perf_counter()
        engine.deblur_batch(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=int, default=16, help="unet_fpn base channels")
    p.add_argument("--model", help="measure this model instead (its trained weights; results/engines-<name>.json)")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timing per cell")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--sizes", default=",".join(f"{w}x{h}" for h, w in SIZES), help="WIDTHxHEIGHT,...")
    p.add_argument(
        "--threads", type=int, help="CPU engine threads (default: every core); results/engines-<model>-t<N>.json"
    )
    args = p.parse_args()
    sizes = [tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes.split(",")]

    from deblur.inference import EngineError
    from deblur.inference.onnx_engine import OnnxEngine, add_metadata, export_onnx
    from deblur.inference.tensorrt_engine import TensorRTEngine, build_engine, tensorrt_status
    from deblur.inference.torch_engine import TorchEngine
    from deblur.models import build_generator, load_generator
    from deblur.models.common import cpu_has_native_bf16
    from deblur.models.reference import resolve_checkpoint

    torch.manual_seed(0)
    if args.model:
        model = load_generator(resolve_checkpoint(args.model))
        label = re.sub(r"[^A-Za-z0-9]+", "-", args.model).strip("-")  # runs/a/best.pt → runs-a-best-pt
    else:
        model = build_generator("unet_fpn", base_channels=args.base)
        torch.nn.init.normal_(model.head.weight, std=1e-3)  # not the identity: every layer really runs
        label = f"base{args.base}"
    if args.threads:
        torch.set_num_threads(args.threads)  # matmul peak and FLOP count on the same threads
        label += f"-t{args.threads}"
    multiple = model.multiple
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    folder = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    export_onnx(model, folder / "model.onnx", multiple)
    add_metadata(folder / "model.onnx", multiple=multiple)
    threads = args.threads
    engines = {"torch eager fp32": TorchEngine(model, device=device, threads=threads)}
    try:
        compiled = TorchEngine(model, device=device, compile=True, threads=threads)
        compiled.deblur_batch(np.zeros((1, 3, 256, 256), np.float32))
        engines["torch compile fp32"] = compiled
    except Exception as e:  # inductor needs a C++ compiler on CPU; report instead of failing the run
        print(f"torch.compile unavailable: {str(e).splitlines()[0][:120]}")
    engines["onnxruntime fp32"] = OnnxEngine(folder / "model.onnx", "auto", threads)
    reduced = ["fp16", "bf16"] if gpu else (["bf16"] if cpu_has_native_bf16() else [])
    if gpu and not torch.cuda.is_bf16_supported():
        reduced.remove("bf16")
    for precision in reduced:
        try:
            engines[f"torch {precision}"] = TorchEngine(model, device=device, precision=precision, threads=threads)
        except EngineError as e:  # the engine's own check against fp32 refused this model: say so, go on
            print(f"torch {precision} not measured: {e}")
        if tensorrt_status() is None:
            build_engine(folder / "model.onnx", folder, (1, 3, 256, 256), (1, 3, 768, 1280), (4, 3, 1152, 1920), "fp16")
            engines["tensorrt fp16"] = TensorRTEngine(folder / "engine.plan", multiple)
        else:
            print(f"TensorRT not measured: {tensorrt_status()}")

    per_mp = gflops_per_megapixel(model, multiple)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    peaks = {p: matmul_gflops(device, dtypes.get(p, torch.float32)) for p in {n.split()[-1] for n in engines}}
    rows, baseline = [], {}
    for h, w in sizes:
        for n in (int(b) for b in args.batches.split(",")):
            batch = np.random.default_rng(0).uniform(-1, 1, (n, 3, h, w)).astype(np.float32)
            for name, engine in engines.items():
                engine.configure_tiling(max_pixels=4096 * 4096)  # measure the engine, not the tiler
                s = time_engine(engine, batch, args.budget)
                ms = 1000 * s / n
                key = (h, w, n)
                baseline.setdefault(key, ms)
                pixels = -(-h // multiple) * multiple * -(-w // multiple) * multiple / 1e6  # what really runs
                achieved = per_mp * pixels * n / s
                rows.append(
                    [
                        f"{w}x{h}",
                        n,
                        name,
                        round(ms, 1),
                        round(1000 / ms, 2),
                        round(baseline[key] / ms, 2),
                        round(achieved, 1),
                        round(achieved / peaks[name.split()[-1]], 3),
                    ]
                )
                print(rows[-1], flush=True)
    _common.report(
        f"engines-{label}",
        ["size", "batch", "engine", "ms/img", "img/s", "speed vs eager", "GFLOP/s", "of matmul peak"],
        rows,
        {
            "gflops_per_megapixel": per_mp,
            "matmul_gflops": peaks.get("fp32"),
            "matmul_gflops_by_precision": peaks,
            "threads": threads or torch.get_num_threads(),
            "device": device,
            "model": args.model or f"unet_fpn base {args.base}",
        },
    )
    print(
        f"generator: {per_mp:.1f} GFLOPs per megapixel; {device} matmul 2048²: "
        + ", ".join(f"{p} {g:.0f}" for p, g in sorted(peaks.items()))
        + " GFLOP/s"
    )


if __name__ == "__main__":
    main()
