"""Paths that mean the same place on every node of the Ray cluster a job runs on, or one clear line.

A job's driver and its workers run on different machines of a cluster, each with its own disk. Two ways that
goes wrong, each found before any work starts:

- **Relative paths under `ray job submit`.** The driver's working directory is Ray's temporary copy of the
  uploaded working dir on the head (every node unpacks a copy of its own): what a job writes there is gone with
  the job. So under a submitted job a relative path the job *writes* (a run's `storage_path`, `data.uri`,
  `--output`, `--out`) is placed under `$DEBLUR_STORAGE` (an absolute path every node mounts, or `s3://...`:
  the cluster's storage, set on the head or in the job's runtime env), and refused when that is not set. A
  relative path the job only *reads* names the working dir's copy, which every node has; where that copy
  has no such file, the same name under `$DEBLUR_STORAGE` (a run a submitted training left there).
- **Local paths on several nodes.** On a cluster of more than one node, a local path the job's workers read or
  write must be the same folder on each (a shared mount at the same path). A cheap probe runs on every live
  node (`check_shared`): it finds a marker the driver wrote into each output folder, and for each input the same
  size and first bytes (a file) or the same entries (a folder). A node that differs is one line naming the
  path, the node and what to use instead (exit code 2 from the jobs).

Nodes an autoscaler adds later are not probed: they come from the same image and mounts as the ones up now.
`s3://` URIs are the same everywhere and are never probed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable

from . import storage

log = logging.getLogger(__name__)

STORAGE_ENV = "DEBLUR_STORAGE"
REMEDY = "put it on storage every node mounts at the same path (NFS, EFS) or on s3://"
_MARKER = ".deblur-node-probe-"


class PathError(ValueError):
    """A path the job's nodes cannot all use; the jobs exit with code 2 on it (a usage error, as argparse's)."""

    exit_code = 2


def submitted_job() -> dict | None:
    """The runtime env of the `ray job submit` entrypoint this process is ({} without one), or None when this
    process was not started by `ray job submit` (Ray's job supervisor passes the job's config to it)."""
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if config is None:
        return None
    try:
        return json.loads(config).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def _relative(path: str) -> bool:
    return not storage.is_remote(path) and not os.path.isabs(os.path.expanduser(path.removeprefix("file://")))


def _storage_base() -> str | None:
    """`$DEBLUR_STORAGE`, which must name a place every node shares: s3://... or an absolute path."""
    base = os.environ.get(STORAGE_ENV)
    if base and _relative(base):
        raise PathError(
            f"{STORAGE_ENV}={base}: give s3://... or an absolute path every node mounts, not a relative one"
        )
    return base or None


def _under_base(base: str, path: str) -> str:
    rel = os.path.normpath(path.removeprefix("file://"))
    if rel == ".." or rel.startswith("../"):
        raise PathError(f"{path}: a relative path that climbs out of {STORAGE_ENV} ({base})")
    return storage.join(base, "" if rel == "." else rel)


def output_path(path: str, what: str) -> str:
    """Where a job writes `path` (named by `what`, e.g. "--output", "run.storage_path"): under a submitted job, a
    relative path goes under `$DEBLUR_STORAGE`, or is refused without it (module docstring); else unchanged."""
    if submitted_job() is None or not _relative(path):
        return path
    base = _storage_base()
    if not base:
        raise PathError(
            f"{what} {path}: a relative path under `ray job submit` names the job's temporary copy of the working "
            f"dir, deleted with the job; give an absolute path every node shares or s3://..., or set {STORAGE_ENV} "
            f"(e.g. s3://bucket/deblur) on the cluster or in the job's runtime env to keep relative paths there"
        )
    return _under_base(base, path)


def input_path(path: str) -> str:
    """Where a job reads `path`: under a submitted job, a relative path that is not in the working dir's copy
    but is under `$DEBLUR_STORAGE` (a run a submitted training wrote there) names that; else unchanged."""
    if submitted_job() is None or not _relative(path) or os.path.exists(path) or not (base := _storage_base()):
        return path
    placed = _under_base(base, path)
    return placed if storage.exists(placed) else path


def fingerprint(path: str) -> str | None:
    """What tells one copy of `path` from another, cheaply: a file's size and first 64 KiB, a folder's
    entries (names, and sizes of files; up to 2000); None where it does not exist here."""
    try:
        if os.path.isdir(path):
            entries = sorted(os.scandir(path), key=lambda e: e.name)[:2000]
            text = "\n".join(
                f"{e.name} {e.stat().st_size if e.is_file() else '/'}"
                for e in entries
                if not e.name.startswith(_MARKER)
            )
            return "dir:" + hashlib.sha256(text.encode()).hexdigest()
        with open(path, "rb") as f:
            return f"file:{os.path.getsize(path)}:" + hashlib.sha256(f.read(65536)).hexdigest()
    except OSError:
        return None


def _probe(reads: dict[str, str], markers: dict[str, str]) -> dict[str, str]:
    """On one node: for each input, its fingerprint; for each output, whether the driver's marker is seen."""
    seen = {label: fingerprint(path) or "missing" for label, path in reads.items()}
    seen |= {label: "marker" if os.path.exists(marker) else "missing" for label, marker in markers.items()}
    return seen


def check_shared(reads: dict[str, str] | None = None, writes: dict[str, str] | None = None, timeout_s: float = 120):
    """Refuse (`PathError`) local paths that the live nodes of the connected Ray cluster do not all see alike.
    `reads`/`writes`: what names a path (a flag, a config key) → the path; remote URIs, shipped model names
    and inputs missing here are passed over (the job's own checks name those). Output folders are made here.
    One Ray cluster node (a laptop, a job's own Ray) has nothing to check."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    submitted = submitted_job() is not None  # the probe runs in the job's working dir on each node, as it does
    reads = {k: p if submitted else os.path.abspath(p) for k, p in _local(reads)}
    expected = {label: found for label, path in reads.items() if (found := fingerprint(path)) is not None}
    reads = {label: reads[label] for label in expected}
    writes = {k: p if submitted else os.path.abspath(p) for k, p in _local(writes)}
    if not (reads or writes):
        return
    markers: dict[str, str] = {}
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    try:
        for label, path in writes.items():
            os.makedirs(path, exist_ok=True)
            markers[label] = os.path.join(path, f"{_MARKER}{uuid.uuid4().hex}")
            open(markers[label], "w").close()
        pending = {
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                reads, markers
            ): n
            for n in nodes
        }
        done, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        for ref in late:
            ray.cancel(ref, force=True)
            log.warning(
                "could not check the job's paths on node %s: it did not answer in %.0f s",
                _name(pending[ref]),
                timeout_s,
            )
        for ref in done:
            try:
                seen = ray.get(ref)
            except ray.exceptions.RayError as e:  # the node went away meanwhile, or its worker could not start
                log.warning("could not check the job's paths on node %s: %s", _name(pending[ref]), type(e).__name__)
                continue
            for label, path in (reads | writes).items():
                want = "marker" if label in markers else expected[label]
                if seen[label] != want:
                    how = "does not see it" if seen[label] == "missing" else "sees other contents there"
                    raise PathError(
                        f"{label} {path}: node {_name(pending[ref])} {how}, so on this cluster of {len(nodes)} "
                        f"nodes the job would {'write' if label in markers else 'read'} different places; {REMEDY}"
                        + (" (or run the job on one machine, without RAY_ADDRESS)" if not submitted else "")
                    )
    finally:
        for marker in markers.values():
            try:
                os.remove(marker)
            except OSError:
                pass


def _local(paths: dict[str, str] | None) -> Iterable[tuple[str, str]]:
    for label, path in (paths or {}).items():
        if path and not storage.is_remote(path):
            yield label, os.path.expanduser(path.removeprefix("file://"))


def _name(node: dict) -> str:
    """A node as people find it in `ray status` and the dashboard: its address and the start of its id."""
    return f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"
