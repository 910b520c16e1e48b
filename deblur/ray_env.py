"""Joining or starting Ray, the same way for every job.

`ray job submit` sets RAY_ADDRESS, so a submitted job joins its cluster; `deblur X` (or `python jobs/X.py`) joins a running
local cluster when there is one (`ray start`'s, which Ray records), and otherwise starts a private instance on
loopback (every process listening on 127.0.0.1 only) sized to the machine, which no other job joins: it ends
with its job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import PlainValidator

log = logging.getLogger(__name__)


def _recorded_cluster(timeout_s: float = 1.0) -> tuple[str, bool] | None:
    """The cluster `ray start` last started on this machine, as (address, on loopback only), where it answers.

    Ray records it in <tmp>/ray/ray_current_cluster and keeps the record after that cluster is gone; joining a
    dead one retries for minutes, so a stale record means "start a local Ray", not a hang. Ray joins a
    recorded 127.0.0.1 through the machine's address (`resolve_ip_for_localhost`), where a cluster started
    on loopback only (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) never answers: that one is joined from loopback
    (`_keep_on_loopback`), or the join would hang the same way."""
    from ray._common.utils import get_ray_address_file

    def answers(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return True
        except OSError:
            return False

    try:
        address = open(get_ray_address_file(None)).read().split()[0]  # where `ray start` writes it
        host, port = address.rsplit(":", 1)[0], int(address.rsplit(":", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    if not answers(host, port):
        return None
    if host not in ("127.0.0.1", "localhost"):
        return address, False
    from ray._private.services import get_node_ip_address

    return address, not answers(get_node_ip_address(), port)


LOG_LEVEL_ENV = "DEBLUR_RAY_LOG_LEVEL"


def quiet_ray_libraries(level: str | None = None) -> None:
    """Ray Data's and Ray Train's own INFO lines (each dataset's plan, start, progress and finish; each
    report's whole metrics dict) at the job's level, in this process. `ray.LoggingConfig` sets the root
    logger, but Ray Data logs through its own console handler and Ray Train's report lines through a logger
    named after its file, so neither follows it. Ray Data still writes everything to ray-data.log. Below
    INFO, the deprecation warnings Ray's libraries raise about each other's calls are hidden too: nothing a
    user can act on (a deprecated call from the job's own code still warns). Runs in the driver and, with
    `init_ray(quiet_workers=True)`, as the runtime env's `worker_process_setup_hook` in every worker; a Ray
    version without these loggers is left as it is."""
    level = (level or os.environ.get(LOG_LEVEL_ENV) or "WARNING").upper()
    try:
        import ray.data  # noqa: F401  (configures the ray.data logger)
        from ray.train.v2._internal.execution import context as train_context
        from ray.util.annotations import RayDeprecationWarning
    except ImportError:
        return
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; its file handler keeps DEBUG
            handler.setLevel(level)
    logging.getLogger(train_context.__file__).setLevel(level)
    if logging.getLevelName(level) > logging.INFO:
        warnings.filterwarnings("ignore", category=RayDeprecationWarning, module=r"ray\.")


def job_runtime_env(*, joining: bool, quiet_workers: bool, log_level: str = "WARNING") -> dict | None:
    """The runtime env the job's workers need, or None where they need none.

    None matters: Ray starts one idle worker per CPU ahead of time, and those serve only jobs without a
    runtime env; with one, every actor and task of the job waits for a new worker process (on 2 cores the
    bulk job's first image began ~1.5 s later). Joining a cluster, the workers on other machines need the S3
    endpoint variables; a local Ray started by this process inherits them. `quiet_workers` runs
    `quiet_ray_libraries` in every worker, for jobs whose workers run Ray Train and Ray Data's executor
    themselves (training), where their INFO lines would otherwise reach the driver each epoch."""
    env_vars = {}
    if joining:
        env_vars = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED") if k in os.environ}
    env: dict = {}
    if quiet_workers:
        # Ray Train patches print() in its workers to also log each line, which then reaches the driver twice
        # (the stdout copy and the log record): without the patch a worker's line arrives once.
        env_vars |= {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", LOG_LEVEL_ENV: log_level}
        env["worker_process_setup_hook"] = "deblur.ray_env.quiet_ray_libraries"
    if env_vars:
        env["env_vars"] = env_vars
    return env or None


def init_ray(
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    log_level: str = "WARNING",
    quiet_workers: bool = False,
    announce: bool = False,
) -> str:
    """Connect to (or start) Ray; returns how: 'existing', 'cluster' or 'local'. `log_level` is the root
    logger's in every task and actor of the job, and Ray Data's and Ray Train's own in the driver (and in
    every worker with `quiet_workers`, see `job_runtime_env`). `announce`: print where the job runs and its
    dashboard (`announce_ray`), as the jobs do."""
    how, context = _join_or_start(num_cpus, object_store_mb, log_level, quiet_workers)
    if announce and context is not None:
        announce_ray(how, context)
    return how


def _join_or_start(num_cpus: int | None, object_store_mb: int | None, log_level: str, quiet_workers: bool):
    """`init_ray`'s work: how Ray was joined or started, and what `ray.init` returned (None: it was up)."""
    import ray

    if ray.is_initialized():
        return "existing", None
    quiet_ray_libraries(log_level)
    quiet = {
        "log_to_driver": True,
        "logging_level": logging.WARNING,
        "logging_config": ray.LoggingConfig(log_level=log_level),
    }
    joined = {"runtime_env": job_runtime_env(joining=True, quiet_workers=quiet_workers, log_level=log_level), **quiet}
    _undo_own_settings()  # of a Ray this process started before: they describe that one only
    if os.environ.get("RAY_ADDRESS"):
        return "cluster", ray.init(**joined)
    if recorded := _recorded_cluster():
        address, loopback_only = recorded
        if loopback_only:
            _keep_on_loopback()
        try:
            context = ray.init(address=address, **joined)
        except (ConnectionError, RuntimeError, ValueError):
            _undo_own_settings()
        else:
            return "cluster", context
    # The dashboard process also serves the State API that Ray Train's controller polls; loopback only.
    kwargs = {
        "num_cpus": num_cpus or os.cpu_count(),
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "_node_ip_address": "127.0.0.1",
    }
    if object_store_mb:
        kwargs["object_store_memory"] = object_store_mb * 1024 * 1024
    runtime_env = job_runtime_env(joining=False, quiet_workers=quiet_workers, log_level=log_level)
    _keep_on_loopback()
    # Ray's State API, which Ray Train's placement-group cleaner polls from a worker (and Ray Data's hanging
    # detector from the driver), finds its cluster through RAY_API_SERVER_ADDRESS, else through the machine's
    # record of the last cluster started: a dead one, which the cleaner polls until its stop times out (a
    # traceback at the end of the run), or another's, where it finds no controller of this run and removes
    # the run's placement group. So the variable names this Ray's dashboard, in this process and in the Ray
    # processes it starts, which inherit it. The record is left alone: it names clusters that outlive their
    # starter (`ray start`), which a second job may join; this Ray ends with this process, so a job beside it
    # starts its own. A dashboard port given explicitly is not retried by Ray: 8265 taken meanwhile (another
    # job starting at the same moment) gets one more try on a port the system picks.
    for port in (8265, 0):
        dashboard = free_port("127.0.0.1", port)
        if dashboard is None:
            continue
        _set_own(_API_SERVER_ENV, f"http://127.0.0.1:{dashboard}")
        try:  # "local": a new instance, whatever is recorded
            context = ray.init(address="local", runtime_env=runtime_env, dashboard_port=dashboard, **kwargs, **quiet)
        except (ValueError, RuntimeError, ConnectionError):
            ray.shutdown()
            if port == 0:
                raise
        except Exception as e:  # a raylet or GCS that never came up (Ray raises a bare Exception): one line
            ray.shutdown()
            raise OSError(f"Ray did not start on this machine: {e}") from e
        else:
            return "local", context
    raise OSError("no free port on 127.0.0.1 for Ray's dashboard")


def announce_ray(how: str, context) -> None:
    """Print the line Ray itself prints as it starts or joins ("View the dashboard at ..."), which the jobs'
    WARNING level hides, so that a user sees where the job runs and where to watch it (a local Ray's dashboard
    port is 8265 unless that was taken). `context`: what `ray.init` returned."""
    import ray

    url = os.environ.get("RAY_OVERRIDE_DASHBOARD_URL") or context.dashboard_url  # Ray's own line does the same
    dashboard = f"dashboard {url if '://' in url else 'http://' + url}" if url else "no dashboard"
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if how == "local":
        print(
            f"Ray: a local instance for this job ({cpus:g} CPUs, on 127.0.0.1 only; it ends with the job), {dashboard}"
        )
    else:  # the nodes up now: an autoscaler may add more as the job asks
        nodes = sum(node["Alive"] for node in ray.nodes())
        print(f"Ray: joined a cluster of {nodes} node(s) ({cpus:g} CPUs, {gpus:g} GPUs), {dashboard}")
    sys.stdout.flush()


_API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_CLUSTER_CONSTANT = "ray_constants.ENABLE_RAY_CLUSTER"  # what Ray read from _LOOPBACK_ENV when imported
#: what `init_ray` changed in this process for a Ray it started or joined on loopback: name → value before
_own_settings: dict[str, str | bool | None] = {}


def _set_own(name: str, value: str) -> None:
    _own_settings.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def _undo_own_settings() -> None:
    """Put back what `init_ray` changed for an earlier Ray of this process (a library user may init, shut
    down and join another cluster in one process): the user's own values return."""
    from ray._private import ray_constants

    for name, before in _own_settings.items():
        if name == _CLUSTER_CONSTANT:
            ray_constants.ENABLE_RAY_CLUSTER = before
        elif before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
    _own_settings.clear()


def server_socket(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (0: a port the system picks), opened as most servers open theirs:
    SO_REUSEADDR, so a closed connection's TIME_WAIT does not count as taken; IPv6 for an IPv6 host. Raises
    OSError where that cannot be."""
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)


def free_port(host: str, port: int) -> int | None:
    """`port` (0: one the system picks) where a server could listen on it on `host` now, else None."""
    try:
        with server_socket(host, port) as s:
            return s.getsockname()[1]
    except OSError:
        return None


def _keep_on_loopback() -> None:
    """Keep a Ray of one node that this process starts on 127.0.0.1. Ray turns `_node_ip_address="127.0.0.1"`
    into the machine's reachable address, and its GCS and raylets then listen on every interface, unless
    multi-node clusters are off: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which Ray reads when it is imported
    (so here also the constant it set) and its processes inherit. Never for a driver joining a cluster that
    other machines reach (it must be reachable from their nodes); only for one on loopback only. Measured with
    `ss -ltnp` (Ray 2.60): GCS, raylet, workers and dashboard on 127.0.0.1 only, against `*` and the eth0
    address without it. `_undo_own_settings` puts it back."""
    from ray._private import ray_constants

    _set_own(_LOOPBACK_ENV, "0")
    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        _own_settings.setdefault(_CLUSTER_CONSTANT, ray_constants.ENABLE_RAY_CLUSTER)
        ray_constants.ENABLE_RAY_CLUSTER = False


class WorkerStartError(ValueError):
    """An actor could not start on a worker: its constructor raised (an engine that worker cannot load)."""


def worker_device() -> str | None:
    """ "cpu" in a Ray worker the scheduler gave no GPU, else None (the engine picks). Ray 2.60 no longer hides a
    machine's GPUs from such a worker (ray-project/ray#54868), so torch and ONNX Runtime would put every CPU
    actor of a GPU machine on GPU 0, which the scheduler never gave them. None in a driver (nothing assigns it
    devices). Called in actors' constructors."""
    import ray

    in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    return "cpu" if in_worker and not ray.get_gpu_ids() else None


def gpu_request(value: object) -> float | str:
    """GPUs per actor as the jobs take them: a number (0 or more), or "auto" (`actor_gpus`)."""
    if value == "auto":
        return "auto"
    try:
        amount = -1.0 if isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        amount = -1.0
    if not 0 <= amount < float("inf"):  # NaN too
        raise ValueError(f"{value!r}: give a number of GPUs (0 or more) or auto")
    return amount


#: an options field that takes `gpu_request`'s values, its one error line included
GpuRequest = Annotated[float | str, PlainValidator(gpu_request)]


def actor_gpus(requested: float | str, node_gpus: Iterable[float] | None = None) -> float:
    """GPUs per actor: `requested`, or for "auto" (the jobs' default) one when a node of the Ray cluster has a
    GPU now or its autoscaler's config has GPU nodes (`configured_most`), and none otherwise, so a job submitted
    to a GPU cluster runs its models on the GPUs without being told (an autoscaler at 0 GPU nodes brings them
    up), and on CPUs where there are none. `node_gpus`: each node's GPUs (default: the connected cluster's live
    nodes and its autoscaler's config)."""
    if requested != "auto":
        return float(requested)
    if node_gpus is None:
        import ray

        if not ray.is_initialized():
            init_ray()
        node_gpus = [n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]]
        node_gpus.append(configured_most("GPU") or 0.0)
    return 1.0 if any(g >= 1 for g in node_gpus) else 0.0


def resolve_actor_gpus(
    requested: float | str, backend: str, precision: str | None, where: str, flag: str = "--gpus-per-worker"
) -> float:
    """`actor_gpus` on the Ray joined or started (`where`, as `init_ray` said), with fp16 or TensorRT refused
    where "auto" gave the actors none (a number was checked before Ray started, `check_engine_request`)."""
    gpus = actor_gpus(requested)
    if requested == "auto":
        from .inference import check_workers_gpus

        check_workers_gpus(backend, precision, gpus, flag, auto=where)
    return gpus


def configured_most(resource: str) -> float | None:
    """The most of `resource` ("CPU", "GPU") the connected cluster's autoscaler may bring up: each node type's
    `max_workers` times its resources, as the cluster launcher or KubeRay reported them to Ray (what Ray Data's
    own autoscaling reads). None where there is no such config (a cluster of `ray start`s, a job's own Ray)."""
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API of Ray's: where it moved or fails, there is no config to go by
        return None
    return float(most[resource]) if most and most.get(resource) else None


@dataclass(frozen=True)
class ActorPool:
    """How many engine actors a stage of a job runs: `initial` at its start, up to `most` as nodes join (an
    autoscaler's or any other), down to `least`. A Ray of the job's own gets a pool of fixed size (no node joins
    it)."""

    least: int
    initial: int
    most: int

    def strategy(self, **kwargs: Any):
        import ray.data

        if self.least == self.most:
            return ray.data.ActorPoolStrategy(size=self.most, **kwargs)
        return ray.data.ActorPoolStrategy(min_size=self.least, max_size=self.most, initial_size=self.initial, **kwargs)


def actor_pool(workers: int | None, cpus: float, gpus: float, items: int) -> ActorPool:
    """The actor pool for `items` pieces of work, actors of `cpus` CPUs and `gpus` GPUs each. It starts with as
    many as the cluster holds now and, on a cluster, may grow to `workers` (a flag: "at most") or else to what
    the autoscaler's config allows (`configured_most`; without one, what the nodes up now hold), as Ray Data
    scales actor pools; never more than `items`. So a job started while an autoscaler's GPU group is at 0 nodes
    still grows onto the GPU nodes it brings up, where a pool sized at the start ran one actor for the job. On a
    Ray this process started (`own_ray`), no node will join: exactly as many as fit, at most `workers` (more
    would wait all run)."""
    import ray

    resource, per = ("GPU", gpus) if gpus else ("CPU", cpus)
    have = ray.cluster_resources().get(resource, 0.0)
    now = max(1, int(have // per))
    cap = max(1, items)
    if own_ray():
        size = min(workers or now, now, cap)
        return ActorPool(size, size, size)
    most = max(1, min(workers or int(min(configured_most(resource) or have, MOST_ACTORS * per) // per), cap))
    return ActorPool(1, min(now, most), most)


#: actors a pool may grow to where the autoscaler's config sets no maximum (an unbounded node group)
MOST_ACTORS = 1024


def own_ray() -> bool:
    """Whether the connected Ray is one this process started (`init_ray` on a machine without a cluster, or
    `ray.init()`): its head node is this process's, and no other node will join it."""
    import ray

    try:
        return ray.is_initialized() and bool(ray._private.worker._global_node.head)
    except AttributeError:  # Ray's internals moved: take it for a cluster (a pool that may grow)
        return False


def _actor_init_failure(error: BaseException | None) -> bool:
    import ray

    return isinstance(error, ray.exceptions.RayActorError) and error.actor_init_failed


class _NoRayBugReportForActorInit(logging.Filter):
    """Ray Data takes an actor whose constructor raised for a fault of its own: before raising the error to the
    driver it logs "Exception occurred in Ray Data or Ray Core internal code ... please open an issue on the Ray
    project" and the whole stack again. Neither holds for a worker that cannot load the engine, which the job
    then says in one line; any other error is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _actor_init_failure(sys.exc_info()[1])


@contextlib.contextmanager
def actor_start_errors(what: str) -> Iterator[None]:
    """Ray reports an actor whose constructor raised as a `RayActorError` that carries the remote traceback as
    text, after logging it from every actor. The jobs end on one line naming the cause instead: bf16 on a worker
    without AMX, TensorRT missing where the actors landed, a model the workers cannot read."""
    ray_data_errors = logging.getLogger("ray.data.exceptions")  # the logger of Ray Data's `omit_traceback_stdout`
    quiet = _NoRayBugReportForActorInit()
    ray_data_errors.addFilter(quiet)
    try:
        yield
    except Exception as e:
        if not _actor_init_failure(e):  # an actor that died later (a crash, out of memory): Ray's own error says more
            raise
        raise WorkerStartError(f"{what} could not start on a worker: {error_line(e.error_msg)}") from None
    finally:
        ray_data_errors.removeFilter(quiet)


def error_line(traceback_text: str) -> str:
    """`Type: message` of the exception that ends a traceback Ray hands over as text: the first line after the
    last frame (its source and caret lines are indented), the type without its module, colour codes removed."""
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", traceback_text).splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if re.match(r'^\s+File "', line)]
    after = [line for line in lines[frames[-1] + 1 :] if not line[0].isspace()] if frames else []
    line = (after or lines or ["unknown error"])[0 if after else -1].strip()
    kind, sep, message = line.partition(": ")
    if re.fullmatch(r"[\w.]+", kind):
        return kind.rsplit(".", 1)[-1] + sep + message
    return line


def check_actors_fit(wanted: dict[str, tuple[str, float]]) -> None:
    """Refuse actors bigger than a Ray this job started on this machine: with no autoscaler to add a node they
    would wait forever (Ray only warns that the job may hang). `wanted`: resource → (what asks, how much in all),
    e.g. {"CPU": ("--cpus-per-worker 4", 4.0)}."""
    import ray

    have = ray.cluster_resources()
    for resource, (what, amount) in wanted.items():
        has = have.get(resource, 0)
        if amount > has:
            raise ValueError(
                f"{what}: more than this machine's Ray has ({has:g} {resource}{'s' if has != 1 else ''}),"
                " so it would wait forever; join a cluster that has them (RAY_ADDRESS or `ray job submit`)"
            )
