#!/usr/bin/env python3
"""A local multi-node Ray cluster on one machine: one head plus N worker raylets, each with its own resources.

  python cluster/local.py start --workers 2          # prints RAY_ADDRESS for `ray job submit`
  python cluster/local.py status
  python cluster/local.py stop

The same thing the tests use. Every node is addressed through 127.0.0.1 and the dashboard (and job API)
listens there only, but Ray 2.60 has the GCS and raylets listen on every interface: it resolves 127.0.0.1 to
the machine's address unless multi-node mode is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which refuses the
worker raylets. So token auth is on: the token comes from $RAY_AUTH_TOKEN, else one is made and kept in
`<state dir>/token` (mode 600) and never printed. Worker k gets a custom resource `node{k+2}`, so work can be
pinned.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STATE = Path(os.environ.get("DEBLUR_LOCAL_CLUSTER", Path.home() / ".deblur" / "local-cluster"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_ports() -> list[str]:
    """Ports Ray would otherwise take at fixed defaults (the dashboard agent's 52365 above all): a second
    cluster on the same machine then finds them taken and its job agent never comes up."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]


def ray_bin() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def auth_env(state: Path) -> dict[str, str]:
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = state / "token"
        if not path.exists():
            state.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        token = path.read_text().strip()
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}


def _run(cmd: list[str], env: dict[str, str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")


def _join(cmd: list[str], env: dict[str, str], tries: int = 3) -> None:
    """`ray start --address=...` for one worker raylet, tried again when it fails.

    `ray start` gives a raylet a fixed 30 s to register with the GCS; a loaded machine's GCS can take
    longer (seen in CI: "Failed to get node info: Deadline Exceeded"), and then `ray start` exits 1 and
    leaves the raylet and its agents running. Each try runs in a session of its own, so what a failed try
    started is exactly that session's processes: they are stopped before the next try, and the cluster
    never carries a half-started node."""
    for attempt in range(1, tries + 1):
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode == 0:
            return
        _terminate(lambda: [pid for pid, _ in session_processes(proc.pid)])
        if attempt == tries:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed {tries} times; the last:\n{out[-2000:]}\n{err[-2000:]}")
        print(f"a worker raylet did not start (try {attempt} of {tries}); trying again", file=sys.stderr)
        time.sleep(2 * attempt)


def start(
    workers: int = 2,
    head_cpus: int = 2,
    worker_cpus: int = 1,
    object_store_mb: int = 600,
    state: Path = STATE,
    head_gpus: int | None = None,
) -> dict:
    """Start the head and `workers` raylets; returns {address, dashboard_url, nodes} (also saved in state).
    `head_gpus`: the GPUs the head declares (default: the ones Ray finds), e.g. to see how jobs place their
    actors on a GPU cluster from a CPU machine (the actors then find no CUDA and run on the CPU). The worker
    raylets declare none: they share the machine's GPUs with the head, and each claiming them all would count
    every GPU once per raylet."""
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (exported for a one-node Ray on loopback, or set by a job's
    # `init_ray` in this process) would refuse the second raylet on one machine
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"} | auth_env(state)
    port, dash = free_port(), free_port()
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    # A temp dir of its own (short: Ray's socket paths must fit 107 bytes): the head then does not overwrite
    # /tmp/ray/ray_current_cluster, through which Ray processes of another cluster on this machine find
    # "their" cluster; sharing it sends them to this one.
    temp = tempfile.mkdtemp(prefix="deblur-ray-", dir="/tmp")
    _run(
        [
            ray_bin(),
            "start",
            "--head",
            f"--port={port}",
            f"--num-cpus={head_cpus}",
            *([f"--num-gpus={head_gpus}"] if head_gpus is not None else []),
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--temp-dir={temp}",
            *own_ports(),
            f"--object-store-memory={object_store_mb * 1024 * 1024}",
            *common,
        ],
        env,
    )
    info = {
        "address": f"127.0.0.1:{port}",
        "dashboard_url": f"http://127.0.0.1:{dash}",
        "nodes": 1 + workers,
        "temp_dir": temp,
    }
    state.mkdir(parents=True, exist_ok=True)
    (state / "cluster.json").write_text(json.dumps(info))  # from here on, `stop` can find what was started
    try:
        for k in range(workers):
            _join(
                [
                    ray_bin(),
                    "start",
                    f"--address=127.0.0.1:{port}",
                    f"--num-cpus={worker_cpus}",
                    "--num-gpus=0",
                    f'--resources={{"node{k + 2}": 1}}',
                    f"--object-store-memory={object_store_mb // 2 * 1024 * 1024}",
                    f"--temp-dir={temp}",
                    *own_ports(),
                    *common,
                ],
                env,
            )
    except Exception:
        stop(state)
        raise
    return info


def _process_table() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process on the machine."""
    res = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True)
    if res.returncode != 0:  # an empty table would read as "nothing left running"
        raise RuntimeError(f"ps failed: {res.stderr.strip()}")
    rows = []
    for line in res.stdout.splitlines():
        pid, ppid, *args = line.split(None, 2)
        rows.append((int(pid), int(ppid), args[0] if args else ""))
    return rows


def _with_descendants(table: list[tuple[int, int, str]], roots: set[int]) -> list[tuple[int, str]]:
    ours, grew = set(roots), True
    while grew:
        more = {pid for pid, ppid, _ in table if ppid in ours and pid not in ours}
        ours |= more
        grew = bool(more)
    ours.discard(os.getpid())
    return [(pid, args) for pid, _, args in table if pid in ours]


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # gone meanwhile
        return None


def cluster_processes(port: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process of the cluster whose GCS listens on `port`: the daemons that
    name that address (gcs_server, raylets, dashboard, agents, monitors) and everything they started
    (workers). Another cluster on this machine, or another user's, names another port and is left alone."""
    table = _process_table()
    mark = re.compile(rf"(?:\S:{port}|--gcs_server_port={port})(?:\s|$)")  # --gcs-address=<ip>:port, the GCS's own port
    return _with_descendants(table, {pid for pid, _, args in table if mark.search(args)})


def session_processes(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes in session `sid` and what they started."""
    table = _process_table()
    return _with_descendants(table, {pid for pid, _, _ in table if _session(pid) == sid})


def _terminate(find, wait_s: float = 30.0) -> None:
    """SIGTERM the pids `find()` lists, then SIGKILL any still there after `wait_s`."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in find():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while find() and time.time() < deadline:
            time.sleep(0.5)
        if not find():
            return


def stop(state: Path = STATE, wait_s: float = 30.0) -> list[str]:
    """Stop this cluster's processes only (SIGTERM, then SIGKILL after `wait_s`); returns any left.

    Not `ray stop --force`: that kills every Ray process on the machine, other users' clusters too.
    """
    path = state / "cluster.json"
    if not path.exists():
        return []
    info = json.loads(path.read_text())
    port = int(info["address"].rsplit(":", 1)[1])
    _terminate(lambda: [pid for pid, _ in cluster_processes(port)], wait_s)
    left = [args for _, args in cluster_processes(port)]
    if not left:
        path.unlink(missing_ok=True)
        if info.get("temp_dir", "").startswith("/tmp/deblur-ray-"):
            shutil.rmtree(info["temp_dir"], ignore_errors=True)
    return left


def status(state: Path = STATE) -> dict:
    path = state / "cluster.json"
    if not path.exists():
        return {"running": False}
    info = json.loads(path.read_text())
    import ray

    os.environ.update(auth_env(state))
    ray.init(address=info["address"], logging_level="ERROR", log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
        info.update(running=True, alive_nodes=len(alive), resources=ray.cluster_resources())
    finally:
        ray.shutdown()
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--head-cpus", type=int, default=2)
    s.add_argument("--worker-cpus", type=int, default=1)
    s.add_argument("--head-gpus", type=int, help="GPUs the head declares (default: those Ray finds)")
    sub.add_parser("stop")
    sub.add_parser("status")
    args = p.parse_args()
    if args.cmd == "start":
        info = start(args.workers, args.head_cpus, args.worker_cpus, head_gpus=args.head_gpus)
        print(f"started {info['nodes']} nodes (addressed through 127.0.0.1)")
        print(f"export RAY_ADDRESS={info['dashboard_url']}   # for ray job submit")
        print(
            f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat {STATE / 'token'})"
            if not os.environ.get("RAY_AUTH_TOKEN")
            else ""
        )
        print(f"python scripts connect with ray.init(address='{info['address']}')")
    elif args.cmd == "stop":
        left = stop()
        print("stopped" if not left else "still running:\n" + "\n".join(left))
        return 1 if left else 0
    else:
        print(json.dumps(status(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
