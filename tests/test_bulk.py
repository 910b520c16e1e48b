"""The bulk archive job on real blurry photos (folder, S3, tar), a zoo of awkward files, kill-and-resume."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from deblur import storage
from deblur.bulk import Options, deblur_archive
from deblur.inference.load import cuda_available
from deblur.models.common import cpu_has_native_bf16

from conftest import ROOT, check_is_model_output, job_env, write_clip, write_image


def lai_photos(n: int | None = None) -> list[Path]:
    from conftest import shared

    return sorted(shared("realblur", "lai-real").glob("*.jpg"))[:n]


def check_outputs(
    inputs: dict[str, bytes], output_files: dict[str, bytes], checkpoint: Path, check_model: int = 3
) -> None:
    """Every input came back under its name, size, mode and format, changed; the first few are what the
    engine itself makes of the decoded input (up to JPEG re-encoding): the model really ran, at full size."""
    from deblur.inference import load_engine

    engine = load_engine(str(checkpoint), "torch")
    assert set(output_files) == set(inputs)
    for k, (rel, data) in enumerate(sorted(inputs.items())):
        src, out = Image.open(io.BytesIO(data)), Image.open(io.BytesIO(output_files[rel]))
        assert (out.format, out.size, out.mode) == (src.format, src.size, src.mode), rel
        assert output_files[rel] != data, rel
        if k < check_model:
            given = np.asarray(src.convert("RGB"))
            expected = engine.deblur_image(given)
            got = np.asarray(out.convert("RGB"))
            assert np.abs(got.astype(np.int16) - expected).mean() < 1.5, rel
            check_is_model_output(got, given, expected, src.format, rel)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.name.startswith("_")
    }


def test_real_archive_from_a_folder(trained_checkpoint, tmp_path, ray_session):
    src = tmp_path / "in"
    photos = lai_photos()  # 100 with ../shared/data, the kept photos' stand-ins without it
    for k, photo in enumerate(photos):
        dest = src / ("nested" if k % 3 == 0 else "") / photo.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, dest)
    summary = deblur_archive(
        str(src),
        str(tmp_path / "out"),
        Options(model=str(trained_checkpoint), engine="torch"),
        workers=2,
        progress=False,
    )
    assert summary["done"] == summary["images"] == len(photos) and summary["failed"] == 0
    assert summary["engines"] == ["torch fp32 (cpu)"]
    # the fixed cost comes before the first image, and all the workers' seconds fit after it (2 workers)
    assert 0 < summary["start_up_seconds"] <= summary["wall_seconds"] - summary["worker_seconds"] / 2 + 0.1, summary
    check_outputs(read_tree(src), read_tree(tmp_path / "out"), trained_checkpoint)
    saved = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert saved["done"] == len(photos) and saved["bytes_in"] == sum(p.stat().st_size for p in src.rglob("*.jpg"))


def test_real_archive_on_s3_and_in_a_tar(trained_checkpoint, tmp_path, bucket, ray_session):
    photos = lai_photos(12)
    fs, _ = storage.filesystem(bucket)
    for p in photos:
        fs.pipe_file(f"{bucket[5:]}/raw/{p.name}", p.read_bytes())
    s3 = deblur_archive(
        f"{bucket}/raw",
        f"{bucket}/sharp",
        Options(model=str(trained_checkpoint), engine="torch"),
        workers=2,
        progress=False,
    )
    assert s3["done"] == 12
    check_outputs(
        {p.name: p.read_bytes() for p in photos},
        {n: fs.cat_file(f"{bucket[5:]}/sharp/{n}") for n in (p.name for p in photos)},
        trained_checkpoint,
    )

    archive = tmp_path / "photos.tar"
    with tarfile.open(archive, "w") as tar:
        for p in photos:
            tar.add(p, arcname=f"album/{p.name}")
    tar_run = deblur_archive(
        str(archive),
        str(tmp_path / "from-tar"),
        Options(model=str(trained_checkpoint), engine="torch"),
        workers=1,
        progress=False,
    )
    assert tar_run["done"] == 12
    check_outputs(
        {f"album/{p.name}": p.read_bytes() for p in photos}, read_tree(tmp_path / "from-tar"), trained_checkpoint
    )


class CountingProxy:
    """A TCP proxy on loopback in front of an S3 endpoint, counting every byte the endpoint sends back (bodies
    and HTTP headers): what a job's reads cost on the wire."""

    def __init__(self, upstream: str):
        import socket
        import threading

        self.sent = self.requests = 0
        self._lock = threading.Lock()
        host, port = upstream.split("://", 1)[1].split(":")
        self._upstream = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src, dst, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if counted:
                        self.sent += len(data)
                    else:  # a client's GET/HEAD has no body: each request line starts a request
                        self.requests += data.count(b"GET /") + data.count(b"HEAD /")
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


def test_an_s3_tar_is_listed_from_its_headers_and_read_member_by_member(bucket, s3_endpoint, tmp_path, monkeypatch):
    """A .tar on S3: the listing reads the member headers alone and each worker one ranged read of its member,
    so what the endpoint sends (counted on the wire, HTTP headers included) is at most 1.2 times the images'
    bytes; s3fs's default 50 MiB read-ahead fetched the whole archive for the listing and again per member."""
    from deblur.bulk.sources import list_inputs, read_input

    photos = lai_photos(16)
    archive = tmp_path / "photos.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:  # what GNU tar writes
        for k, p in enumerate(photos):
            tar.add(p, arcname=f"album/{'long-' * 30 if k == 3 else ''}{p.name}")  # a GNU long name too
    fs, _ = storage.filesystem(bucket)
    fs.put_file(str(archive), f"{bucket[5:]}/photos.tar")
    proxy = CountingProxy(s3_endpoint)
    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(storage, "_ENDPOINT", proxy.endpoint)
    try:
        items, rejected = list_inputs(f"{bucket}/photos.tar")
        listed, requests = proxy.sent, proxy.requests
        data = [read_input(item) for item in items]
        read = proxy.sent - listed
        again, _ = list_inputs(f"{bucket}/photos.tar")  # indexed on this machine: headers not read again
        relisted = proxy.sent - listed - read
    finally:
        proxy.close()
    images = sum(p.stat().st_size for p in photos)
    assert rejected == [] and again == items and [len(d) for d in data] == [p.stat().st_size for p in photos]
    assert data[3] == photos[3].read_bytes() and items[3]["rel"].startswith("album/long-long-")
    ratio = (listed + read) / images
    print(f"\nS3 tar, {len(photos)} members, {images / 1e6:.2f} MB of images: listing {listed / 1e3:.1f} kB in "
          f"{requests} requests, reads {read / 1e6:.3f} MB, relisting {relisted / 1e3:.1f} kB; requested / images = {ratio:.3f}")  # fmt: skip
    assert ratio <= 1.2 and listed < 0.1 * images and relisted < 4000, (listed, read, relisted, images)
    assert requests <= len(photos) + 4, requests  # one per member (and the archive's info and end)


def test_hostile_tar_members_are_listed_and_never_written(trained_checkpoint, real_photo, tmp_path, ray_session):
    jpeg = cv2.imencode(".jpg", real_photo[:64, :96, ::-1])[1].tobytes()
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(jpeg) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(jpeg) if kind == tarfile.REGTYPE else None)

        add("ok/fine.jpg")
        add("./dot/fine.jpg")
        add("a/../../escape.jpg")
        add("/abs/escape.jpg")
        add("link.jpg", tarfile.SYMTYPE, "/etc/passwd")
        add("hard.jpg", tarfile.LNKTYPE, "ok/fine.jpg")
        add("dev.jpg", tarfile.CHRTYPE)
    out = tmp_path / "nested" / "out"
    summary = deblur_archive(
        str(archive), str(out), Options(model=str(trained_checkpoint), engine="torch"), workers=1, progress=False
    )
    assert (summary["done"], summary["failed"], summary["images"]) == (2, 5, 7)
    assert read_tree(out).keys() == {"ok/fine.jpg", "dot/fine.jpg"}
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "nested" / "escape.jpg").exists()
    assert not any(p.name == "escape.jpg" for p in tmp_path.rglob("*"))
    errors = {e["path"]: e["reason"] for e in map(json.loads, (out / "_errors.jsonl").read_text().splitlines())}
    assert "leaves the archive root" in errors["a/../../escape.jpg"] and "absolute" in errors["/abs/escape.jpg"]
    assert all("link or device" in errors[n] for n in ("link.jpg", "hard.jpg", "dev.jpg"))


@pytest.mark.parametrize(
    "name, ok",
    [
        ("a/b.jpg", "a/b.jpg"),
        ("./a//b.jpg", "a/b.jpg"),
        ("a/./b/../c.jpg", "a/c.jpg"),
        ("../x.jpg", None),
        ("a/../../x.jpg", None),
        ("/etc/x.jpg", None),
        ("C:/x.jpg", None),
        ("..", None),
        ("", None),
    ],
)
def test_safe_relative_names(name, ok):
    from deblur.bulk.sources import UnsafeName, safe_relative

    if ok:
        assert safe_relative(name) == ok
    else:
        with pytest.raises(UnsafeName):
            safe_relative(name)


def test_s3_keys_that_climb_out_are_refused(trained_checkpoint, real_photo, bucket, tmp_path, ray_session, s3_endpoint):
    import boto3

    jpeg = cv2.imencode(".jpg", real_photo[:64, :96, ::-1])[1].tobytes()
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in ("raw/good.jpg", "raw/a/../../escape.jpg"):
        client.put_object(Bucket=bucket[5:], Key=key, Body=jpeg)
    summary = deblur_archive(
        f"{bucket}/raw",
        f"{bucket}/out/sharp",
        Options(model=str(trained_checkpoint), engine="torch"),
        workers=1,
        progress=False,
    )
    assert summary["done"] == 1 and summary["failed"] == 1
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket[5:])["Contents"])
    assert "out/sharp/good.jpg" in keys and not any("escape" in k and k.startswith("out") for k in keys)
    assert "out/escape.jpg" not in keys and "escape.jpg" not in keys


def test_same_stem_inputs_keep_both_outputs_when_the_format_changes(
    trained_checkpoint, real_photo, tmp_path, ray_session
):
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.jpg", real_photo[:64, :96])
    write_image(src / "a.png", real_photo[64:128, :96])
    write_image(src / "b.jpg", real_photo[:64, 96:192])
    summary = deblur_archive(
        str(src),
        str(tmp_path / "out"),
        Options(model=str(trained_checkpoint), engine="torch", format="png"),
        workers=1,
        progress=False,
    )
    assert summary["done"] == 3 and summary["failed"] == 0
    outputs = read_tree(tmp_path / "out")
    assert set(outputs) == {"a.png", "a.jpg.png", "b.png"}  # a.jpg kept its extension instead of overwriting a.png
    from deblur.images import decode_image

    assert decode_image(outputs["a.png"]).shape == decode_image(outputs["a.jpg.png"]).shape == (64, 96, 3)
    assert not np.array_equal(decode_image(outputs["a.png"]), decode_image(outputs["a.jpg.png"]))
    again = deblur_archive(
        str(src),
        str(tmp_path / "out"),
        Options(model=str(trained_checkpoint), engine="torch", format="png"),
        workers=1,
        progress=False,
    )
    assert again["skipped"] == 3 and again["done"] == 0  # resumable with the planned names
    assert again["start_up_seconds"] is None  # no image ran, so no start-up to report


def make_zoo(folder: Path, photo: np.ndarray) -> dict[str, str]:
    """Awkward files; returns name → what should happen ('ok' or a reason fragment)."""
    folder.mkdir(parents=True)
    small = photo[:120, :160]
    (folder / "empty.jpg").write_bytes(b"")
    png = cv2.imencode(".png", small[..., ::-1])[1].tobytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.jpg").write_text("this is text, not a JPEG")
    deep = small.astype(np.uint16) * 257 + np.arange(small.shape[1], dtype=np.uint16)[None, :, None]
    write_image(folder / "deep16.png", deep)
    Image.fromarray(small).convert("L").save(folder / "gray.png")
    rgba = np.dstack([small, np.tile(np.arange(160, dtype=np.uint8), (120, 1))])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(small).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(small).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    Image.fromarray(small[:1, :1]).save(folder / "tiny.png")
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, format="PNG")
    data = bytearray(bomb.getvalue())
    data[16:24] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")  # IHDR width/height: 3.6 Gpx
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # a valid header: only its size is hostile
    (folder / "bomb.png").write_bytes(bytes(data))
    return {
        "empty.jpg": "empty",
        "truncated.png": "decode",
        "notes.jpg": "not an image",
        "bomb.png": "budget",
        "deep16.png": "ok",
        "gray.png": "ok",
        "alpha.png": "ok",
        "cmyk.jpg": "ok",
        "rotated.jpg": "ok",
        "tiny.png": "ok",
    }


def test_zoo_of_awkward_files(trained_checkpoint, real_photo, tmp_path, ray_session):
    expected = make_zoo(tmp_path / "zoo", real_photo)
    out = tmp_path / "out"
    summary = deblur_archive(
        str(tmp_path / "zoo"),
        str(out),
        Options(model=str(trained_checkpoint), engine="torch"),
        workers=1,
        progress=False,
    )
    bad = {k for k, v in expected.items() if v != "ok"}
    assert summary["failed"] == len(bad) and summary["done"] == len(expected) - len(bad)
    errors = {e["path"]: e["reason"] for e in map(json.loads, (out / "_errors.jsonl").read_text().splitlines())}
    assert set(errors) == bad
    for name in bad:
        assert expected[name] in errors[name], (name, errors[name])
    deep = cv2.imread(str(out / "deep16.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (120, 160, 3) and len(np.unique(deep)) > 256
    assert Image.open(out / "gray.png").mode == "L"
    alpha_in, alpha_out = Image.open(tmp_path / "zoo" / "alpha.png"), Image.open(out / "alpha.png")
    assert alpha_out.mode == "RGBA" and np.array_equal(np.asarray(alpha_out)[..., 3], np.asarray(alpha_in)[..., 3])
    assert Image.open(out / "cmyk.jpg").mode == "RGB" and Image.open(out / "cmyk.jpg").size == (160, 120)
    rotated = Image.open(out / "rotated.jpg")
    assert rotated.size == (120, 160) and rotated.getexif().get(0x0112, 1) == 1  # upright, tag reset
    assert Image.open(out / "tiny.png").size == (1, 1)
    assert not any(p.name.endswith(tuple(f".tmp-{c}" for c in "0123456789abcdef")) for p in out.iterdir())


def test_kill_halfway_then_resume(trained_checkpoint, tmp_path, ray_cluster):
    src = tmp_path / "in"
    src.mkdir()
    photos = lai_photos(40)
    for photo in photos:
        shutil.copy(photo, src / photo.name)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "jobs/bulk.py",
        "--input",
        str(src),
        "--output",
        str(out),
        "--model",
        str(trained_checkpoint),
        "--engine",
        "torch",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=job_env(ray_cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("*.jpg"))) < 5:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    first = {p.name for p in out.glob("*.jpg")}
    assert 5 <= len(first) < len(photos), "the run should have been stopped partway"
    res = subprocess.run(cmd, cwd=ROOT, env=job_env(ray_cluster), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["skipped"] >= len(first) and summary["done"] == len(photos) - summary["skipped"]
    assert summary["gpus_per_worker"] == (1 if cuda_available() else 0)  # --gpus-per-worker auto
    assert f"{summary['done']} done, {summary['skipped']} skipped, 0 failed" in res.stdout
    for p in src.iterdir():  # complete and none corrupt
        img = Image.open(out / p.name)
        img.load()
        assert img.size == Image.open(p).size
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_a_killed_actor_leaves_no_partial_output(trained_checkpoint, tmp_path, ray_cluster):
    """SIGKILL the engine actor (not the driver) mid-run: Ray restarts it and retries its images; every output
    under its final name is complete, and what a killed write leaves (.tmp-*) is removed by the next run."""
    import signal

    src = tmp_path / "in"
    src.mkdir()
    for photo in lai_photos(16):
        shutil.copy(photo, src / photo.name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.jpg.tmp-0123abcd").write_bytes(b"half a file")  # as a killed earlier write leaves it
    cmd = [
        sys.executable,
        "jobs/bulk.py",
        "--input",
        str(src),
        "--output",
        str(out),
        "--model",
        str(trained_checkpoint),
        "--engine",
        "torch",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=job_env(ray_cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and killed is None and proc.poll() is None:
        if len(list(out.glob("*.jpg"))) >= 3:
            ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
            actors = [int(line.split()[0]) for line in ps.splitlines() if "Deblurrer" in line and "ray::" in line]
            if actors:
                os.kill(actors[0], signal.SIGKILL)
                killed = actors[0]
        time.sleep(0.1)
    output = proc.communicate(timeout=600)[0]
    assert killed, "the actor was not found while the job ran"
    assert proc.returncode == 0, output[-3000:]
    assert not (out / "stale.jpg.tmp-0123abcd").exists()
    for p in src.iterdir():  # every output complete under its final name
        img = Image.open(out / p.name)
        img.load()
        assert img.size == Image.open(p).size
    leftovers = [p.name for p in out.iterdir() if ".tmp-" in p.name]
    res = subprocess.run(cmd, cwd=ROOT, env=job_env(ray_cluster), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "16 skipped" in res.stdout, res.stdout[-2000:]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name], leftovers  # the rerun cleaned any


@pytest.mark.parametrize(
    "case",
    [
        "missing input",
        "compressed tar",
        "missing model",
        "onnxruntime in bf16",
        "fp16 without a GPU",
        "fp16, auto GPUs",
    ],
)
def test_bad_input_is_one_line(case, trained_checkpoint, real_photo, tmp_path):
    """Refused in the driver before any actor starts (before Ray, but for "auto" GPUs, which Ray resolves):
    the line names the file (or the choice) and why, where a wrong model used to fail in every actor with
    Ray's traceback."""
    folder, model, extra = tmp_path / "in", str(trained_checkpoint), []
    write_image(folder / "a.png", real_photo[:64, :64])
    target, expected = folder, None
    if case == "missing input":
        target = tmp_path / "nope"
    elif case == "compressed tar":
        target = tmp_path / "x.tar.gz"
        with tarfile.open(target, "w:gz"):
            pass
    elif case == "missing model":
        model = str(tmp_path / "nope.pt")
        expected = f"{model}: checkpoint not found"
    elif case == "fp16 without a GPU":  # the workers get no GPU (--gpus-per-worker 0): they run on CPUs
        extra = ["--precision", "fp16", "--gpus-per-worker", "0"]
        expected = (
            "fp16 inference needs a GPU and the workers are given none: --gpus-per-worker 1, or use bf16 "
            "(a CPU with AMX or AVX512-BF16) or fp32"
        )
    elif case == "fp16, auto GPUs":  # the default: the job's own Ray on this machine has no GPU
        if cuda_available():
            pytest.skip("this machine has a GPU: fp16 runs")
        extra = ["--precision", "fp16"]
        expected = (
            "fp16 inference needs a GPU and this machine has none (--gpus-per-worker auto gave the workers none): "
            "join a Ray cluster with GPUs (RAY_ADDRESS or `ray job submit`), or use bf16 (a CPU with AMX or "
            "AVX512-BF16) or fp32"
        )
    else:
        extra = ["--engine", "onnxruntime", "--precision", "bf16"]
        expected = "ONNX Runtime runs the fp32 graph; for bf16 use the torch engine (or TensorRT)"
    cmd = [sys.executable, "jobs/bulk.py", "--input", str(target), "--output", str(tmp_path / "o"), "--model", model]
    res = subprocess.run(
        cmd + extra, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""}
    )
    assert "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    if case == "onnxruntime in bf16":  # an option that can never work: argparse's usage line, exit 2
        assert res.returncode == 2 and last.endswith(expected), res.stderr
    elif expected:
        assert res.returncode == 1 and res.stderr.strip().splitlines() == [f"error: {expected}"]
    else:
        assert res.returncode == 1 and str(target) in last
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("archive", ["images", "videos only"])
def test_an_engine_the_workers_cannot_load_is_one_error(
    archive, trained_checkpoint, real_photo, tmp_path, ray_session, caplog
):
    """What the driver cannot check (the workers' hardware, on a cluster) fails in the actors' constructors;
    the job ends on one error naming the cause, not on Ray's ActorDiedError with every actor's traceback (nor,
    for an archive of videos, on one error row per video), and without Ray Data's request to report the failure
    as a bug in Ray."""
    from deblur.ray_env import WorkerStartError

    folder = tmp_path / "in"
    if archive == "images":
        write_image(folder / "a.png", real_photo[:64, :64])
    else:
        write_clip(folder / "clip.mp4", real_photo[:64, :64])
    options = Options(model=str(trained_checkpoint), precision="fp16")  # the actors get no GPU: refused there
    with pytest.raises(WorkerStartError) as caught:
        deblur_archive(str(folder), str(tmp_path / "out"), options, workers=1, progress=False)
    assert str(caught.value) == (
        "the engine could not start on a worker: EngineError: fp16 inference needs a GPU; on a CPU use bf16 "
        "(with AMX or AVX512-BF16) or fp32"
    )
    logged = [record.getMessage() for record in caplog.records]
    assert any("actors died during initialization" in m for m in logged)  # Ray Data's own line is still there
    assert not [m for m in logged if "please open an issue" in m or "Full stack trace" in m], logged


def test_images_done_then_video_workers_that_cannot_start_keep_the_images(
    trained_checkpoint, real_photo, tmp_path, ray_session, monkeypatch
):
    """On a cluster, the video stage's actors can fail to start where the images' did not (other nodes); on one
    machine both load the same engine alike, so the stage's failure is made here, in the driver. The images'
    results, summary and blur scores are kept, and each video becomes an error row naming the cause."""
    from deblur import video
    from deblur.ray_env import WorkerStartError

    folder = tmp_path / "in"
    write_image(folder / "a.png", real_photo[:64, :64])
    write_clip(folder / "clip.mp4", real_photo[:64, :64])

    def cannot_start(*args, **kwargs):
        raise WorkerStartError("the engine could not start on a worker: EngineError: no GPU there")

    monkeypatch.setattr(video, "deblur_videos", cannot_start)
    out = tmp_path / "out"
    summary = deblur_archive(str(folder), str(out), Options(model=str(trained_checkpoint)), workers=1, progress=False)
    assert (summary["done"], summary["failed"], summary["videos"]["failed"]) == (1, 1, 1)
    assert (out / "a.png").is_file() and summary["blur"]["scored"] == 1
    errors = [json.loads(line) for line in (out / "_errors.jsonl").read_text().splitlines()]
    assert errors == [
        {
            "path": "clip.mp4",
            "reason": "clip.mp4: the video stage failed (WorkerStartError: the engine could not start on a worker: "
            "EngineError: no GPU there)",
        }
    ]


@pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="bf16 needs a CPU with AMX or AVX512-BF16 (test_inference checks the refusal)"
)
def test_bf16_archive_is_the_fp32_image_within_a_few_levels(trained_checkpoint, tmp_path, ray_session):
    """`precision="bf16"` (a CPU with AMX or AVX512-BF16) runs the actors on torch in bf16; the images are the
    fp32 engine's within what check_outputs allows for a JPEG re-encode."""
    src = tmp_path / "in"
    src.mkdir()
    for photo in lai_photos(3):
        shutil.copy(photo, src / photo.name)
    options = Options(model=str(trained_checkpoint), precision="bf16")
    summary = deblur_archive(str(src), str(tmp_path / "out"), options, workers=1, progress=False)
    assert summary["done"] == 3 and summary["failed"] == 0, summary
    assert summary["engines"] == ["torch bf16 (cpu)"]  # what the actors really ran
    check_outputs(read_tree(src), read_tree(tmp_path / "out"), trained_checkpoint)


def test_only_blurred_flag_alone_uses_the_measured_default(trained_checkpoint, cbsd68, tmp_path, ray_cluster):
    """`jobs/bulk.py --only-blurred` with no value: the documented default threshold (SHARP_BELOW) decides."""
    from deblur.bulk.job import SHARP_BELOW
    from deblur.images import read_image
    from deblur.metrics import blur_score

    src = tmp_path / "mixed"
    src.mkdir()
    streak = np.zeros((21, 21), np.float32)
    streak[10] = 1 / 21
    sharp = [p for p in cbsd68 if blur_score(read_image(str(p))[:160, :224]) < SHARP_BELOW - 0.05][:2]
    for k, path in enumerate(sharp):
        photo = read_image(str(path))[:160, :224]
        write_image(src / f"sharp{k}.png", photo)
        write_image(src / f"shaken{k}.png", cv2.filter2D(photo, -1, streak))
    scores = {p.name: blur_score(read_image(str(p))) for p in src.iterdir()}
    assert len(sharp) == 2 and all(v > SHARP_BELOW + 0.05 for k, v in scores.items() if k.startswith("shaken"))
    out = tmp_path / "out"
    cmd = [sys.executable, "jobs/bulk.py", "--input", str(src), "--output", str(out), "--only-blurred"]
    cmd += ["--model", str(trained_checkpoint), "--engine", "torch", "--workers", "1", "--no-progress"]
    res = subprocess.run(cmd, cwd=ROOT, env=job_env(ray_cluster), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["blur"]["only_blurred"] == SHARP_BELOW == 0.35 and summary["copied_sharp"] == 2, summary
    assert "2 sharp ones copied" in res.stdout
    for k in range(2):
        assert (out / f"sharp{k}.png").read_bytes() == (src / f"sharp{k}.png").read_bytes()
        assert (out / f"shaken{k}.png").read_bytes() != (src / f"shaken{k}.png").read_bytes()


def test_only_blurred_copies_sharp_photos_through(trained_checkpoint, cbsd68, tmp_path, ray_session):
    """Real photos and the same photos motion-blurred: the blur score tells them apart, the sharp files come
    back byte for byte, the blurred ones are the model's output, and every score is recorded."""
    from deblur.images import read_image
    from deblur.metrics import blur_score

    src = tmp_path / "mixed"
    src.mkdir()
    streak = np.zeros((15, 15), np.float32)
    streak[7] = 1 / 15  # 15 px of horizontal camera shake
    for k, path in enumerate(cbsd68[:3]):
        photo = read_image(str(path))[:160, :224]
        write_image(src / f"sharp{k}.png", photo)
        write_image(src / f"shaken{k}.png", cv2.filter2D(photo, -1, streak))
    scores = {p.name: blur_score(read_image(str(p))) for p in src.iterdir()}
    sharp, shaken = ([v for k, v in scores.items() if k.startswith(s)] for s in ("sharp", "shaken"))
    assert max(sharp) < min(shaken), scores
    threshold = (max(sharp) + min(shaken)) / 2
    out = tmp_path / "out"
    summary = deblur_archive(
        str(src),
        str(out),
        Options(model=str(trained_checkpoint), engine="torch", only_blurred=threshold),
        workers=1,
        progress=False,
    )
    assert (summary["done"], summary["copied_sharp"], summary["failed"]) == (3, 3, 0), summary
    for k in range(3):
        assert (out / f"sharp{k}.png").read_bytes() == (src / f"sharp{k}.png").read_bytes()
        assert (out / f"shaken{k}.png").read_bytes() != (src / f"shaken{k}.png").read_bytes()
    recorded = {r["path"]: r for r in map(json.loads, (out / "_blur.jsonl").read_text().splitlines())}
    assert {k: r["status"] for k, r in recorded.items()} == {
        k: "copied" if k.startswith("sharp") else "done" for k in scores
    }
    assert all(abs(recorded[k]["blur"] - v) < 1e-3 for k, v in scores.items())
    assert summary["blur"]["scored"] == 6 and summary["blur"]["scores_file"].endswith("_blur.jsonl")
    from deblur.inference import load_engine

    given = read_image(str(src / "shaken0.png"))
    check_is_model_output(
        read_image(str(out / "shaken0.png")),
        given,
        load_engine(str(trained_checkpoint), "torch").deblur_image(given),
        "PNG",
        "shaken0",
    )


def test_the_default_route_runs_in_the_actors_and_says_where_each_photo_went(tmp_path, ray_session):
    """No model named: the actors load the default route (`deblur-shake-v1`); the shaken photo is deconvolved with
    its own kernel, the sharp one goes to the network, and the summary and _blur.jsonl say which went where."""
    from test_kernel import arc_kernel, sharp_photo

    from deblur.data.synth import expose
    from deblur.images import read_image
    from deblur.inference import load_engine

    real_photo = sharp_photo()
    shaken = expose(real_photo, arc_kernel(), noise_sigma=0.0, rng=np.random.default_rng(0))
    write_image(tmp_path / "in" / "shaken.png", shaken)
    write_image(tmp_path / "in" / "sharp.png", real_photo)
    options = Options(engine="onnxruntime")
    assert options.model == "default"
    summary = deblur_archive(str(tmp_path / "in"), str(tmp_path / "out"), options, workers=1, progress=False)
    assert summary["done"] == 2 and summary["routes"] == {"shake": 1, "sharp": 1}, summary
    rows = [json.loads(line) for line in (tmp_path / "out" / "_blur.jsonl").read_text().splitlines()]
    assert {r["path"]: r["route"] for r in rows} == {"shaken.png": "shake", "sharp.png": "sharp"}
    expected = load_engine("deblur-shake-v1", "onnxruntime", "cpu").deblur_image(shaken)
    got = read_image(str(tmp_path / "out" / "shaken.png"))
    assert np.abs(got.astype(np.int16) - expected).max() <= 1
