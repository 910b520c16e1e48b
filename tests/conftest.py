"""Shared fixtures. Real parts only: real images from ../shared/data, real Ray, a real S3 endpoint."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Ray's token auth, set deliberately before anything imports Ray (its token loader reads the environment
# once): the session's cluster runs with a token made here, never printed, never written to ~/.ray.
import secrets  # noqa: E402

os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # =0 would forbid the second raylet

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEBLUR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data missing: {path} (../shared/data must sit beside the repository)")
    return path


@pytest.fixture(scope="session")
def cbsd68() -> list[Path]:
    return sorted(shared("sharp", "cbsd68").glob("*.png"))


@pytest.fixture(scope="session")
def mcmaster18() -> list[Path]:
    return sorted(shared("sharp", "mcmaster18").glob("*.tif"))


@pytest.fixture(scope="session")
def real_photo(cbsd68) -> np.ndarray:
    from deblur.images import read_image

    return read_image(str(cbsd68[0]))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on loopback: moto's standalone server (as s3fs tests itself). Nothing leaves the machine."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def bucket(s3_endpoint, request):
    """A fresh bucket per test, named after it."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{_free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


class LocalCluster:
    """A real multi-node Ray cluster on loopback: `ray start --head` plus one more raylet.

    The head has 2 CPUs and the job API (dashboard) on loopback; the second node has 1 CPU and a custom
    resource `node2`, so tests can place work on it. Ray's token auth is on, with a token made for
    this session (never printed). Tests connect with `ray.init(address=...)`; `ray job submit` talks to
    `dashboard_url`.
    """

    def __init__(self, tmp: Path):
        import subprocess

        self.port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.env_vars = {
            "RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"],
            "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"],
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_ENABLE_STATE_TRACKING": "0",
        }
        os.environ.update(self.env_vars)
        # As in an activated virtualenv: `python` in a job's entrypoint is this environment's Python.
        venv_bin = str(Path(sys.executable).parent)
        if not os.environ.get("PATH", "").startswith(venv_bin):
            os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
        ray_bin = str(Path(sys.executable).parent / "ray")
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self._run([ray_bin, "start", "--head", f"--port={self.port}", "--num-cpus=2", "--include-dashboard=true",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                   f"--object-store-memory={600 * 1024 * 1024}", *common])
        self._run([ray_bin, "start", f"--address={self.address}", "--num-cpus=1", '--resources={"node2": 1}',
                   f"--object-store-memory={300 * 1024 * 1024}", *common])
        self.ray_bin = ray_bin
        self.subprocess = subprocess

    @staticmethod
    def _run(cmd: list[str]) -> None:
        import subprocess

        res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")

    def stop(self) -> None:
        self.subprocess.run([self.ray_bin, "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, tmp_path_factory):
    """The session's one Ray: a two-node cluster on loopback, started after the S3 env so nodes inherit it."""
    import ray

    cluster = LocalCluster(tmp_path_factory.mktemp("ray"))
    try:
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    import ray

    return ray


def train_small_generator(photos: list[Path], steps: int, base_channels: int = 8, seed: int = 0):
    """A real (tiny) deblurring model: unet_fpn trained with L1 on synthetic motion blur of real photos.

    Inference, evaluation, bulk and serving tests need a model whose output differs from its input and
    whose receptive field behaves like a trained one (an untrained unet_fpn is the identity).
    """
    import torch

    from deblur.data.pipeline import augment_pair
    from deblur.data.synth import synthesize
    from deblur.images import read_image, to_numpy_chw
    from deblur.models import build_generator

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sharp = [read_image(str(p)) for p in photos]
    pairs = [(synthesize(s, seed + k, max_len=20).blurred, s) for k, s in enumerate(sharp)]
    model = build_generator("unet_fpn", base_channels=base_channels)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        crops = [augment_pair(*pairs[rng.integers(len(pairs))], 96, rng) for _ in range(4)]
        blur = torch.from_numpy(np.stack([to_numpy_chw(b) for b, _ in crops]))
        target = torch.from_numpy(np.stack([to_numpy_chw(s) for _, s in crops]))
        loss = (model(blur) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_checkpoint(cbsd68, tmp_path_factory) -> Path:
    """A deblur checkpoint file of a briefly trained tiny generator (made once per session, ~15 s)."""
    import torch

    from deblur.models import generator_checkpoint

    model = train_small_generator(cbsd68[:12], steps=120)
    path = tmp_path_factory.mktemp("model") / "checkpoint.pt"
    torch.save(generator_checkpoint(model, "unet_fpn", {"base_channels": 8}), path)
    return path
