"""The package as people install it: the wheel built from this checkout, installed into a fresh virtual
environment, used from a folder with no checkout in it.

The environment is new and holds only the wheel; its dependencies are the ones `make test` installed, reached
through a site folder of links to them (no download: nothing but the wheel comes from this checkout, and
deblur itself is not among the links). There: `deblur photo.jpg`, `deblur bulk` on a small folder (a Ray of
its own), and a head node started from that environment, to which `ray job submit -- deblur train ...` goes
without a working dir: a cluster whose image has the package installed.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, write_image

pytestmark = pytest.mark.slow

#: the installed command, as pip writes console scripts
SCRIPT = "#!{python}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"


def build_wheel(out: Path) -> Path:
    """`pip wheel` of a copy of what the wheel is made from (the checkout itself stays as it is)."""
    src = out / "src"
    shutil.copytree(ROOT / "deblur", src / "deblur", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = out.glob("deblurgan_ray-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A new virtual environment with `wheel` installed and this environment's dependencies linked in."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    deps = where / "deps"
    deps.mkdir()
    ours = ("deblur", "deblurgan_ray", "__editable__")
    for entry in Path(site.getsitepackages()[0]).iterdir():
        if not entry.name.startswith(ours):
            (deps / entry.name).symlink_to(entry)
    target = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(target, "zz_dependencies.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ray_script = where / "bin" / "ray"  # the dependency's command, as its own install would write it
    ray_script.write_text(SCRIPT.format(python=python, module="ray.scripts.scripts", function="main"))
    ray_script.chmod(0o755)
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, environment for its commands, an empty working folder)."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root / "dist")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    for packaged in (
        "deblur/models/weights/deblur-nafnet-v1.pt",
        "deblur/models/weights/deblur-nafnet-v1.md",
        "deblur/configs/sample.yaml",
        "deblur/configs/gopro.yaml",
        "deblur/data/photos/page.png",
        "deblur/serve/page.html",
    ):
        assert packaged in names, packaged
    assert not any(n.startswith(("jobs/", "tests/")) for n in names)
    python = fresh_venv(root / "venv", wheel)
    work = root / "work"
    work.mkdir()
    bin_dir = str(python.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RAY_ADDRESS", "VIRTUAL_ENV"))}
    ray_tmp = tempfile.mkdtemp(prefix="dw-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # a temp dir of its own: a Ray the session's cluster recorded is not "a running local one" for these jobs
    env |= {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(root), "RAY_TMPDIR": ray_tmp}
    yield python, env, work
    shutil.rmtree(ray_tmp, ignore_errors=True)


def run(cmd: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    python, env, work = installed
    res = run([python, "-c", "import deblur, deblur.cli; print(deblur.__file__)"], env, work)
    assert str(python.parents[1]) in res.stdout and str(ROOT) not in res.stdout
    res = run(["deblur", "--help"], env, work)
    assert "deblur photo.jpg" in res.stdout and "stages:" in res.stdout
    res = run(["deblur", "train", "--help"], env, work)
    assert "shake" in res.stdout and "gopro" in res.stdout  # the configs it ships, listed by name


def test_deblur_a_photo_from_the_wheel(installed, real_photo):
    python, env, work = installed
    write_image(work / "photo.jpg", real_photo[:96, :128])
    res = run(["deblur", "photo.jpg"], env, work, timeout=300)
    assert "photo.jpg → photo.deblurred.jpg" in res.stdout and (work / "photo.deblurred.jpg").stat().st_size > 0


def test_bulk_on_a_small_folder_from_the_wheel(installed, cbsd68):
    from deblur.images import read_image

    python, env, work = installed
    for path in cbsd68[:3]:
        write_image(work / "album" / f"{path.stem}.png", read_image(str(path))[:64, :64])
    res = run(["deblur", "bulk", "--input", "album", "--output", "sharp", "--workers", "1"], env, work)
    assert "3 done, 0 skipped, 0 failed of 3 images" in res.stdout, res.stdout
    assert sorted(p.name for p in (work / "sharp").glob("*.png")) == sorted(f"{p.stem}.png" for p in cbsd68[:3])


def test_ray_job_submit_deblur_train_on_a_cluster_that_has_the_package(installed, tmp_path):
    """A head started from the wheel's environment; `ray job submit -- deblur train` with no working dir: the
    shipped config, the sample data prepared from the wheel's photos, one short epoch, a checkpoint written."""
    python, env, work = installed
    env = env | {"DEBLUR_LOCAL_CLUSTER": str(tmp_path / "cluster")}
    local = [str(python), str(ROOT / "cluster" / "local.py")]
    run([*local, "start", "--workers", "0", "--head-cpus", "2"], env, work, timeout=300)
    try:
        info = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
        sets = {
            "data.uri": str(work / "data"),
            "run.storage_path": str(work / "runs"),
            "run.name": "from-the-wheel",
            "train.epochs": 1,
            "train.steps_per_epoch": 3,
            "data.crop": 64,
            "data.batch_size": 2,
            "data.crops_per_pair": 1,
            "data.shuffle_buffer": 0,
            "scaling.cpus_per_worker": 0.5,
            "scaling.torch_threads": 1,
        }
        cmd = ["ray", "job", "submit", "--address", info["dashboard_url"], "--", "deblur", "train", "--config"]
        cmd += ["sample", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
        res = run(cmd, env, work, timeout=900)
        assert "best checkpoint:" in res.stdout and "held-out 'test' images" in res.stdout, res.stdout[-3000:]
        best = json.loads((work / "runs" / "from-the-wheel" / "best.json").read_text())
        assert Path(best["checkpoint"]).exists() and "succeeded" in res.stdout.lower()
    finally:
        stopped = subprocess.run([*local, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
