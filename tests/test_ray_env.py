"""Joining Ray: a stale record of a cluster that is gone means "start a local Ray", never a hang."""

import socket

from deblur.ray_env import _local_cluster_alive, job_runtime_env

from conftest import free_port


def test_a_stale_cluster_record_is_not_joined(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert not _local_cluster_alive()  # no record at all
    (tmp_path / "ray").mkdir()
    record = tmp_path / "ray" / "ray_current_cluster"
    dead = free_port()  # nothing listens there
    record.write_text(f"127.0.0.1:{dead}")
    assert not _local_cluster_alive(timeout_s=0.5)
    record.write_text("garbage")
    assert not _local_cluster_alive()
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        record.write_text(f"127.0.0.1:{live.getsockname()[1]}")
        assert _local_cluster_alive()


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
