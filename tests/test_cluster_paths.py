"""Paths on a cluster and actor pools, the rules alone (no Ray started): `deblur.cluster_paths` and
`deblur.ray_env.actor_pool`. The same rules run end to end on a share-nothing cluster in test_share_nothing.py."""

from __future__ import annotations

import json
import sys

import pytest

from deblur import cluster_paths, ray_env
from deblur.cluster_paths import PathError, fingerprint, input_path, output_path

SUBMITTED = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}, "metadata": {}})


@pytest.fixture()
def submitted(monkeypatch):
    """This process as a `ray job submit` entrypoint is (Ray's job supervisor sets the variable)."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", SUBMITTED)
    monkeypatch.delenv("DEBLUR_STORAGE", raising=False)
    return monkeypatch


def test_outside_a_submitted_job_paths_are_left_as_given(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("DEBLUR_STORAGE", "s3://b/deblur")
    assert cluster_paths.submitted_job() is None
    assert output_path("runs", "run.storage_path") == "runs" and input_path("runs/sample") == "runs/sample"


def test_a_relative_output_under_a_submitted_job_needs_deblur_storage(submitted):
    assert cluster_paths.submitted_job() == {"working_dir": "gcs://_ray_pkg_x.zip"}
    with pytest.raises(PathError, match=r"run\.storage_path runs: .*DEBLUR_STORAGE") as e:
        output_path("runs", "run.storage_path")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    for given in ("s3://b/runs", "/shared/runs", "file:///shared/runs"):  # the same place on every node
        assert output_path(given, "--output") == given
    submitted.setenv("DEBLUR_STORAGE", "s3://b/deblur")
    assert output_path("runs", "run.storage_path") == "s3://b/deblur/runs"
    assert output_path("./runs/data/sample", "data.uri") == "s3://b/deblur/runs/data/sample"
    with pytest.raises(PathError, match="climbs out"):
        output_path("../elsewhere", "--out")
    submitted.setenv("DEBLUR_STORAGE", "deblur-runs")
    with pytest.raises(PathError, match="not a relative one"):
        output_path("runs", "run.storage_path")


def test_a_relative_input_under_a_submitted_job_is_the_working_dirs_else_deblur_storages(submitted, tmp_path):
    submitted.chdir(tmp_path)
    (tmp_path / "here.yaml").write_text("x")
    storage_base = tmp_path / "shared"
    (storage_base / "runs" / "sample").mkdir(parents=True)
    submitted.setenv("DEBLUR_STORAGE", str(storage_base))
    assert input_path("here.yaml") == "here.yaml"  # in the working dir's copy
    assert input_path("runs/sample") == f"{storage_base}/runs/sample"  # where a submitted training left it
    assert input_path("nowhere") == "nowhere"  # the job's own check names it
    assert input_path("default") == "default"  # a shipped model's name


def test_fingerprints_tell_copies_apart(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "x.jpg").write_bytes(b"\xff" * 1000)
    assert fingerprint(str(a)) == fingerprint(str(b)) and fingerprint(str(a)).startswith("dir:")
    (b / f"{cluster_paths._MARKER}123").touch()  # a probe's marker is no difference
    assert fingerprint(str(a)) == fingerprint(str(b))
    (b / "y.jpg").write_bytes(b"1")
    assert fingerprint(str(a)) != fingerprint(str(b))
    assert fingerprint(str(a / "x.jpg")) == fingerprint(str(b / "x.jpg"))
    (b / "x.jpg").write_bytes(b"\xfe" + b"\xff" * 999)  # same size, other bytes
    assert fingerprint(str(a / "x.jpg")) != fingerprint(str(b / "x.jpg"))
    assert fingerprint(str(tmp_path / "missing")) is None


def test_the_probe_reports_what_a_node_sees(tmp_path):
    (tmp_path / "in").mkdir()
    marker = tmp_path / "out" / f"{cluster_paths._MARKER}1"
    marker.parent.mkdir()
    seen = cluster_paths._probe({"--input": str(tmp_path / "in")}, {"--output": str(marker)})
    assert seen == {"--input": fingerprint(str(tmp_path / "in")), "--output": "missing"}
    marker.touch()
    assert cluster_paths._probe({"--model": str(tmp_path / "nope")}, {"--output": str(marker)}) == {
        "--model": "missing",
        "--output": "marker",
    }


@pytest.fixture()
def cluster(monkeypatch):
    """`actor_pool` as it sees a cluster: the resources up now, the autoscaler's maximum, whose Ray it is."""
    import ray

    state = {"have": {"CPU": 4.0}, "most": None, "own": False}
    monkeypatch.setattr(ray, "cluster_resources", lambda: state["have"])
    monkeypatch.setattr(ray_env, "configured_most", lambda resource: state["most"])
    monkeypatch.setattr(ray_env, "own_ray", lambda: state["own"])
    return state


def test_a_clusters_pool_starts_with_what_fits_and_grows(cluster):
    pool = ray_env.actor_pool(None, 1.0, 0.0, 100)
    assert (pool.least, pool.initial, pool.most) == (1, 4, 4)  # no autoscaler config: the nodes up now
    assert (ray_env.actor_pool(6, 1.0, 0.0, 100).initial, ray_env.actor_pool(6, 1.0, 0.0, 100).most) == (4, 6)
    assert ray_env.actor_pool(6, 1.0, 0.0, 3).most == 3  # never more than the work
    cluster["most"] = 32.0  # the autoscaler may bring 32 CPUs
    assert ray_env.actor_pool(None, 2.0, 0.0, 100).most == 16
    cluster["most"] = float(sys.maxsize)  # a node group without a maximum
    assert ray_env.actor_pool(None, 1.0, 0.0, 10**6).most == ray_env.MOST_ACTORS
    cluster["have"], cluster["most"] = {"CPU": 2.0}, 8.0  # GPU nodes at 0, the autoscaler may bring 8 GPUs
    pool = ray_env.actor_pool(None, 1.0, 1.0, 100)
    assert (pool.initial, pool.most) == (1, 8)
    assert pool.strategy().min_size == 1 and pool.strategy().max_size == 8


def test_a_jobs_own_ray_has_a_fixed_pool_of_what_fits(cluster):
    cluster["own"] = True
    pool = ray_env.actor_pool(None, 1.0, 0.0, 100)
    assert (pool.least, pool.initial, pool.most) == (4, 4, 4)
    assert ray_env.actor_pool(8, 1.0, 0.0, 100).most == 4  # more would wait all run: nothing joins this Ray
    assert ray_env.actor_pool(2, 1.0, 0.0, 1).most == 1
    assert ray_env.actor_pool(2, 1.0, 0.0, 100).strategy().min_size == 2
