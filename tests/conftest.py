"""Shared fixtures. Real parts only: real photos, real Ray, a real S3 endpoint.

Photos: ../shared/data's sets where that folder sits beside the clone (CI has it); a user's fresh clone has
none, and then the same fixtures are made from the real photos the repository keeps (tests/data/photos,
CC0 / public domain, sources in its README), cropped and saved in the sizes and formats the shared sets
have: no download, no skipped test.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

# Ray's token auth, set deliberately before anything imports Ray (its token loader reads the environment
# once): the session's cluster runs with a token made here, never printed, never written to ~/.ray.

os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # =0 would forbid the second raylet
os.environ["DEBLUR_OFFLINE"] = "1"  # no test downloads ImageNet weights (one serves its own on loopback)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEBLUR_SHARED_DATA", ROOT.parent / "shared" / "data"))


PHOTOS = ROOT / "tests" / "data" / "photos"
VIEWS = {
    "cbsd68": 4,
    "mcmaster18": 4,
    "lai-real": 7,
}  # views per kept photo: 24, 24 and 42 stand-ins, as many as tests take


def _kept_photos() -> list[np.ndarray]:
    """The photos the repository keeps, as RGB arrays."""
    from deblur.images import read_image

    return [read_image(str(p)) for p in sorted(PHOTOS.iterdir()) if p.suffix in (".png", ".jpg")]


def _made(folder: Path, kind: str) -> list[Path]:
    """../shared/data's sets rebuilt from the kept photos: same formats and sizes."""
    import cv2

    from deblur.data import synth
    from deblur.images import cover

    folder.mkdir(parents=True, exist_ok=True)
    photos = _kept_photos()
    if kind == "mcmaster18":
        photos = photos[::-1]  # other photos first than the cbsd68 stand-in
    views = [(img, view) for view in range(VIEWS[kind]) for img in photos]
    paths = []
    for k, (img, view) in enumerate(views):
        if kind == "cbsd68":  # 481×321 PNG (BSDS landscape)
            path, out = folder / f"{k:04d}.png", cover(img, 321, 481, view)
        elif kind == "mcmaster18":  # 500×500 TIFF
            path, out = folder / f"{k + 1}.tif", cover(img, 500, 500, view)
        else:  # "lai-real": blurred JPEGs of varied sizes (synthetic camera shake; no sharp truth kept)
            kernel = synth.random_kernel(np.random.default_rng(k), "motion", max_len=25)
            path, out = folder / f"photo_{k:02d}.jpg", synth.apply_kernel(cover(img, *img.shape[:2], view), kernel)
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else []
        cv2.imwrite(str(path), np.ascontiguousarray(out[..., ::-1]), params)
        paths.append(path)
    return paths


_MADE: dict[str, Path] = {}


def shared(*parts: str) -> Path:
    """A folder of ../shared/data, or (without it) the same set made from the embedded photos."""
    path = SHARED_DATA.joinpath(*parts)
    if path.exists():
        return path
    kind = parts[-1]
    if kind not in ("cbsd68", "mcmaster18", "lai-real"):
        pytest.fail(f"test data missing: {path}, and no embedded stand-in for it")
    if kind not in _MADE:
        import atexit
        import shutil
        import tempfile

        _MADE[kind] = Path(tempfile.mkdtemp(prefix=f"deblur-{kind}-"))
        atexit.register(shutil.rmtree, _MADE[kind], True)
        _made(_MADE[kind], kind)
    return _MADE[kind]


@pytest.fixture(scope="session")
def cbsd68() -> list[Path]:
    return sorted(shared("sharp", "cbsd68").glob("*.png"))


@pytest.fixture(scope="session")
def mcmaster18() -> list[Path]:
    return sorted(shared("sharp", "mcmaster18").glob("*.tif"))


def job_env(cluster) -> dict:
    """The environment a job subprocess gets to run on `cluster` (its address and the env its nodes have)."""
    return {**os.environ, **cluster.env_vars, "RAY_ADDRESS": cluster.address}


def reencoded(rgb: np.ndarray, fmt: str, quality: int = 95) -> np.ndarray:
    """An image as a pass-through (an echo server, a job that skips the model) returns it: decoded and
    encoded again in the same format at the jobs' default quality. The negative control of "the model ran"."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def model_share(image: np.ndarray, given: np.ndarray, expected: np.ndarray) -> float:
    """How much of the model's change (expected − given) `image` carries: its projection on that change,
    ≈ 1 for the model's output through any codec, ≈ 0 for the input passed through (codec noise is not the
    model's change). Unlike a mean difference this holds however little a small test model changes a photo:
    measured 0.79–1.0 for outputs and −0.14 to 0.01 for pass-throughs on Lai's photos, JPEG/WebP/PNG."""
    change = expected.astype(np.float64) - given
    return float(((image.astype(np.float64) - given) * change).sum() / max((change * change).sum(), 1e-9))


def check_is_model_output(image: np.ndarray, given: np.ndarray, expected: np.ndarray, fmt: str, what: str = "") -> None:
    """`image` is the model's output for `given` (up to the codec `fmt`), and the check can fail: the input
    passed through the same codec (an echo server, a job that skips the model) does not pass it."""
    assert np.abs(expected.astype(np.int16) - given).max() > 0, f"{what}: the model changes nothing; no check possible"
    share, control = model_share(image, given, expected), model_share(reencoded(given, fmt), given, expected)
    assert control < 0.3, (what, control)
    assert share > 0.6, (what, share, control)


@pytest.fixture(scope="session")
def real_photo(cbsd68) -> np.ndarray:
    from deblur.images import read_image

    return read_image(str(cbsd68[0]))


def free_port() -> int:
    """A loopback port nothing listens on (closed again before it is returned)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_image(path: Path, rgb: np.ndarray) -> Path:
    """An RGB array written as the file its suffix names (OpenCV wants BGR), its folder made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"{path}: could not be written")
    return path


def write_clip(path: Path, rgb: np.ndarray, frames: int = 3) -> Path:
    """A short H.264 MP4 of `frames` copies of an RGB frame (even sides), its folder made if missing."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=10)
        stream.height, stream.width = rgb.shape[:2]
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on loopback: moto's standalone server (as s3fs tests itself). Nothing leaves the machine."""
    from moto.server import ThreadedMotoServer

    port = free_port()
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

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


def start_serve_job(args: list[str], env: dict) -> tuple[subprocess.Popen, list[str]]:
    """`python jobs/serve.py <args>` in a session of its own (a test stops it with SIGTERM, as docker does), read
    until it says it serves: (the process, the lines it printed). Killed with its group where it never does."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "jobs/serve.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    while not (lines and lines[-1].startswith("serving")) and (line := proc.stdout.readline()):
        lines.append(line)
    if not (lines and lines[-1].startswith("serving")):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the serve job did not start:\n" + "".join(lines) + proc.stderr.read()[-3000:])
    return proc, lines


def local_cluster_module():
    """cluster/local.py, the script users run: the tests start their cluster with the same code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "cluster" / "local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LocalCluster:
    """A real multi-node Ray cluster on this machine (addressed through 127.0.0.1), started by `cluster/local.py`: a head (2 CPUs, job API on
    loopback) and two worker raylets (1 CPU each, custom resources `node2` and `node3`, so tests can place
    work). Ray's token auth is on, with a token made for this session (never printed). Tests connect with
    `ray.init(address=...)`; `ray job submit` talks to `dashboard_url`.
    """

    def __init__(self, tmp: Path):
        self.local = local_cluster_module()
        self.state = tmp
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
        info = self.local.start(workers=2, head_cpus=2, worker_cpus=1, state=tmp)
        self.address, self.dashboard_url, self.nodes = info["address"], info["dashboard_url"], info["nodes"]

    def stop(self) -> list[str]:
        return self.local.stop(self.state)


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, tmp_path_factory):
    """The session's one Ray: a three-raylet cluster on this machine, started after the S3 env so nodes inherit it."""
    import ray

    cluster = LocalCluster(tmp_path_factory.mktemp("ray"))
    # Ray's State API (list_actors, ...) finds its cluster through RAY_ADDRESS or the machine's last-started
    # record; this cluster keeps its own temp dir, so it is named here, or another cluster would answer.
    os.environ["RAY_ADDRESS"] = cluster.address
    try:
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield cluster
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        left = cluster.stop()
    assert not left, f"Ray processes still running after cluster/local.py stop: {left}"


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
    from deblur.images import read_image, to_model_input
    from deblur.models import build_generator

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sharp = [read_image(str(p)) for p in photos]
    pairs = [(synthesize(s, seed + k, max_len=20).blurred, s) for k, s in enumerate(sharp)]
    model = build_generator("unet_fpn", base_channels=base_channels)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        crops = [augment_pair(*pairs[rng.integers(len(pairs))], 96, rng) for _ in range(4)]
        blur = torch.from_numpy(np.stack([to_model_input(b) for b, _ in crops]))
        target = torch.from_numpy(np.stack([to_model_input(s) for _, s in crops]))
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


# What makes a test slow: a real Ray cluster, Serve, a browser, a subprocess job, or a trained model.
@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, cbsd68):
    """12 training and 2 validation pairs from real photos with synthetic motion blur, as shards (the training
    and cluster tests' data)."""
    from deblur.data import layouts, shards
    from deblur.data.synth import synthesize
    from deblur.images import read_image

    root = tmp_path_factory.mktemp("tiny")
    for i, path in enumerate(cbsd68[:14]):
        split = "val" if i >= 12 else "train"
        sharp = read_image(str(path))[:160, :160]
        for kind, img in (("sharp", sharp), ("blur", synthesize(sharp, seed=i, max_len=15).blurred)):
            write_image(root / split / kind / f"{path.stem}.png", img)
    out = str(root / "shards")
    shards.prepare(layouts.paired(str(root)), out, {}, progress=False)
    return out


def tiny_overrides(data_uri: str, storage_path: str, name: str, epochs: int = 2, **extra) -> list[str]:
    """`--set` overrides for a training run of a few seconds on `tiny_shards`."""
    sets = {
        "data.uri": data_uri,
        "data.prepare": "null",
        "data.crop": 64,
        "data.batch_size": 2,
        "data.crops_per_pair": 1,
        "data.shuffle_buffer": 0,
        "data.val_center_crop": 64,
        "model.generator": "unet_fpn",
        "model.generator_kwargs": "{base_channels: 4}",
        "model.critic_kwargs": "{base_channels: 4}",
        "loss.lambda_per": 0,
        "loss.lambda_l1": 1,
        "loss.lambda_adv": 0.01,
        "optim.critic_steps": 1,
        "train.epochs": epochs,
        "train.steps_per_epoch": 2,
        "train.log_images": 1,
        "scaling.num_workers": 2,
        "scaling.cpus_per_worker": 0.5,
        "scaling.torch_threads": 1,
        "run.storage_path": storage_path,
        "run.name": name,
        "run.num_to_keep": 2,
        "run.max_failures": 1,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


SLOW_FIXTURES = {
    "ray_session",
    "ray_cluster",
    "endpoint",
    "trained_checkpoint",
    "compiled",
    "mcmaster_shards",
    "tiny_shards",
}


def pytest_collection_modifyitems(config, items):
    """`make test-fast` (-m "not slow") runs no cluster, no browser and no training: every test that
    needs one is marked slow here, by the fixtures it takes, so no test can forget its marker."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
