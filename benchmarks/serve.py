"""The HTTP endpoint under load, side by side in one run: images/s and p50/p95/p99 latency at 256² and 1280×720
for 1, 8 and 32 concurrent clients, for the app as deblur serve builds it (defaults) and with batching on
(max batch 8), next to calling the same engine in-process on the same cores (its median time per image, timed
again around each many-client row).
"added" is the median of the HTTP request's time minus the in-process engine call's, the two alternating (the
machine's speed drifts by more than the difference): what Serve, HTTP and the PNG codecs cost, split by the
replica's Server-Timing header into the engine running slower there, waiting for a batch, the replica's body
read and codecs, and the rest (HTTP and the ingress); each a median over the requests, so they need not sum.
"floor" is the least any Serve app answering with a PNG can add here: the round trip of an echo deployment (the
same body back, no engine, no codecs) plus this process's own PNG decode + encode of the same image.

  python benchmarks/serve.py [--model deblur-nafnet-v1|default] [--engine auto] [--requests 32]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image
from starlette.responses import Response

import _common

SIZES = [(256, 256), (1280, 720)]
CLIENTS = [1, 8, 32]


def png(size: tuple[int, int]) -> bytes:
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize(size).save(buf, format="PNG")
    return buf.getvalue()


def load(url: str, body: bytes, clients: int, total: int) -> tuple[float, list[float], list[dict[str, float]]]:
    """(images/s, each request's seconds, each request's milliseconds by step inside the replica: its
    Server-Timing header, read / decode / queue / infer / encode)."""

    def one(_):
        t0 = time.perf_counter()
        res = requests.post(url, data=body, headers={"Content-Type": "image/png"}, timeout=600)
        res.raise_for_status()
        spans = (span.strip().split(";dur=") for span in res.headers["Server-Timing"].split(","))
        return time.perf_counter() - t0, {k: float(v) for k, v in spans}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        timings = list(pool.map(one, range(total)))
    return total / (time.perf_counter() - t0), [t for t, _ in timings], [ms for _, ms in timings]


def floor_ms(port: int, bodies: dict, engine, calls: int = 15) -> dict[str, dict[str, float]]:
    """Median ms, by size: an echo deployment's HTTP round trip with the body, and decode + encode in-process."""
    from ray import serve

    from deblur.imagefile import decode, encode

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Echo:  # a plain deployment: Serve hands __call__ the starlette request
        async def __call__(self, request) -> Response:
            return Response(await request.body(), media_type="image/png")

    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    floors = {}
    for (w, h), body in bodies.items():
        out = engine.deblur_image(decode(body).rgb)
        trips, codecs = [], []
        for _ in range(calls + 2):
            t0 = time.perf_counter()
            requests.post(f"http://127.0.0.1:{port}/echo/", data=body, timeout=60).raise_for_status()
            t1 = time.perf_counter()
            encode(out, decode(body), "PNG")
            trips.append(t1 - t0)
            codecs.append(time.perf_counter() - t1)
        trip, codec = (round(float(np.median(v[2:])) * 1000, 1) for v in (trips, codecs))
        floors[f"{w}x{h}"] = {"echo round trip": trip, "decode + encode": codec, "floor": round(trip + codec, 1)}
        print(f"{w}x{h} floor", floors[f"{w}x{h}"], flush=True)
    serve.delete("echo")
    return floors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deblur-nafnet-v1", help="the shipped network, as recorded; default: the route")
    p.add_argument("--engine", default="auto")
    p.add_argument("--requests", type=int, default=32)
    args = p.parse_args()
    from ray import serve

    from deblur.inference import load_engine
    from deblur.serve.app import build_app, start

    model = args.model
    _common.start_ray()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start("127.0.0.1", port, 600)
    # the in-process engine as a user's own code would hold it: every core
    engine = load_engine(model, args.engine, threads=os.cpu_count() or 1)
    bodies = {size: png(size) for size in SIZES}

    def engine_seconds(img: np.ndarray, calls: int) -> float:
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            engine.deblur_image(img)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    direct = {}
    for size, body in bodies.items():
        img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        engine.deblur_image(img)
        direct[size] = engine_seconds(img, 5 if size[0] * size[1] < 500_000 else 3)
    rows = [
        [
            f"{w}x{h}",
            1,
            "engine in-process",
            round(1 / direct[(w, h)], 2),
            round(direct[(w, h)] * 1000),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            1.0,
        ]
        for w, h in SIZES
    ]
    floors = floor_ms(port, bodies, engine)
    steps: dict[str, dict[str, float]] = {}  # 1 client: the replica's median milliseconds by step
    pairs_ms: dict[str, list[list[int]]] = {}  # 1 client, request by request: HTTP, in-process engine, replica engine
    # the app as deblur serve builds it (replica sized to the node, CPU batching off), then with batching on;
    # one at a time, as each replica takes every core
    for label, extra in (
        ("serve, defaults", {}),
        ("serve, max batch 8", {"max_batch_size": 8, "batch_wait_timeout_s": 0.02}),
    ):
        serve.run(build_app({"model": model, "engine": args.engine, **extra}), name="bench", route_prefix="/bench")
        url = f"http://127.0.0.1:{port}/bench/v1/deblur"
        threads = requests.get(f"http://127.0.0.1:{port}/bench/v1/model", timeout=60).json().get("threads")
        for w, h in SIZES:
            body = bodies[(w, h)]
            total = args.requests if w * h < 500_000 else max(8, args.requests // 2)
            img = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
            for clients in CLIENTS:
                # warm-up, as the in-process engine was: ONNX Runtime plans its memory for a new input shape on
                # the first run and allocates that plan on the second, which ran 2-3x slower in the replica
                load(url, body, min(clients, 4), max(3, min(clients, 4)))
                if clients == 1:  # alternating with the in-process engine, so both see the same machine
                    lat, own, inside = [], [], []
                    for _ in range(max(12, total // 2)):  # a slow outlier moves a mean of 8 by ~10 %
                        t0 = time.perf_counter()
                        engine.deblur_image(img)
                        own.append(time.perf_counter() - t0)
                        _, one_lat, one_ms = load(url, body, 1, 1)
                        lat, inside = lat + one_lat, inside + one_ms
                    rate = 1 / float(np.mean(lat))
                else:  # the engine timed just before and just after, as the machine's speed drifts
                    calls = 3 if w * h < 500_000 else 2
                    before = engine_seconds(img, calls)
                    rate, lat, inside = load(url, body, clients, max(total, clients))
                    base = (before + engine_seconds(img, calls)) / 2
                p50, p95, p99 = (round(float(np.percentile(lat, q)) * 1000) for q in (50, 95, 99))
                added = slower = queued = codecs = outside = "-"
                if clients == 1:
                    # what is added, request by request (each paired with the engine call before it), and by
                    # where it goes: the engine itself running slower inside the replica, waiting for a batch,
                    # the replica reading the body and running the codecs, and the rest (HTTP, Serve's proxy)
                    def median_ms(values) -> int:
                        return round(float(np.median(list(values))))

                    pairs = list(zip(lat, own, inside))
                    added = median_ms((t - o) * 1000 for t, o, _ in pairs)
                    slower = median_ms(s["infer"] - o * 1000 for _, o, s in pairs)
                    queued = median_ms(s["queue"] for s in inside)
                    codecs = median_ms(s["read"] + s["decode"] + s["encode"] for s in inside)
                    outside = median_ms(t * 1000 - sum(s.values()) for t, _, s in pairs)
                    steps[f"{w}x{h}, {label}"] = {k: median_ms(s[k] for s in inside) for k in inside[0]}
                    pairs_ms[f"{w}x{h}, {label}"] = [
                        [round(t * 1000), round(o * 1000), round(s["infer"])] for t, o, s in pairs
                    ]
                ratio = rate * float(np.mean(own)) if clients == 1 else rate * base
                rows.append(
                    [
                        f"{w}x{h}",
                        clients,
                        f"{label} ({threads} threads)",
                        round(rate, 2),
                        p50,
                        added,
                        slower,
                        queued,
                        codecs,
                        outside,
                        p95,
                        p99,
                        round(ratio, 2),
                    ]
                )
                print(rows[-1], flush=True)
        serve.delete("bench")
    serve.shutdown()
    _common.report(
        "serve",
        [
            "size",
            "clients",
            "path",
            "img/s",
            "p50 ms",
            "added ms (1 client, median of pairs)",
            "of it: engine slower in replica ms",
            "batch queue ms",
            "replica's body read + codecs ms",
            "HTTP + proxy ms",
            "p95 ms",
            "p99 ms",
            "vs in-process",
        ],
        rows,
        {
            "model": model,
            "engine": args.engine,
            "replica_ms_by_step_1_client": steps,
            "floor_ms_1_client": floors,
            "pairs_ms_1_client": {"columns": ["http", "engine in-process", "engine in replica"], **pairs_ms},
        },
    )


if __name__ == "__main__":
    main()
