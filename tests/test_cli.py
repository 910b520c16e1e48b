"""The `deblur` command from a checkout: photos deblurred in-process without Ray, the stages' parsers, the shared
command-line logic (deblur/cli/common.py) called directly, named configs, console progress, weights download.
The same command installed from the wheel: tests/test_wheel.py."""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps
from tqdm import tqdm

from conftest import ROOT, check_is_model_output, write_image

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def deblur(*args: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`deblur ARGS` (the console script's function) in a fresh Python, reporting whether it imported Ray."""
    code = (
        "import sys\nfrom deblur.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    print('RAY IMPORTED' if 'ray' in sys.modules else 'no ray', file=sys.stderr)\n    raise\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, input=stdin, capture_output=True, timeout=300, env=env
    )


def camera_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """A JPEG as a phone writes one: stored sideways with EXIF orientation 6, an ICC profile, a camera make."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "deblur-test-camera"
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(
        path, format="JPEG", quality=95, icc_profile=SRGB, exif=exif.tobytes()
    )
    return path


def test_one_photo_is_deblurred_beside_itself_without_ray_keeping_exif_icc_and_orientation(tmp_path, real_photo):
    from deblur.inference import load_engine

    photo = real_photo[:96, :128]
    src = camera_jpeg(tmp_path / "holiday.jpg", photo)
    before = src.read_bytes()
    res = deblur("holiday.jpg", cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    out = tmp_path / "holiday.deblurred.jpg"
    assert f"holiday.jpg → {out.name}" in res.stdout.decode() and "no ray" in res.stderr.decode()
    with Image.open(out) as img:
        assert img.info.get("icc_profile") == SRGB and img.getexif().get(0x010F) == "deblur-test-camera"
        assert img.getexif().get(0x0112, 1) == 1  # upright pixels, the tag reset: no viewer turns it twice
        got = np.asarray(img.convert("RGB"))
    with Image.open(src) as img:
        given = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert got.shape == given.shape == photo.shape
    expected = load_engine("default", "onnxruntime", "cpu").deblur_image(given)
    check_is_model_output(got, given, expected, "JPEG", "deblur holiday.jpg")
    assert src.read_bytes() == before, "the source is untouched"


def test_the_default_route_says_what_it_did_with_each_photo(tmp_path):
    from test_kernel import arc_kernel, sharp_photo

    from deblur.data.synth import expose

    real_photo = sharp_photo()
    shaken = expose(real_photo, arc_kernel(), noise_sigma=0.0, rng=np.random.default_rng(0))
    write_image(tmp_path / "shaken.png", shaken)
    write_image(tmp_path / "sharp.png", real_photo)
    write_image(tmp_path / "thumb.png", shaken[:120, :150])
    res = deblur("shaken.png", "sharp.png", "thumb.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    said = res.stdout.decode()
    assert "model deblur-shake-v1 (the shipped default): onnxruntime fp32 on cpu" in said, said
    assert "no ray" in res.stderr.decode()
    assert "shaken.png → shaken.deblurred.png" in said and "deconvolved with its own" in said, said
    assert "sharp.png → sharp.deblurred.png (" in said and "through the network (sharp already)" in said, said
    assert "thumb.png → thumb.deblurred.png (150×120, " in said and "(too small to read a blur kernel from)" in said
    res = deblur("shaken.png", "--model", "deblur-nafnet-v1", "-o", "v1.png", cwd=tmp_path)  # the network alone
    said = res.stdout.decode()
    assert res.returncode == 0 and "model deblur-nafnet-v1: onnxruntime" in said and "network" not in said, said


def test_several_photos_into_a_folder_one_bad_file_named_and_the_rest_done(tmp_path, real_photo):
    write_image(tmp_path / "a.png", real_photo[:64, :64])
    write_image(tmp_path / "b.jpg", real_photo[64:128, :64])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    res = deblur("a.png", "broken.jpg", "b.jpg", "-o", "sharp", cwd=tmp_path)
    assert res.returncode == 1
    assert "error: broken.jpg: not an image" in res.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "sharp").iterdir()) == ["a.png", "b.jpg"]
    assert "Traceback" not in res.stderr.decode()


def test_an_output_name_says_its_format(tmp_path, real_photo):
    write_image(tmp_path / "a.jpg", real_photo[:64, :64])
    res = deblur("a.jpg", "-o", "a-sharp.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr.decode()
    assert Image.open(tmp_path / "a-sharp.png").format == "PNG"
    res = deblur("a.jpg", "-o", "a.gif", cwd=tmp_path)
    assert res.returncode == 2 and "a.gif: not an image name" in res.stderr.decode()


def test_standard_input_to_standard_output(tmp_path, real_photo):
    buf = io.BytesIO()
    Image.fromarray(real_photo[:64, :80]).save(buf, format="PNG")
    res = deblur("-", cwd=tmp_path, stdin=buf.getvalue())
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout[:8] == b"\x89PNG\r\n\x1a\n" and "standard input → standard output" in res.stderr.decode()
    assert np.asarray(Image.open(io.BytesIO(res.stdout))).shape == (64, 80, 3)


@pytest.mark.parametrize(
    "args, says",
    [
        (["photos"], "photos: a folder; for those: deblur bulk --input photos --output OUT"),
        (["s3://bucket/raw"], "s3://bucket/raw: an s3:// prefix; for those: deblur bulk"),
        (["trian"], "trian: no such file (the sub-commands are prepare, train, evaluate"),
        (["old.tar"], "old.tar: an archive; for those: deblur bulk --input old.tar --output OUT"),
        (["clip.mov"], "clip.mov: a video; for videos: deblur video clip.mov OUT.mp4"),
        (["a.png", "-o", "a.png"], "a.png: is one of the photos; choose another -o, no photo is overwritten"),
        (["a.png", "-", "a.png"], "- (standard input) is one photo: give it alone"),
        (["a.png", "./a.png", "-o", "out"], "two photos would be written to one name"),
        (["a.png", "b.png", "-o", "a.png"], "a.png: several photos go into a folder, one (or -) into a file name"),
    ],
)
def test_what_the_photo_command_refuses_before_loading_a_model(tmp_path, real_photo, args, says):
    (tmp_path / "photos").mkdir()
    before = write_image(tmp_path / "a.png", real_photo[:32, :32]).read_bytes()
    write_image(tmp_path / "b.png", real_photo[32:64, :32])
    res = deblur(*args, cwd=tmp_path)
    assert res.returncode == 2 and says in res.stderr.decode(), res.stderr.decode()
    assert (tmp_path / "a.png").read_bytes() == before and "model " not in res.stdout.decode()


def test_every_stage_has_one_parser_whose_help_shows_examples_first():
    from deblur.cli import STAGES, USAGE

    assert "deblur photo.jpg" in USAGE and all(f"  {s} " in USAGE for s in STAGES)
    for stage in [*STAGES, "photo"]:
        res = subprocess.run(
            [sys.executable, "-m", "deblur", stage, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, (stage, res.stderr)
        usage, description = res.stdout.split("\n\n")[:2]
        assert usage.startswith(f"usage: deblur {stage}"), usage
        examples = [line for line in res.stdout.split("options:")[0].splitlines() if line.startswith("  deblur ")]
        assert examples, (stage, description)
    # a checkout's script runs the same parser under its own name
    res = subprocess.run([sys.executable, "jobs/prepare_data.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("usage: prepare_data.py") and "--dataset" in res.stdout


def test_named_configs_ship_in_the_package_and_a_typo_lists_them(tmp_path):
    from deblur.config import config_names, config_path, load_config
    from deblur.options import ConfigError

    assert {"sample", "gopro", "shake", "shipped"} <= set(config_names())
    assert config_path("gopro") == ROOT / "deblur" / "configs" / "gopro.yaml"
    assert load_config("gopro").model_dump() == load_config(config_path("gopro")).model_dump()
    with pytest.raises(ConfigError, match="gopr: no such config; shipped configs: deblurgan, gopro"):
        load_config("gopr")
    mine = tmp_path / "mine.yaml"
    mine.write_text("train: {epochs: 3}\n")
    assert load_config(str(mine)).train.epochs == 3


def test_shared_command_line_logic_directly(capsys):
    """What jobs/_common.py did, reachable without a subprocess now: errors as one line and an exit code,
    the GPU flag's parsing, the video flags as options."""
    from deblur.cli import common

    class Unshared(OSError):
        exit_code = 2

    def fails(error):
        def main(argv):
            raise error

        return main

    for error, code in ((ValueError("bad --workers"), 1), (Unshared("not on every node"), 2)):
        with pytest.raises(SystemExit) as stop:
            common.run(fails(error), [])
        assert stop.value.code == code
        assert capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(SystemExit) as stop:
        common.run(fails(KeyboardInterrupt()), [])
    assert stop.value.code == 130

    p = argparse.ArgumentParser()
    common.add_gpus_argument(p, "--gpus-per-worker", "actor")
    common.add_video_arguments(p)
    assert (
        p.parse_args([]).gpus_per_worker == "auto" and p.parse_args(["--gpus-per-worker", "0.5"]).gpus_per_worker == 0.5
    )
    with pytest.raises(SystemExit):
        p.parse_args(["--gpus-per-worker", "lots"])
    options = common.video_options(p.parse_args(["--temporal", "off", "--video-crf", "23"]))
    assert options == {"temporal": False, "codec": "h264", "crf": 23, "preset": "medium", "segment_seconds": 10.0}


def test_progress_off_a_terminal_is_lines_not_frames(capsys, monkeypatch):
    from deblur import progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    with progress.bar(3, "deblurring", "img") as bar:  # pytest's capture is not a terminal
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 4 and "deblurring: 3/3 img in " in err.splitlines()[-1]
    with progress.bar(3, "quiet", "img", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "on_terminal", lambda: True)  # a person watching: tqdm's bar
    with progress.bar(3, "deblurring", "img") as bar:
        assert isinstance(bar, tqdm) and not bar.disable


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_imagenet_weights_download_as_torchvision_does_and_refuse_offline(tmp_path, monkeypatch, capsys):
    """A real download over HTTP on loopback (torch.hub's, the hash in the file name checked), then the cache;
    offline, one line naming the file and where it goes."""
    import hashlib
    from types import SimpleNamespace

    from deblur import pretrained

    served = tmp_path / "served"
    served.mkdir()
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, served / "tmp.pth")
    digest = hashlib.sha256((served / "tmp.pth").read_bytes()).hexdigest()[:8]
    (served / "tmp.pth").rename(served / f"tinynet-{digest}.pth")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    weights = SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/tinynet-{digest}.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # loopback is reached directly
        monkeypatch.delenv(proxy, raising=False)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / f"tinynet-{digest}.pth"
    try:
        monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
        with pytest.raises(pretrained.PretrainedWeightsMissing) as refused:
            pretrained.check_available(weights, "tiny backbone")
        message = str(refused.value)
        assert f"not found at {cached} (DEBLUR_OFFLINE is set). Put torchvision's tinynet-{digest}.pth there" in message
        assert weights.url in message and "\n" not in message and not cached.exists()

        monkeypatch.delenv(pretrained.OFFLINE_ENV)
        pretrained.check_available(weights, "tiny backbone")  # downloads now
        assert cached.is_file() and f"downloading {weights.url}" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()
    got = pretrained.load_state(weights, "tiny backbone", None, allow_random=False)  # from the cache, server gone
    assert torch.equal(got["w"], state["w"]) and capsys.readouterr().err == ""

    unreachable = SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/othernet-{digest}.pth")
    with pytest.raises(pretrained.PretrainedWeightsMissing, match=r"the download failed: URLError"):
        pretrained.check_available(unreachable, "other backbone")
    assert not (cached.parent / f"othernet-{digest}.pth").exists()
    assert pretrained.load_state(unreachable, "other backbone", None, allow_random=True) is None


def test_the_bundled_sample_photo_reads_without_a_libpng_warning():
    from deblur.data.layouts import sample_photo

    path = sample_photo("page")
    assert path.parent == ROOT / "deblur" / "data" / "photos"
    code = f"import cv2; assert cv2.imread({str(path)!r}) is not None"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    import skimage

    original = Path(skimage.__file__).parent / "data" / "page.png"
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(original))), "the same pixels"
