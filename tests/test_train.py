"""Training on a real Ray cluster (several raylets on this machine, token auth), storage local and on the S3 endpoint."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deblur import storage
from deblur.config import load_config

from conftest import ROOT, free_port, job_env, tiny_overrides

pytestmark = pytest.mark.slow


def read_jsonl(uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def test_two_workers_wgan_gp_ddp_and_best_checkpoint(ray_session, tiny_shards, tmp_path):
    from deblur.train.trainer import fit

    cfg = load_config(None, tiny_overrides(tiny_shards, str(tmp_path / "runs"), "ddp", epochs=3))
    summary = fit(cfg)
    run = tmp_path / "runs" / "ddp"
    history = read_jsonl(str(run / "metrics.jsonl"))
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for h in history:
        for k in ("loss_g", "loss_d", "gp", "loss_l1", "val_psnr", "val_ssim"):
            assert np.isfinite(h[k]), (k, h)
        assert h["workers"] == 2
        assert h["gp"] > 0 and h["ddp_param_spread"] < 1e-6  # the penalty trains and the replicas stay identical
    on_disk = json.loads((run / "best.json").read_text())
    assert on_disk == summary
    assert summary["metrics"]["val_psnr"] == max(h["val_psnr"] for h in history)  # ties: any best epoch
    best_epoch = summary["metrics"]["epoch"]
    assert summary["checkpoint"] == str(run / f"epoch-{best_epoch:04d}")
    kept = sorted(p.name for p in run.glob("epoch-*"))
    assert len(kept) == 2 and f"epoch-{best_epoch:04d}" in kept  # num_to_keep by val_psnr
    state = torch.load(run / f"epoch-{best_epoch:04d}" / "checkpoint.pt", weights_only=True)
    assert {"generator", "critic", "optim", "epoch", "step", "config"} <= set(state)
    assert set(state["optim"]) == {"opt_g", "opt_d", "scaler_g", "scaler_d"}
    assert list(run.joinpath("tensorboard").glob("events.out.tfevents.*"))
    from deblur.models import load_generator

    g = load_generator(summary["checkpoint"])
    assert g(torch.zeros(1, 3, 40, 50)).shape == (1, 3, 40, 50)


def test_a_cached_split_trains_every_pair_once_per_epoch_on_each_rank(ray_session, tiny_shards, tmp_path):
    """data.cache: the decoded split goes whole to both workers (not split by Ray Train), each keeps every
    second pair and cuts the same number of batches: 12 pairs, 2 workers, batches of 2 → 3 steps an epoch.
    Split by Ray Train as well, each rank would keep 3 pairs and take 1 step an epoch."""
    from deblur.train.trainer import fit

    sets = tiny_overrides(
        tiny_shards, str(tmp_path / "runs"), "cached", **{"data.cache": "true", "train.steps_per_epoch": "null"}
    )
    summary = fit(load_config(None, sets))
    history = read_jsonl(str(tmp_path / "runs" / "cached" / "metrics.jsonl"))
    assert [(h["epoch"], h["workers"]) for h in history] == [(0, 2), (1, 2)]
    assert all(h["ddp_param_spread"] < 1e-6 for h in history)
    state = torch.load(Path(summary["checkpoint"]) / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 * (state["epoch"] + 1)


def test_resume_continues_the_epoch_counter(ray_session, tiny_shards, tmp_path):
    from deblur.train.trainer import fit

    base = tiny_overrides(tiny_shards, str(tmp_path / "runs"), "resume", epochs=2, **{"scaling.num_workers": 1})
    fit(load_config(None, base))
    fit(load_config(None, base + ["train.epochs=4"]))
    epochs = [h["epoch"] for h in read_jsonl(str(tmp_path / "runs" / "resume" / "metrics.jsonl"))]
    assert epochs == [0, 1, 2, 3]
    latest = torch.load(tmp_path / "runs" / "resume" / "epoch-0003" / "checkpoint.pt", weights_only=True)
    assert latest["step"] == 8  # 4 epochs × 2 steps, counted across the two submissions


def test_multi_node_on_s3(ray_session, tiny_shards, bucket):
    """Two workers on two different raylets (STRICT_SPREAD), shards and checkpoints on the S3 endpoint."""
    from deblur.train.trainer import fit

    fs, _ = storage.filesystem(bucket)
    fs.put(tiny_shards, f"{bucket[5:]}/shards", recursive=True)
    cfg = load_config(
        None,
        tiny_overrides(
            f"{bucket}/shards", f"{bucket}/runs", "multinode", **{"scaling.placement_strategy": "STRICT_SPREAD"}
        ),
    )
    summary = fit(cfg)
    assert summary["checkpoint"].startswith(f"{bucket}/runs/multinode/epoch-")
    assert storage.exists(storage.join(summary["checkpoint"], "checkpoint.pt"))
    history = read_jsonl(f"{bucket}/runs/multinode/metrics.jsonl")
    assert all(h["nodes"] == 2 and h["workers"] == 2 for h in history)
    assert json.loads(storage.read_text(f"{bucket}/runs/multinode/best.json"))["checkpoint"] == summary["checkpoint"]


def test_ray_job_submit_to_the_cluster(ray_cluster, tiny_shards, bucket):
    fs, _ = storage.filesystem(bucket)
    fs.put(tiny_shards, f"{bucket[5:]}/shards", recursive=True)
    sets = tiny_overrides(f"{bucket}/shards", f"{bucket}/runs", "submitted", **{"scaling.num_workers": 1})
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard_url,
        "--working-dir",
        str(ROOT),
        "--",
        "python",
        "jobs/train.py",
    ] + [a for s in sets for a in ("--set", s)]
    env = job_env(ray_cluster)
    env.pop("RAY_ADDRESS")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best checkpoint: s3://" in res.stdout
    # what a user reads: the epoch lines. (How many
    # times each line arrives is not checked here: with several raylets on one machine every node's log
    # monitor forwards the same worker log, Ray issue #48642; one node per machine forwards it once.)
    assert "epoch 2/2  loss_g" in res.stdout
    best = json.loads(storage.read_text(f"{bucket}/runs/submitted/best.json"))
    assert storage.exists(storage.join(best["checkpoint"], "checkpoint.pt"))
    assert ray_cluster.env_vars["RAY_AUTH_TOKEN"] not in res.stdout + res.stderr


def registered_epoch(snapshot: Path) -> int:
    """The epoch of the latest checkpoint Ray Train has registered (-1: none yet, or the file mid-write)."""
    try:
        return int(json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def test_killed_worker_resumes_from_last_checkpoint(ray_session, ray_cluster, tiny_shards, tmp_path):
    from ray.util.state import list_actors

    storage_path = tmp_path / "runs"
    epochs = 24  # tiny epochs take ~0.2 s: enough of them that the run is still going when the worker dies
    sets = tiny_overrides(tiny_shards, str(storage_path), "faulty", epochs=epochs, **{"train.steps_per_epoch": 4})
    proc = subprocess.Popen(
        [sys.executable, "jobs/train.py"] + [a for s in sets for a in ("--set", s)],
        cwd=ROOT,
        env=job_env(ray_cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = storage_path / "faulty"
    deadline = time.time() + 600
    # A checkpoint counts once Ray Train's controller has taken the worker's report, which it records in the
    # run's checkpoint_manager_snapshot.json; the folder is uploaded before that, and a worker killed in
    # between loses the report (the run then starts over, correctly, from the checkpoint before).
    while registered_epoch(run / "checkpoint_manager_snapshot.json") < 1:
        assert proc.poll() is None and time.time() < deadline, "training ended before a worker could be killed"
        time.sleep(0.2)
    workers = [
        a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], detail=True)
    ]
    assert len(workers) == 2
    os.kill(workers[-1].pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    assert "resumed from epoch" in out
    # what the job's user reads: epoch lines, not Ray Train's report of each whole metrics dict (INFO) nor
    # Ray Data's notice that its progress bars are off
    assert f"epoch {epochs}/{epochs}  loss_g" in out
    assert "Reporting training result" not in out and "Progress bars disabled" not in out, out[-4000:]
    logged = [h["epoch"] for h in read_jsonl(str(run / "metrics.jsonl"))]
    assert logged[0] == 0 and logged.count(0) == 1 and logged[-1] == epochs - 1  # continued, never restarted
    assert set(logged) == set(range(epochs))
    for folder in run.glob("epoch-*"):  # every kept checkpoint is whole and loads
        torch.load(folder / "checkpoint.pt", weights_only=True)


def test_plain_python_trains_on_a_ray_of_its_own_and_ends_cleanly(tiny_shards, tmp_path):
    """`python jobs/train.py` with no cluster to join starts a Ray of its own and ends without a traceback,
    even where the machine's record of the last cluster names one that is gone: Ray Train's placement-group
    cleaner finds the job's own Ray (it used to poll the recorded one until its stop timed out, then printed
    "Failed to stop PlacementGroupCleaner gracefully" and a traceback)."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # its own cluster record; a short socket path
    (Path(ray_tmp) / "ray").mkdir()
    (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nothing there
    sets = tiny_overrides(tiny_shards, str(tmp_path / "runs"), "local", **{"scaling.num_workers": 1})
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    try:
        res = subprocess.run(
            [sys.executable, "jobs/train.py"] + [a for s in sets for a in ("--set", s)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        subprocess.run(["pkill", "-9", "-f", ray_tmp], capture_output=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "best checkpoint:" in out, out[-4000:]
    started = re.search(
        r"^Ray: a local instance for this job \((\d+) CPUs, .*dashboard http://127\.0\.0\.1:(\d+)$", res.stdout, re.M
    )
    assert started and int(started[1]) == os.cpu_count() and int(started[2]) > 0, res.stdout[:2000]
    assert "Traceback" not in out and "PlacementGroupCleaner" not in out, out[-4000:]


@pytest.mark.parametrize(
    "sets,message",
    [
        (["data.uri=/nonexistent/shards", "data.prepare=null"], "/nonexistent/shards/manifest.json: no manifest"),
        (["train.epoch=3"], "train.epoch: unknown key"),
        (["data.uri=s3://no-such-bucket/x", "data.prepare=null"], "s3://no-such-bucket/x/manifest.json: cannot"),
        (["model.generator_kwargs={base_channel: 8}"], "model.generator_kwargs: nafnet takes no 'base_channel'"),
        (["model.critic_kwargs={layers: 3}"], "model.critic_kwargs: patchgan takes no 'layers'"),
        (["loss.lambda_per=1.0"], "perceptual loss (VGG19): ImageNet weights not found"),
    ],
)
def test_bad_input_is_one_clear_line(sets, message, tmp_path):
    cmd = [sys.executable, "jobs/train.py"] + [a for s in sets for a in ("--set", s)]
    if sets[0].startswith("data.uri=s3://"):
        cmd += ["--s3-endpoint", "http://127.0.0.1:9"]  # nothing listens on the discard port
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
        AWS_EC2_METADATA_DISABLED="true",
        TORCH_HOME=str(tmp_path),
    )  # an empty torch hub: no VGG19 weights, whatever this machine caches
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_run_log_uploads_each_epoch_once_and_tensorboard_reads_them_as_one_run(tmp_path, real_photo):
    """A run's TensorBoard events grow every epoch (scalars, full-size validation images): each epoch's go to an
    event file of their own, written to storage once, so no epoch re-sends the ones before it."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from deblur.train.runlog import RunLog

    run = tmp_path / "run"
    log = RunLog(str(run))
    seen: dict[str, int] = {}
    for epoch in range(3):
        log.log({"epoch": epoch, "val_psnr": 25.0 + epoch}, [("val/0", real_photo)])
        files = {p.name: p.stat().st_mtime_ns for p in (run / "tensorboard").iterdir()}
        assert len(files) == epoch + 1 and all(files[name] == t for name, t in seen.items())  # earlier ones untouched
        seen = files
    log.close()
    assert {p.name: p.stat().st_mtime_ns for p in (run / "tensorboard").iterdir()} == seen
    events = EventMultiplexer().AddRunsFromDirectory(str(run)).Reload()
    scalars = [s for r in events.Runs() for s in events.Scalars(r, "val_psnr")] if events.Runs() else []
    assert sorted((s.step, s.value) for s in scalars) == [(0, 25.0), (1, 26.0), (2, 27.0)]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
