"""Bulk deblurring throughput, side by side in one run on the same images and cores:
  - a bare single-process loop: read → decode → engine → encode → write,
  - the Ray Data job (`deblur bulk`: `deblur.bulk.deblur_archive`), actors holding the same engine,
  - the job's Ray-free ceiling: the same images dealt out to one plain process per core, each running the bare
    loop with a single-thread engine (what the job's actors do, without Ray): the most any design of one
    single-thread worker per core can win over the loop on these cores, and job ÷ processes is Ray's own cost,
  - engine-only compute time (what the loop spent inside the engine): pipeline efficiency = that / job wall.
The loop runs just before and just after the job and the ratio divides by their mean (the machine's speed drifts
by more than the differences measured); the job's start-up is the summary's `start_up_seconds`. Ray is joined
or started as `deblur bulk` does it (`deblur.ray_env.init_ray`: a local Ray on this machine's cores).
On ../shared/data/realblur/kohler (800×800 PNG) and lai-real (JPEG, up to 1200×900). Then an archive of
mostly sharp photos (CBSD68) with some blurred ones (Köhler), deblurred whole and with --only-blurred, and how
many of the real-blur photos score below that threshold (they would be copied through, not deblurred).
`--repeat N` adds rows for each archive copied N times (as distinct files): the job's fixed start-up (actors importing and
loading the engine, a few seconds) weighs on a short archive and fades on the long ones the job is for.

  python benchmarks/bulk.py [--model deblur-nafnet-v1|default|runs/sample|s3://…] [--limit 24] [--repeat 4] [--engine torch --precision bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from deblur.bulk import SHARP_BELOW

import _common


def bare_loop(files: list[Path], out: Path, engine) -> tuple[float, float]:
    from deblur.imagefile import decode, encode

    engine_s, t0 = 0.0, time.perf_counter()
    for f in files:
        img = decode(f.read_bytes(), f.name)
        t1 = time.perf_counter()
        result = engine.deblur_image(img.rgb)
        engine_s += time.perf_counter() - t1
        (out / f.name).write_bytes(encode(result, img, img.format))
    return time.perf_counter() - t0, engine_s


def _one_process_share(files: list[Path], out: Path, model: str, engine: str, precision: str) -> float:
    """A plain process's share of the archive: a cold single-thread engine (as each actor loads), then the loop."""
    from deblur.inference import load_engine

    return bare_loop(files, out, load_engine(model, engine, threads=1, precision=precision))[0]


def plain_processes(files: list[Path], cores: int, model: str, engine: str, precision: str) -> float:
    """Wall seconds for `cores` fresh processes (spawned, imports included, as actors start) to do every image,
    each dealt every cores-th one so that sizes spread evenly."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        shares = [pool.submit(_one_process_share, files[i::cores], out, model, engine, precision) for i in range(cores)]
        for share in shares:
            share.result()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default="deblur-nafnet-v1",
        help="a checkpoint, compiled folder or shipped name (default: the shipped network, as the recorded numbers; "
        "default: the route, which estimates kernels on shaken photos)",
    )
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--precision", default="fp32", help="bf16: torch on a CPU with AMX (results/bulk-bf16.json)")
    p.add_argument("--limit", type=int, default=24, help="images per archive")
    p.add_argument("--repeat", type=int, default=4, help="also measure each archive copied this often (a longer run)")
    args = p.parse_args()

    import ray

    from deblur.bulk import Options, deblur_archive
    from deblur.inference import load_engine
    from deblur.ray_env import init_ray

    model = args.model
    cores = os.cpu_count() or 1
    init_ray()  # as deblur bulk starts Ray, so the job's start-up is the one a user's run has
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows, missed = [], {}
    for name, repeat in [(a, r) for a in ("kohler", "lai-real") for r in sorted({1, args.repeat})]:
        folder = _common.SHARED_DATA / "realblur" / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))[: args.limit]
        src = Path(tempfile.mkdtemp(prefix=f"bulk-{name}-"))
        for copy in range(repeat):
            for f in files:
                (src / f"{copy}-{f.name}").write_bytes(f.read_bytes())
        copies = sorted(src.iterdir())
        # a fresh engine for each loop: cold at each image size, as the job's actors are
        before = bare_loop(
            copies, Path(tempfile.mkdtemp()), load_engine(model, args.engine, threads=cores, precision=args.precision)
        )
        # the same cores for the job: one single-threaded actor per core, so one actor's decode/encode
        # overlaps another's inference (the loop leaves cores idle while it decodes and encodes)
        options = Options(model=model, engine=args.engine, threads=1, precision=args.precision)
        summary = deblur_archive(
            str(src), tempfile.mkdtemp(), options, workers=cores, cpus_per_worker=1, progress=False
        )
        processes_s = plain_processes(copies, cores, model, args.engine, args.precision)
        # the machine's speed drifts: bracket the job and the processes
        after = bare_loop(
            copies, Path(tempfile.mkdtemp()), load_engine(model, args.engine, threads=cores, precision=args.precision)
        )
        loop_s, engine_s = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        job_s = summary["wall_seconds"]
        n = len(copies)
        rows.append(
            [
                name if repeat == 1 else f"{name} ×{repeat}",
                n,
                round(n / loop_s, 2),
                round(n / job_s, 2),
                round(loop_s / job_s, 2),
                round(n / processes_s, 2),
                round(loop_s / processes_s, 2),
                round(processes_s / job_s, 2),
                f"{n / before[0]:.2f} / {n / after[0]:.2f}",
                summary["start_up_seconds"],
                round(engine_s / job_s, 2),
                round(engine_s / loop_s, 2),
            ]
        )
        print(rows[-1], flush=True)
        lines = Path(summary["blur"]["scores_file"]).read_text().splitlines()
        scores = [row["blur"] for row in map(json.loads, lines) if row["path"].startswith("0-")]  # each photo once
        missed[name] = [sum(s < SHARP_BELOW for s in scores), len(scores)]
    # an archive as people have one: mostly sharp photos, some blurred; with and without --only-blurred
    sharp = sorted((_common.SHARED_DATA / "sharp" / "cbsd68").glob("*.png"))[: args.limit]
    blurred = sorted((_common.SHARED_DATA / "realblur" / "kohler").glob("*.png"))[: max(1, args.limit // 4)]
    mixed = Path(tempfile.mkdtemp(prefix="bulk-mixed-"))
    for f in sharp + blurred:
        (mixed / f"{f.parent.name}-{f.name}").write_bytes(f.read_bytes())
    mixed_rows = []
    for threshold in (None, SHARP_BELOW):
        summary = deblur_archive(
            str(mixed),
            tempfile.mkdtemp(),
            Options(model=model, engine=args.engine, threads=1, only_blurred=threshold, precision=args.precision),
            workers=cores,
            cpus_per_worker=1,
            progress=False,
        )
        mixed_rows.append(
            [
                f"mixed: {len(sharp)} sharp + {len(blurred)} Köhler",
                "all" if threshold is None else f"only blurred ({threshold})",
                summary["done"],
                summary["copied_sharp"],
                round((summary["done"] + summary["copied_sharp"]) / summary["wall_seconds"], 2),
            ]
        )
        print(mixed_rows[-1], flush=True)
    _common.report(
        "bulk" if args.precision == "fp32" else f"bulk-{args.precision}",
        [
            "archive",
            "images",
            "bare loop img/s",
            "Ray Data job img/s",
            "job vs loop",
            f"{cores} plain processes img/s",
            "processes vs loop (Ray-free ceiling)",
            "job vs processes",
            "loop img/s before / after the job",
            "job start-up s",
            "job efficiency (engine s / job s)",
            "loop efficiency",
        ],
        rows,
        {
            "model": model,
            "engine": args.engine,
            "precision": args.precision,
            "cores": cores,
            "repeat": args.repeat,
            "only_blurred": {"columns": ["archive", "mode", "deblurred", "copied", "img/s"], "rows": mixed_rows},
            "real_blur_scored_sharp": {
                k: {"below_threshold": v[0], "of": v[1], "threshold": SHARP_BELOW} for k, v in missed.items()
            },
        },
    )
    for r in mixed_rows:
        print(" | ".join(map(str, r)))
    for k, v in missed.items():
        print(f"{k}: {v[0]} of {v[1]} real-blur photos score below {SHARP_BELOW} (would be copied, not deblurred)")


if __name__ == "__main__":
    main()
