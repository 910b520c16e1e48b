"""The jobs on a cluster that shares nothing but the network, as a real one: `cluster/local.py --share-nothing`.

Its worker nodes run in mount namespaces of their own (a private /tmp, empty mounts over this checkout and
../shared) with a clean environment (their own S3 credentials, none of the driver's variables); the head is this
machine, where `ray job submit` runs drivers. Every job here runs as a user runs it: `ray job submit` or `python
jobs/X.py` with RAY_ADDRESS, in a subprocess. Skipped, with the reason, where this machine cannot make namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from deblur import storage

from conftest import (
    ROOT,
    SHARED_DATA,
    free_port,
    local_cluster_module,
    start_serve_job,
    tiny_overrides,
    write_clip,
    write_image,
)

pytestmark = pytest.mark.slow
DRIVER_ONLY = "DEBLUR_TEST_DRIVER_ONLY"  # set in this process only: no node may have it


class BareCluster:
    def __init__(self, tmp: Path):
        self.local = local_cluster_module()
        reason = self.local.can_share_nothing()
        if reason:
            pytest.skip(f"no share-nothing cluster on this machine: {reason}")
        self.state = tmp
        venv_bin = str(Path(sys.executable).parent)  # `python` in a job's entrypoint, as in an activated venv
        if not os.environ.get("PATH", "").startswith(venv_bin):
            os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
        os.environ[DRIVER_ONLY] = "1"
        node_env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        hide = [str(SHARED_DATA.parent)] if SHARED_DATA.parent.is_dir() else []
        info = self.local.start(
            workers=2, head_cpus=2, worker_cpus=1, object_store_mb=400, state=tmp, share_nothing=True, hide=hide,
            node_env=node_env,
        )  # fmt: skip
        self.address, self.dashboard_url = info["address"], info["dashboard_url"]

    def env(self, **extra: str) -> dict[str, str]:
        """A driver's environment on this machine, for `python jobs/X.py` on the cluster or `ray job submit`."""
        env = {**os.environ, "RAY_ADDRESS": self.address, **extra}
        env.pop("DEBLUR_STORAGE", None)
        return env

    def submit(self, args: list[str], env_vars: dict[str, str] | None = None, timeout: int = 900):
        """`ray job submit --working-dir <checkout> -- <args>`, as the README runs a job on a cluster."""
        cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", self.dashboard_url]
        cmd += ["--working-dir", str(ROOT)]
        if env_vars:
            cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
        env = self.env()
        env.pop("RAY_ADDRESS")
        return subprocess.run(cmd + ["--", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def bare_cluster(s3_endpoint, tmp_path_factory):
    cluster = BareCluster(tmp_path_factory.mktemp("bare"))
    yield cluster
    os.environ.pop(DRIVER_ONLY, None)
    left = cluster.local.stop(cluster.state)
    assert not left, f"Ray processes still running after cluster/local.py stop: {left}"


def run_driver(cluster: BareCluster, code: str) -> dict:
    """`code` (which sets `result`) in a driver on this machine connected to the cluster; `result` as JSON."""
    script = f"import json, ray\nray.init(logging_level='ERROR')\n{code}\nprint('RESULT ' + json.dumps(result))\n"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cluster.env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.split("RESULT ", 1)[1])


NODE_VIEW = """
import os
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
def view(paths):
    import deblur, torch  # the installed environment, as a cluster image has it
    return {"sees": [p for p in paths if os.path.exists(p)], "env": sorted(os.environ), "home": os.environ["HOME"]}

result = {
    n["NodeID"]: ray.get(view.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], False))
                          .remote(%r))
    for n in ray.nodes() if n["Alive"]
}
"""


def test_worker_nodes_see_nothing_of_the_driver(bare_cluster, tmp_path):
    """The worker nodes see none of the driver's files (checkout, its runs/, ../shared, /tmp) and none of its
    environment, yet run the installed environment; the head, this machine, sees them all (the control)."""
    (tmp_path / "here.txt").write_text("driver's file")
    paths = [str(ROOT / "jobs" / "train.py"), str(ROOT / "README.md"), str(tmp_path / "here.txt")]
    if SHARED_DATA.is_dir():
        paths.append(str(SHARED_DATA))
    views = list(run_driver(bare_cluster, NODE_VIEW % paths).values())
    heads = [v for v in views if v["sees"]]
    workers = [v for v in views if not v["sees"]]
    assert len(heads) == 1 and heads[0]["sees"] == paths and DRIVER_ONLY in heads[0]["env"]
    assert len(workers) == len(views) - 1 >= 2
    for view in workers:
        assert DRIVER_ONLY not in view["env"] and "AWS_ENDPOINT_URL" not in view["env"], view["env"]
        assert "AWS_ACCESS_KEY_ID" in view["env"] and view["home"] == "/tmp/node-home"  # the node's own


def _photos(count: int) -> list[Path]:
    """Real blurred photos (Lai et al.'s, or their stand-ins)."""
    from conftest import shared

    return sorted(shared("realblur", "lai-real").glob("*.jpg"))[:count]


def test_submitted_training_keeps_its_run_and_resumes(bare_cluster, bucket, tiny_shards):
    """The README's main command on a share-nothing cluster: a relative storage_path goes under DEBLUR_STORAGE
    (here on S3), where best.json and the checkpoints stay after the job; the same command again resumes. Without
    DEBLUR_STORAGE the relative path is refused in one line. Three workers, one per node."""
    fs, _ = storage.filesystem(bucket)
    fs.put(tiny_shards, f"{bucket[5:]}/shards", recursive=True)
    base = f"{bucket}/deblur"

    def train(epochs: int, env_vars: dict[str, str] | None):
        sets = tiny_overrides(
            f"{bucket}/shards",
            "runs",
            "bare",
            epochs=epochs,
            **{"scaling.num_workers": 3, "scaling.placement_strategy": "STRICT_SPREAD"},
        )
        return bare_cluster.submit(["python", "jobs/train.py", *[a for s in sets for a in ("--set", s)]], env_vars)

    refused = train(1, None)
    assert refused.returncode != 0
    errors = sorted({line for line in refused.stdout.splitlines() if line.startswith("error: ")})  # Ray says it twice
    assert (
        "exit code 2" in refused.stdout
        and len(errors) == 1
        and "run.storage_path runs" in errors[0]
        and "DEBLUR_STORAGE" in errors[0]
    ), refused.stdout
    assert "Traceback" not in refused.stdout

    first = train(1, {"DEBLUR_STORAGE": base})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    best = json.loads(storage.read_text(f"{base}/runs/bare/best.json"))
    assert best["run"] == f"{base}/runs/bare" and best["checkpoint"].startswith(f"{base}/runs/bare/")
    assert storage.exists(storage.join(best["checkpoint"], "checkpoint.pt")) or fs.ls(best["checkpoint"][5:])
    assert f"best.json: {base}/runs/bare/best.json" in first.stdout

    second = train(2, {"DEBLUR_STORAGE": base})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from epoch 1/2" in second.stdout, second.stdout[-3000:]
    epochs = [json.loads(line)["epoch"] for line in storage.read_text(f"{base}/runs/bare/metrics.jsonl").splitlines()]
    assert epochs == [0, 1], epochs
    token = os.environ["RAY_AUTH_TOKEN"]
    assert token not in first.stdout + first.stderr + second.stdout + second.stderr


def test_bulk_over_s3_writes_every_output(bare_cluster, bucket):
    """The archive job submitted to the share-nothing cluster, S3 in and out: every image written. Three 1-CPU
    actors, so at least one on a worker node (the head holds two), reading and writing S3 with the node's own
    credentials and the endpoint the job forwards."""
    fs, _ = storage.filesystem(bucket)
    photos = []
    for k, p in enumerate(_photos(6) * 4):  # enough work that the worker node's actor, started last, gets some
        photos.append(Path(f"{k:02d}-{p.name}"))  # (small stand-in photos were all done by the head's two first)
        fs.pipe_file(f"{bucket[5:]}/archive/{photos[-1].name}", p.read_bytes())
    args = ["python", "jobs/bulk.py", "--input", f"{bucket}/archive", "--output", f"{bucket}/sharp"]
    res = bare_cluster.submit(args + ["--engine", "torch", "--workers", "3", "--gpus-per-worker", "0", "--no-progress"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{len(photos)} done, 0 skipped, 0 failed" in res.stdout, res.stdout[-3000:]
    written = {Path(p).name for p in fs.find(f"{bucket[5:]}/sharp")}
    assert {p.name for p in photos} <= written
    summary = json.loads(storage.read_text(f"{bucket}/sharp/_summary.json"))
    assert len(summary["nodes"]) >= 2, summary["nodes"]  # a worker node's actor wrote its share


@pytest.mark.parametrize("job", ["bulk", "train", "evaluate", "video", "prepare"])
def test_a_local_path_the_workers_cannot_see_is_one_line_and_exit_code_2(
    bare_cluster, job, tmp_path, tiny_shards, real_photo
):
    """A driver on this machine with local paths in its /tmp: the worker nodes do not see them, so the job stops
    before any work with one line naming the path (no outputs, no per-file errors)."""
    if job == "bulk":
        for k, p in enumerate(_photos(2)):
            (tmp_path / "in").mkdir(exist_ok=True)
            (tmp_path / "in" / f"{k}.jpg").write_bytes(p.read_bytes())
        args = ["jobs/bulk.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--engine", "torch"]
        named = f"--input {tmp_path / 'in'}"
    elif job == "train":
        sets = tiny_overrides(tiny_shards, str(tmp_path / "runs"), "local", epochs=1)
        args = ["jobs/train.py", *[a for s in sets for a in ("--set", s)]]
        named = f"data.uri {tiny_shards}"
    elif job == "evaluate":
        args = ["jobs/evaluate.py", "--data", tiny_shards, "--out", str(tmp_path / "report"), "--workers", "2"]
        args += ["--no-lpips", "--engine", "torch"]
        named = f"--data {tiny_shards}"
    elif job == "video":
        clip = write_clip(tmp_path / "clip.mp4", np.ascontiguousarray(real_photo[:64, :96]))
        args = ["jobs/video.py", str(clip), str(tmp_path / "out" / "sharp.mp4"), "--engine", "torch"]
        named = f"input {clip}"
    else:  # prepare encodes through Ray tasks, which read the pairs' files
        for kind in ("blur", "sharp"):
            write_image(tmp_path / "pairs" / kind / "a.png", real_photo[:64, :64])
        args = ["jobs/prepare_data.py", "--dataset", "paired", "--root", str(tmp_path / "pairs")]
        args += ["--out", str(tmp_path / "out"), "--workers", "2"]
        named = f"--root {tmp_path / 'pairs'}"
    res = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=bare_cluster.env(), timeout=600
    )
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0] and "does not see it" in errors[0], res.stderr[-2000:]
    assert "s3://" in errors[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _cluster_text(cluster: BareCluster) -> str:
    """What anyone with access to the cluster can read: Ray's job, actor and Serve listings, every node's logs
    (a worker's private /tmp through its raylet's /proc/<pid>/root), and every cluster process's command line
    and environment."""
    env = cluster.env()
    ray_cli = str(Path(sys.executable).parent / "ray")
    serve_cli = str(Path(sys.executable).parent / "serve")
    texts = []
    for cmd in (
        [ray_cli, "list", "jobs", "--detail", "--address", cluster.address],
        [ray_cli, "list", "actors", "--detail", "--address", cluster.address],
        [serve_cli, "status", "--address", cluster.dashboard_url],
        [serve_cli, "config", "--address", cluster.dashboard_url],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        texts.append(res.stdout + res.stderr)
    port = int(cluster.address.rsplit(":", 1)[1])
    roots = {"/"}
    for pid, args in cluster.local.cluster_processes(port):
        for part in ("cmdline", "environ"):
            try:
                texts.append(Path(f"/proc/{pid}/{part}").read_bytes().decode(errors="replace"))
            except OSError:
                pass
        if "/raylet/raylet " in args:
            roots.add(f"/proc/{pid}/root")
    temp = json.loads((cluster.state / "cluster.json").read_text())["temp_dir"]
    for root in roots:
        for path in Path(root + temp).rglob("*"):
            if path.is_file() and path.suffix in (".log", ".out", ".err", ".json", ".txt", ""):
                try:
                    texts.append(path.read_bytes()[-2_000_000:].decode(errors="replace"))
                except OSError:
                    pass
    return "\n".join(texts)


def test_serve_token_protects_every_replica_and_appears_nowhere(bare_cluster, real_photo):
    """`DEBLUR_API_TOKEN=... python jobs/serve.py` joining the share-nothing cluster: a replica on every node, each
    refusing requests without the token (401) and answering with it (the engine's exact output); the token is in
    no listing, log, command line or environment of the cluster."""
    from deblur.inference import load_engine

    token = "endpoint-" + os.urandom(16).hex()
    port = free_port()
    args = ["--port", str(port), "--engine", "torch", "--num-cpus", "1", "--num-gpus", "0"]
    args += ["--min-replicas", "3", "--max-replicas", "3"]  # CPU replicas on every node, a GPU machine's head too
    proc, _ = start_serve_job(args + ["--max-batch-size", "1"], bare_cluster.env(DEBLUR_API_TOKEN=token))
    try:
        replicas = run_driver(
            bare_cluster,
            "from ray.util.state import list_actors\n"
            "result = [a.node_id for a in list_actors(filters=[('state', '=', 'ALIVE')], limit=1000)"
            " if 'ServeReplica' in a.class_name]",
        )
        nodes = run_driver(bare_cluster, "result = [n['NodeID'] for n in ray.nodes() if n['Alive']]")
        assert sorted(set(replicas)) == sorted(nodes), (replicas, nodes)  # one replica on each node

        photo = np.ascontiguousarray(real_photo[:96, :128])
        import cv2

        body = cv2.imencode(".png", photo[..., ::-1])[1].tobytes()
        url = f"http://127.0.0.1:{port}/v1/deblur"
        headers = {"Content-Type": "image/png"}
        # Serve's proxy picks a replica per request (power of two choices): 24 tries reach all three but with
        # probability (2/3)^24 < 1e-4 each
        refused = [requests.post(url, data=body, headers=headers, timeout=120).status_code for _ in range(24)]
        wrong = requests.post(url, data=body, headers={**headers, "Authorization": "Bearer nope"}, timeout=120)
        assert set(refused) == {401} and wrong.status_code == 401, refused
        good = {**headers, "Authorization": f"Bearer {token}"}
        answers = [requests.post(url, data=body, headers=good, timeout=120) for _ in range(24)]
        assert {a.status_code for a in answers} == {200}
        expected = load_engine("default", "torch", "cpu", threads=1).deblur_image(photo)
        for answer in answers:
            out = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            assert np.array_equal(out, expected), np.abs(out.astype(int) - expected).max()
        assert token not in _cluster_text(bare_cluster)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    # the job's own stop: Serve's shutdown on a loaded machine may log Ray's own tracebacks (its controller
    # polling a stopped HAProxy), which are not this test's subject; the token is in none of it
    assert token not in out + err and "stopping" in out, (out[-1000:], err[-2000:])


def test_the_bulk_pool_grows_onto_a_node_that_joins(bare_cluster, bucket, tmp_path):
    """As an autoscaler adds a node while a job runs: bulk sizes its pool on the cluster it finds (4 CPUs: 4
    actors, at most --workers 6); then a worker raylet joins (`cluster/local.py add-worker`), and the actor pool
    grows onto it: the new node deblurs images too (the summary's nodes)."""
    fs, _ = storage.filesystem(bucket)
    photos, copies = _photos(24), 12
    # four minutes' work and more on 2 cores: 288 photos at half size through the network alone (the pool is the
    # subject; 96 at full size through the shipped route, ~6 s a photo for its kernel estimate, took a quarter of
    # an hour)
    halves = [
        cv2.imencode(".jpg", cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))[1]
        for img in (cv2.imread(str(p)) for p in photos)
    ]
    for k, data in enumerate(halves * copies):
        fs.pipe_file(f"{bucket[5:]}/many/{k:03d}.jpg", data.tobytes())
    cmd = [sys.executable, "jobs/bulk.py", "--input", f"{bucket}/many", "--output", f"{bucket}/grown"]
    cmd += ["--model", "deblur-nafnet-v1", "--engine", "torch", "--workers", "6", "--gpus-per-worker", "0"]
    cmd += ["--no-progress"]
    log = tmp_path / "bulk.out"
    with log.open("w") as out_file:
        env = bare_cluster.env(PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out_file, stderr=subprocess.PIPE, text=True)
    try:
        # the node joins once the job has found the cluster, not once its first images are written: a raylet
        # joining 2 cores that 4 actors keep busy took up to three tries of `ray start` (its Python agents
        # missed Ray's fixed 15 s to report their ports, or it missed `ray start`'s 30 s to register), and in the
        # full suite all three failed once: add-worker is called again while the job runs
        deadline = time.time() + 300
        while "joined a cluster of 3 node(s) (4 CPUs" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, (log.read_text(), proc.communicate())
            time.sleep(0.5)
        nodes = None
        while nodes is None and proc.poll() is None:
            try:
                nodes = bare_cluster.local.add_worker(bare_cluster.state, cpus=1)["nodes"]
            except RuntimeError as e:  # three `ray start`s failed (seen in the full suite): the job still runs
                print(f"add-worker failed, trying again while the job runs: {str(e)[:300]}", file=sys.stderr)
        assert nodes is not None, "no node could join while the job ran"
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    summary = json.loads(storage.read_text(f"{bucket}/grown/_summary.json"))
    new = run_driver(bare_cluster, f"result = [n['NodeID'] for n in ray.nodes() if n['Resources'].get('node{nodes}')]")
    assert len(new) == 1 and summary["workers"] == 6, summary
    assert summary["nodes"].get(new[0], 0) > 0, (summary["nodes"], new)  # the joined node's actor took images
    assert summary["done"] == len(photos) * copies
