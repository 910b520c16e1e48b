"""The HTTP endpoint under load, side by side in one run: images/s and p50/p95/p99 latency at 256² and 1280×720
for 1, 8 and 32 concurrent clients, with batching (max batch 8) and without (max batch 1), next to calling
the engine directly in-process on the same cores.

  python benchmarks/serve.py [--model runs/sample] [--requests 32]
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import _common
import numpy as np
import requests
from PIL import Image

from bulk import model_path

SIZES = [(256, 256), (1280, 720)]
CLIENTS = [1, 8, 32]


def png(size: tuple[int, int]) -> bytes:
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize(size).save(buf, format="PNG")
    return buf.getvalue()


def load(url: str, body: bytes, clients: int, total: int) -> tuple[float, list[float]]:
    def one(_):
        t0 = time.perf_counter()
        res = requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=600)
        res.raise_for_status()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(total)))
    return total / (time.perf_counter() - t0), latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--requests", type=int, default=32)
    args = p.parse_args()
    from ray import serve

    from deblur.inference import load_engine
    from deblur.serve.app import build_app

    model = model_path(args.model)
    _common.start_ray()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 600})
    # both apps fit on the cores (only one is under load at a time); each replica gets as many engine
    # threads as the in-process engine it is compared with
    threads = os.cpu_count() or 1
    base = {"model": model, "engine": args.engine, "max_replicas": 1, "num_cpus": 0.5, "ingress_cpus": 0.05,
            "batch_wait_timeout_s": 0.02, "threads": threads}
    serve.run(build_app({**base, "max_batch_size": 8}), name="batched", route_prefix="/batched")
    serve.run(build_app({**base, "max_batch_size": 1}), name="single", route_prefix="/single")
    engine = load_engine(model, args.engine, threads=threads)
    rows = []
    for w, h in SIZES:
        body = png((w, h))
        img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        engine.deblur_image(img)
        t0 = time.perf_counter()
        for _ in range(4):
            engine.deblur_image(img)
        direct = 4 / (time.perf_counter() - t0)
        rows.append([f"{w}x{h}", 1, "engine in-process", round(direct, 2), "-", "-", "-", 1.0])
        total = args.requests if w * h < 500_000 else max(8, args.requests // 2)
        for clients in CLIENTS:
            for mode in ("single", "batched"):
                url = f"http://127.0.0.1:{port}/{mode}/v1/deblur"
                load(url, body, min(clients, 4), min(clients, 4))  # warm-up
                rate, lat = load(url, body, clients, max(total, clients))
                p50, p95, p99 = (round(float(np.percentile(lat, q)) * 1000) for q in (50, 95, 99))
                rows.append([f"{w}x{h}", clients, f"serve, max batch {1 if mode == 'single' else 8}", round(rate, 2),
                             p50, p95, p99, round(rate / direct, 2)])
                print(rows[-1], flush=True)
    serve.shutdown()
    _common.report("serve", ["size", "clients", "path", "img/s", "p50 ms", "p95 ms", "p99 ms", "vs in-process"], rows,
                   {"model": model, "engine": args.engine})


if __name__ == "__main__":
    main()
