#!/usr/bin/env python3
"""A local multi-node Ray cluster on one machine: one head plus N worker raylets, each with its own resources.

  python cluster/local.py start --workers 2          # prints RAY_ADDRESS for `ray job submit`
  python cluster/local.py start --workers 2 --share-nothing   # worker nodes with disks and env of their own
  python cluster/local.py add-worker                 # one more worker raylet (as an autoscaler adds a node)
  python cluster/local.py status
  python cluster/local.py stop

The same thing the tests use. Every node is addressed through 127.0.0.1 and the dashboard (and job API)
listens there only, but Ray 2.60 has the GCS and raylets listen on every interface: it resolves 127.0.0.1 to
the machine's address unless multi-node mode is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which refuses the
worker raylets. So token auth is on: the token comes from $RAY_AUTH_TOKEN, else one is made and kept in
`<state dir>/token` (mode 600) and never printed. Worker k gets a custom resource `node{k+2}`, so work can be
pinned.

`--share-nothing` makes the worker raylets what the nodes of a real cluster are: each runs in a mount
namespace of its own (`unshare`, as root) with a private, empty `/tmp` and `/dev/shm`, empty mounts over this
checkout and any `--hide` path (so none of the driver's files, `runs/` or data can be
seen there), and a clean environment: PATH, a HOME in its private /tmp, the cluster's token and what
`--node-env` gives (a node's own settings, e.g. its S3 credentials). What a cluster image has stays: the
installed Python environment and the installed `deblur` package (read-only where it sits in the checkout).
Only the network (loopback) is shared. The head stays this machine's, as the node where `ray job submit`
runs drivers.
"""

from __future__ import annotations

import argparse
import importlib.util
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

ROOT = Path(__file__).resolve().parents[1]  # the checkout, which share-nothing nodes do not see
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
            _write_private(path, secrets.token_hex(32))
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
    share_nothing: bool = False,
    hide: list[str] | None = None,
    node_env: dict[str, str] | None = None,
) -> dict:
    """Start the head and `workers` raylets; returns {address, dashboard_url, nodes} (also saved in state).
    `head_gpus`: the GPUs the head declares (default: the ones Ray finds), e.g. to see how jobs place their
    actors on a GPU cluster from a CPU machine (the actors then find no CUDA and run on the CPU). The worker
    raylets declare none: they share the machine's GPUs with the head, and each claiming them all would count
    every GPU once per raylet. `share_nothing`, `hide`, `node_env`: worker nodes that share only the network
    (module docstring); `can_share_nothing()` says whether this machine can make them."""
    if share_nothing and (reason := can_share_nothing()):
        raise RuntimeError(f"--share-nothing: {reason}")
    hidden = hidden_paths(hide or []) if share_nothing else []  # a path that cannot be hidden fails here
    env = _start_env(state)
    port, dash = free_port(), free_port()
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
            *COMMON_ARGS,
        ],
        env,
    )
    info = {
        "address": f"127.0.0.1:{port}",
        "dashboard_url": f"http://127.0.0.1:{dash}",
        "nodes": 1,
        "temp_dir": temp,
        "share_nothing": share_nothing,
        "hide": hidden,
        "object_store_mb": object_store_mb,
    }
    state.mkdir(parents=True, exist_ok=True)
    _write_private(state / "cluster.json", json.dumps(info))  # from here on, `stop` can find what was started
    _write_private(state / "node-env.json", json.dumps(node_env or {}))  # may hold a node's credentials
    try:
        for _ in range(workers):
            add_worker(state, worker_cpus)
    except Exception:
        stop(state)
        raise
    return json.loads((state / "cluster.json").read_text())


def add_worker(state: Path = STATE, cpus: int = 1) -> dict:
    """One more worker raylet for the cluster of `state`, as an autoscaler adds a node to a running cluster (a
    share-nothing cluster's in a namespace of its own); returns the cluster's info with the node counted. Worker
    k (2, 3, ...) gets the custom resource `node{k}`."""
    info = json.loads((state / "cluster.json").read_text())
    env = _start_env(state)
    k = info["nodes"] + 1
    cmd = [
        ray_bin(),
        "start",
        f"--address={info['address']}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        f'--resources={{"node{k}": 1}}',
        f"--object-store-memory={info.get('object_store_mb', 600) // 2 * 1024 * 1024}",
        f"--temp-dir={info['temp_dir']}",
        *own_ports(),
        *COMMON_ARGS,
    ]
    if info.get("share_nothing"):
        env = node_environment(state)
        cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, str(Path(__file__).resolve()),
               "_node", *[a for path in info["hide"] for a in ("--hide", path)], "--", *cmd]  # fmt: skip
    _join(cmd, env)
    info["nodes"] = k
    _write_private(state / "cluster.json", json.dumps(info))
    return info


COMMON_ARGS = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]  # every raylet's `ray start`


def _start_env(state: Path) -> dict[str, str]:
    """The environment `ray start` runs in on this machine: this process's with the cluster's token, less
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (=0, exported for a one-node Ray on loopback or set by a job's `init_ray`
    in this process, it would refuse the second raylet on one machine)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"} | auth_env(state)


def hidden_paths(extra: list[str]) -> list[str]:
    """The folders share-nothing nodes must not see: this checkout (with its `runs/`) and `extra`. A folder that
    holds the Python installation itself (/, a home with pyenv) cannot be hidden: the node would have no Python."""
    paths = sorted({str(Path(p).resolve()) for p in [ROOT, *extra]})
    for path in paths:
        if _under(sys.base_prefix, path):
            raise ValueError(f"--hide {path}: it holds this machine's Python ({sys.base_prefix}); name a folder in it")
    return paths


def _write_private(path: Path, text: str) -> None:
    """`text` in a file only this user can read, from its first byte (it may hold credentials)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def can_share_nothing() -> str | None:
    """Why this machine cannot start share-nothing nodes (None: it can): they need root, `unshare` and mount
    namespaces (Linux)."""
    if sys.platform != "linux":
        return "mount namespaces are Linux's"
    if os.geteuid() != 0:
        return "making a node's private mounts needs root"
    if not shutil.which("unshare"):
        return "the unshare command (util-linux) is missing"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"this machine refuses a mount namespace ({probe.stderr.strip() or probe.returncode})"
    return None


def node_environment(state: Path) -> dict[str, str]:
    """All a share-nothing node's processes have in their environment: what a node of a real cluster has (a
    PATH with the installed Python environment first, a HOME of its own, a locale), the cluster's token, and the
    node's own settings given to `start` (`node_env`). Nothing of this process's environment."""
    venv_bin = str(Path(sys.executable).parent)
    node_env = json.loads((state / "node-env.json").read_text()) if (state / "node-env.json").exists() else {}
    return {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": NODE_HOME,
        "LANG": "C.UTF-8",
        **auth_env(state),
        **node_env,
    }


NODE_HOME = "/tmp/node-home"  # in the node's private /tmp


def kept_paths(hidden: list[str]) -> list[str]:
    """What a cluster image would have that sits under a hidden path here: the Python environment this runs in
    (a virtualenv in the checkout) and the installed `deblur` package (an editable install points into the
    checkout)."""
    keep = [sys.prefix]
    spec = importlib.util.find_spec("deblur")
    if spec and spec.submodule_search_locations:
        keep += list(spec.submodule_search_locations)
    return sorted({str(Path(p).resolve()) for p in keep if any(_under(p, h) for h in hidden)})


def _under(path: str, folder: str) -> bool:
    path, folder = str(Path(path).resolve()), str(Path(folder).resolve())
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _node(hide: list[str], cmd: list[str]) -> None:
    """Inside a new mount namespace (`add_worker` runs this under `unshare`): make the node's private mounts,
    then become `cmd` (`ray start`). The kept paths are bound aside first, since the empty mounts cover them."""

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)

    keep = kept_paths(hide)
    aside = Path("/mnt")  # this namespace's own empty mount there holds the kept paths while /tmp and the rest go
    mount("-t", "tmpfs", "-o", "mode=700", "tmpfs", str(aside))
    for k, path in enumerate(keep):
        (aside / str(k)).mkdir(parents=True)
        mount("--bind", path, str(aside / str(k)))
    mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/tmp")
    mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm")
    for path in hide:
        if Path(path).is_dir() and not _under(path, "/tmp"):
            mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", path)
    for k, path in enumerate(keep):
        Path(path).mkdir(parents=True, exist_ok=True)
        mount("--bind", str(aside / str(k)), path)
        if path != str(Path(sys.prefix).resolve()):  # the package as installed: nothing writes into it
            mount("-o", "remount,bind,ro", path)
    Path(NODE_HOME).mkdir(parents=True, exist_ok=True)
    os.chdir(NODE_HOME)
    os.execv(cmd[0], cmd)


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


def stop(state: Path = STATE, wait_s: float = 10.0) -> list[str]:
    """Stop this cluster's processes only (SIGTERM, then SIGKILL after `wait_s`); returns any left. The raylets
    end within seconds of SIGTERM; Ray 2.60's GCS server and autoscaler monitor wait it out (measured: still up
    after 10 s), and hold nothing a later cluster needs.

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
        (state / "node-env.json").unlink(missing_ok=True)
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
    s.add_argument("--share-nothing", action="store_true", help="worker nodes with disks and env of their own")
    s.add_argument("--hide", action="append", default=[], help="a path the worker nodes must not see (repeatable)")
    s.add_argument(
        "--node-env", action="append", default=[], metavar="KEY=VALUE", help="a worker node's own setting (repeatable)"
    )
    a = sub.add_parser("add-worker")
    a.add_argument("--cpus", type=int, default=1)
    n = sub.add_parser("_node")  # internal: a share-nothing node's mounts, inside its namespace
    n.add_argument("--hide", action="append", default=[])
    n.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("stop")
    sub.add_parser("status")
    args = p.parse_args()
    if args.cmd == "start":
        node_env = dict(item.split("=", 1) for item in args.node_env)
        info = start(
            args.workers,
            args.head_cpus,
            args.worker_cpus,
            head_gpus=args.head_gpus,
            share_nothing=args.share_nothing,
            hide=args.hide,
            node_env=node_env,
        )
        shared = "share nothing but the network" if args.share_nothing else "share this machine's disk"
        print(f"started {info['nodes']} nodes (addressed through 127.0.0.1; the workers {shared})")
        print(f"export RAY_ADDRESS={info['dashboard_url']}   # for ray job submit")
        print(
            f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(cat {STATE / 'token'})"
            if not os.environ.get("RAY_AUTH_TOKEN")
            else ""
        )
        print(f"python scripts connect with ray.init(address='{info['address']}')")
    elif args.cmd == "add-worker":
        print(f"the cluster has {add_worker(STATE, args.cpus)['nodes']} nodes")
    elif args.cmd == "_node":
        _node(args.hide, args.command[1:] if args.command[:1] == ["--"] else args.command)
    elif args.cmd == "stop":
        left = stop()
        print("stopped" if not left else "still running:\n" + "\n".join(left))
        return 1 if left else 0
    else:
        print(json.dumps(status(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
