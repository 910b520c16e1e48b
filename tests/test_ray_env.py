"""Joining Ray: a stale record of a cluster that is gone means "start a local Ray", never a hang."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from deblur.inference.load import cuda_available
from deblur.ray_env import _recorded_cluster, actor_gpus, error_line, gpu_request, job_runtime_env

from conftest import ROOT, free_port, local_cluster_module, write_clip


def test_a_stale_cluster_record_is_not_joined(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert _recorded_cluster() is None  # no record at all
    (tmp_path / "ray").mkdir()
    record = tmp_path / "ray" / "ray_current_cluster"
    dead = free_port()  # nothing listens there
    record.write_text(f"127.0.0.1:{dead}")
    assert _recorded_cluster(timeout_s=0.5) is None
    record.write_text("garbage")
    assert _recorded_cluster() is None
    for host, loopback_only in (("127.0.0.1", True), ("0.0.0.0", False)):
        with socket.socket() as live:
            live.bind((host, 0))
            live.listen()
            record.write_text(f"127.0.0.1:{live.getsockname()[1]}")
            # Ray would join a recorded 127.0.0.1 through this machine's address: a cluster that listens on
            # loopback only is joined from loopback
            assert _recorded_cluster() == (f"127.0.0.1:{live.getsockname()[1]}", loopback_only), host


def test_a_job_gets_a_runtime_env_only_where_its_workers_need_one(monkeypatch):
    """Ray's idle workers, started ahead of time, serve only jobs without a runtime env: a job that needs none
    must get none (the bulk job's first image began ~1.5 s later with one, on 2 cores)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    # a local Ray started by the job: its workers inherit the endpoint from this process
    assert job_runtime_env(joining=False, quiet_workers=False) is None
    # joining a cluster: workers on other machines only learn it from the runtime env
    assert job_runtime_env(joining=True, quiet_workers=False) == {
        "env_vars": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    }
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert job_runtime_env(joining=True, quiet_workers=False) is None
    # training: Ray Train and Ray Data's executor run in the workers and are quieted there
    env = job_runtime_env(joining=False, quiet_workers=True, log_level="INFO")
    assert env["worker_process_setup_hook"] == "deblur.ray_env.quiet_ray_libraries"
    assert env["env_vars"] == {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "DEBLUR_RAY_LOG_LEVEL": "INFO"}


def test_the_cause_is_read_from_a_remote_traceback():
    """Ray hands an actor's constructor error over as text (colour codes, chained tracebacks); the jobs show its
    last `Type: message` line."""
    text = (
        "\x1b[36mray::MapWorker(Map(ImageDeblurrer)).__init__()\x1b[39m (pid=1, ip=127.0.0.1)\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise KeyError(1)\nKeyError: 1\n\n'
        "During handling of the above exception, another exception occurred:\n\n"
        '  File "load.py", line 9, in load_engine\n'
        "deblur.inference.engine.EngineError: s3://b/m.pt: checkpoint not found: x: y\n\n"
    )
    assert error_line(text) == "EngineError: s3://b/m.pt: checkpoint not found: x: y"
    assert error_line("the actor died unexpectedly before finishing this task\n") == (
        "the actor died unexpectedly before finishing this task"
    )
    assert error_line("") == "unknown error"
    chained = (  # the last exception is the cause, whatever its type is called, without its module
        'Traceback (most recent call last):\n  File "a.py", line 1, in f\n    open(x)\n'
        "FileNotFoundError: [Errno 2] nope\n\nDuring handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "b.py", line 3, in g\n    raise Missing(msg)\n    ^^^^^\n'
        "deblur.pretrained.PretrainedWeightsMissing: LPIPS weights: not cached\n  see the README\n"
    )
    assert error_line(chained) == "PretrainedWeightsMissing: LPIPS weights: not cached"
    assert error_line('  File "x.py", line 1\n    raise E()\ndeblur.inference.engine.EngineError\n') == "EngineError"


def test_a_worker_given_no_gpu_runs_on_the_cpu(ray_session):
    """Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor given no GPU (ray#54868); the engines' actors ask
    `worker_device` and stay on the CPU instead of all landing on GPU 0 of a GPU machine."""
    from deblur.ray_env import worker_device

    assert ray_session.get(ray_session.remote(num_cpus=0)(worker_device).remote()) == "cpu"
    assert worker_device() is None  # a driver: nothing assigned it devices, the engine picks


def test_gpus_per_actor_auto_follows_the_nodes():
    assert actor_gpus("auto", []) == 0 and actor_gpus("auto", [0.0, 0.0]) == 0
    assert actor_gpus("auto", [0.0, 4.0]) == 1  # a CPU head and a GPU worker: a GPU each
    assert actor_gpus("auto", [0.5]) == 0  # no whole GPU anywhere: an actor asking for one would never start
    assert actor_gpus(0.25, [0.0]) == 0.25 and actor_gpus(0, [8.0]) == 0  # a number is kept as it is
    assert gpu_request("auto") == "auto" and gpu_request("0.5") == 0.5
    for bad in ("-1", "many", True, None, "nan"):
        with pytest.raises(ValueError, match="give a number of GPUs"):
            gpu_request(bad)


@pytest.mark.slow
def test_auto_gpus_give_each_actor_a_gpu_on_a_gpu_cluster(trained_checkpoint, real_photo, tmp_path):
    """--gpus-per-worker auto, the jobs' default, on a cluster whose node has a GPU: one actor per GPU, each
    given one, even where --workers asks for more. The head here declares a GPU this machine lacks, so each
    actor, given GPU 0, finds no CUDA and runs ONNX Runtime on the CPU (what the summary and the report's header
    name); the same jobs on the session's CPU cluster give their actors none (tests of bulk and evaluation)."""
    if cuda_available():
        pytest.skip("a machine with a GPU: its actors would run on it (the session's cluster shows that)")
    import json

    import cv2

    local = local_cluster_module()
    photos, pairs = tmp_path / "photos", tmp_path / "pairs"
    photos.mkdir()
    for side in ("blur", "sharp"):
        (pairs / side).mkdir(parents=True)
    for k in range(3):
        crop = np.ascontiguousarray(real_photo[k * 16 : k * 16 + 64, :64, ::-1])
        cv2.imwrite(str(photos / f"{k}.png"), crop)
        for side in ("blur", "sharp"):
            cv2.imwrite(str(pairs / side / f"{k}.png"), crop)
    info = local.start(workers=0, head_cpus=2, head_gpus=1, object_store_mb=200, state=tmp_path / "cluster")
    env = {**os.environ, "RAY_ADDRESS": info["address"]}

    def job(name: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, f"jobs/{name}", *args, "--no-progress"]
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    try:
        res = job(
            "bulk.py", "--input", str(photos), "--output", str(tmp_path / "out"), "--model", str(trained_checkpoint)
        )
        summary = json.loads((tmp_path / "out" / "_summary.json").read_text())
        assert (summary["workers"], summary["gpus_per_worker"], summary["done"]) == (1, 1.0, 3)
        assert "--gpus-per-worker auto: 1 GPU each (1 in the Ray cluster)" in res.stdout
        assert summary["engines"] == ["onnxruntime fp32 (cpu)"]  # given GPU 0, the actor found no CUDA
        report = ["--data", str(pairs), "--out", str(tmp_path / "report"), "--checkpoint", str(trained_checkpoint)]
        job("evaluate.py", *report, "--workers", "3", "--no-lpips")
        header = json.loads((tmp_path / "report" / "metrics.json").read_text())["header"]
        # --workers 3 on a cluster: at most 3, growing as GPU nodes join; one at the start (the GPUs up now)
        assert header["actors"] == "1 to 3 (as nodes join) Ray actors, 1 GPU each"
        assert header["engine"] == "onnxruntime (cpu, fp32)"  # what the actor ran (the driver loaded none)
    finally:
        assert local.stop(tmp_path / "cluster") == []


@pytest.mark.parametrize(
    "job,args,expected",
    [
        ("bulk.py", ["--cpus-per-worker", "{many}"], "--cpus-per-worker {many}"),
        ("video.py", ["--gpus-per-worker", "{many}"], "--gpus-per-worker {many}"),
        ("serve.py", ["--min-replicas", "2"], "--min-replicas 2 × --num-cpus {cores}"),  # a node's CPUs each
        ("evaluate.py", ["--workers", "1", "--gpus-per-worker", "{many}", "--no-lpips"], "--gpus-per-worker {many}"),
    ],
)
def test_what_a_ray_started_here_never_has_is_one_line(job, args, expected, trained_checkpoint, tmp_path):
    """A Ray the job starts itself has no autoscaler: actors asking for more CPUs or GPUs than the machine has,
    or more Serve replicas than fit, used to wait forever while Ray warned that the job "may hang"; now the job
    stops with one line, and leaves no Ray behind."""
    import cv2
    import numpy as np

    clip = write_clip(tmp_path / "clip.mp4", np.zeros((64, 64, 3), np.uint8))  # the jobs check inputs first
    pairs = tmp_path / "pairs"  # a paired folder of one photo
    for side in ("blur", "sharp"):
        (pairs / side).mkdir(parents=True)
        cv2.imwrite(str(pairs / side / "a.png"), np.full((64, 64, 3), 128, np.uint8))
    cores, many = os.cpu_count() or 1, (os.cpu_count() or 1) * 8
    inputs = {
        "bulk.py": ["--input", str(tmp_path), "--output", str(tmp_path / "o")],
        "video.py": [str(clip), str(tmp_path / "o.mp4")],
        "serve.py": ["--port", str(free_port())],
        "evaluate.py": ["--data", str(pairs), "--out", str(tmp_path / "report")],
    }[job]
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # its own: no cluster record to join; a short socket path
    model = ["--checkpoint" if job == "evaluate.py" else "--model", str(trained_checkpoint)]
    cmd = [sys.executable, f"jobs/{job}", *inputs, *model]
    cmd += [a.format(many=many) for a in args]
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"{job} waited instead of refusing: {err[-2000:]}")
    finally:
        left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
        subprocess.run(["pkill", "-9", "-f", ray_tmp], capture_output=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"the job's own Ray is still running: {left}"
    assert proc.returncode == 1 and "Traceback" not in err, err
    want = expected.format(many=many, cores=cores)
    assert err.strip().splitlines()[-1].startswith(f"error: {want}: more than this machine's Ray has ("), err


LOCAL_RAY = """
import sys
from deblur.ray_env import init_ray
print(init_ray(num_cpus=1), flush=True)
sys.stdin.readline()
"""


def _descendants(root: int) -> set[int]:
    """`root` and every process below it (Ray's GCS, raylet, dashboard and workers descend from the driver)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        try:
            parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree, grew = tree | below, bool(below)
    return tree


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_a_ray_the_job_starts_listens_on_loopback_only():
    """`init_ray` starting a Ray of its own: the GCS, raylet, dashboard and workers listen on 127.0.0.1 only.
    Ray turns "127.0.0.1" into the machine's reachable address and listens on every interface otherwise."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # its own: no cluster record to join; a short socket path
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCAL_RAY],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "local"
        time.sleep(3)  # the prestarted workers and the dashboard's agents come up just after
        tree = _descendants(proc.pid)
        listening = []
        for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
            pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
            if pids & tree:
                listening.append(line.split()[3])
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", ray_tmp], capture_output=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert len(listening) >= 4, listening  # GCS, raylet, dashboard, the driver's and workers' gRPC servers
    hosts = {address.rsplit(":", 1)[0] for address in listening}
    assert hosts <= {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}, listening


@pytest.mark.slow
def test_a_job_beside_a_running_one_starts_its_own_ray_and_joins_a_ray_start_cluster():
    """A job's own Ray ends with the job, so a second job started beside it must not join it. It did, through
    the machine's cluster record, and then hung for good: Ray joins a recorded 127.0.0.1 through the machine's
    address, where that loopback-only Ray never answers. A cluster `ray start` started on loopback only,
    which outlives its starter, is joined, from loopback."""
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # its own cluster record; a short socket path
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_API_SERVER_ADDRESS", None)
    local = local_cluster_module()
    port = free_port()

    def job_beside() -> str:
        res = subprocess.run(
            [sys.executable, "-c", LOCAL_RAY],
            cwd=ROOT,
            env=env,
            input="\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout.strip()

    first = subprocess.Popen(
        [sys.executable, "-c", LOCAL_RAY],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = first.stdout.readline().strip()
        assert line == "local", line or first.stderr.read()[-2000:]
        assert not (Path(ray_tmp) / "ray" / "ray_current_cluster").exists()  # a job's own Ray is not recorded
        assert job_beside() == "local"
        first.stdin.write("\n")
        first.stdin.flush()
        first.wait(timeout=120)
        head = [local.ray_bin(), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1"]
        head += ["--include-dashboard=false", "--disable-usage-stats", *local.own_ports()]
        started = subprocess.run(
            head, env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, capture_output=True, text=True, timeout=180
        )
        assert started.returncode == 0, started.stderr[-2000:]
        assert job_beside() == "cluster"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        local._terminate(lambda: [pid for pid, _ in local.cluster_processes(port)], wait_s=10)
        subprocess.run(["pkill", "-9", "-f", ray_tmp], capture_output=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_what_init_ray_sets_for_its_own_ray_is_put_back_before_the_next(tmp_path, monkeypatch):
    """The variables that describe a Ray this process started (its State API; loopback only) are the user's
    again when the process next joins a cluster; and a dashboard port taken between the check and Ray's start
    (another job starting at the same moment) gets one more try on a port the system picks. `ray.init` is
    replaced by a recorder here: the real starts are the tests above."""
    import ray
    from ray._private import ray_constants

    from deblur import ray_env

    calls: list[dict] = []

    def fake_init(**kwargs):
        calls.append(
            {**kwargs, "env": {k: os.environ.get(k) for k in ("RAY_API_SERVER_ADDRESS", ray_env._LOOPBACK_ENV)}}
        )
        calls[-1]["cluster_constant"] = ray_constants.ENABLE_RAY_CLUSTER
        if kwargs.get("dashboard_port") == 8265:
            raise ValueError("Failed to bind to 127.0.0.1:8265 because it's already occupied")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the session's Ray may be up in this process
    monkeypatch.setattr(ray_env, "free_port", lambda host, port: port or 40123)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no cluster record
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(ray_env._LOOPBACK_ENV, raising=False)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://users-cluster:8265")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    try:
        assert ray_env.init_ray() == "local"
        assert [(c["address"], c["dashboard_port"]) for c in calls] == [("local", 8265), ("local", 40123)]
        assert calls[-1]["env"] == {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:40123", ray_env._LOOPBACK_ENV: "0"}
        assert calls[-1]["cluster_constant"] is False
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
        assert ray_env.init_ray() == "cluster"
        assert calls[-1]["env"] == {"RAY_API_SERVER_ADDRESS": "http://users-cluster:8265", ray_env._LOOPBACK_ENV: None}
        assert calls[-1]["cluster_constant"] is True
    finally:
        ray_env._undo_own_settings()
