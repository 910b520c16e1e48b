"""Joining Ray: a stale record of a cluster that is gone means "start a local Ray", never a hang."""

import socket

from deblur.ray_env import _local_cluster_alive, error_line, job_runtime_env

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
