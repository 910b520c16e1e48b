"""Joining Ray: a stale record of a cluster that is gone means "start a local Ray", never a hang."""

import socket

from deblur.ray_env import _local_cluster_alive

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
