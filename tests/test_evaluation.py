"""The evaluation job and report: numbers equal the metrics module, identity/oracle models, protocols."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from deblur import metrics
from deblur.data import layouts, shards
from deblur.evaluation import evaluate, score
from deblur.evaluation.baselines import unsharp, wiener_deconvolve
from deblur.evaluation.protocols import realblur_align
from deblur.images import decode_image, read_image
from deblur.inference.engine import Engine, EngineInfo

from conftest import ROOT, write_image


@pytest.fixture(scope="module")
def mcmaster_shards(mcmaster18, tmp_path_factory) -> str:
    """Five McMaster photos (centre 192×256 crops) with synthetic motion blur, all in the val split."""
    folder = tmp_path_factory.mktemp("mcm")
    for path in mcmaster18[:5]:
        img = read_image(str(path))[150:342, 100:356]
        write_image(folder / f"{path.stem}.png", img)
    out = str(tmp_path_factory.mktemp("mcm-shards"))
    pairs = layouts.synthetic(str(folder), val_fraction=1.0, synth={"kind": "motion", "max_len": 15, "seed": 3})
    shards.prepare(pairs, out, shards.layout_info("synthetic", str(folder)), progress=False)
    return out


class IdentityEngine(Engine):
    def __init__(self):
        self.info = EngineInfo("identity", "cpu", "fp32", 1, "test")

    def _infer(self, batch):
        return batch


class OracleEngine(Engine):
    """Test-only: returns the sharp image of whichever blurred input it is given."""

    def __init__(self, uri: str):
        self.info = EngineInfo("oracle", "cpu", "fp32", 1, "test")
        self.sharp = {}
        for u in shards.split_uris(uri, "val"):
            for r in shards.read_rows(u):
                self.sharp[hashlib.sha1(decode_image(r["blur"]).tobytes()).hexdigest()] = decode_image(r["sharp"])

    def deblur_images(self, images):
        return [self.sharp[hashlib.sha1(img.tobytes()).hexdigest()] for img in images]


def rows_of(uri: str) -> dict[str, dict]:
    return {r["key"]: r for u in shards.split_uris(uri, "val") for r in shards.read_rows(u)}


def test_report_numbers_equal_the_metrics_module(mcmaster_shards, trained_checkpoint, tmp_path):
    out = tmp_path / "report"
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "empty-torch-home"),
    }  # no ImageNet weights, whatever this machine has
    cmd = [
        sys.executable,
        "jobs/evaluate.py",
        "--checkpoint",
        str(trained_checkpoint),
        "--data",
        mcmaster_shards,
        "--out",
        str(out),
        "--engine",
        "torch",
        "--no-progress",
    ]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode == 1 and "--lpips-random" in refused.stderr and refused.stderr.strip().count("\n") == 0
    res = subprocess.run(cmd + ["--lpips-random"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "model output" in res.stdout and "RANDOM backbone" in res.stdout  # no ImageNet weights offline: said so
    for name in ("metrics.json", "metrics.csv", "index.html"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "metrics.json").read_text())
    assert "SSIM convention 'gopro'" in report["header"]["convention"]
    assert "RANDOM backbone" in report["header"]["LPIPS"]
    rows = rows_of(mcmaster_shards)
    assert len(report["images"]) == len(rows) == 5
    lpips = metrics.LPIPS("alex", allow_random_weights=True)
    for rec in report["images"]:
        row = rows[rec["key"]]
        blur, sharp = decode_image(row["blur"]), decode_image(row["sharp"])
        output = decode_image((out / "outputs" / f"{rec['key']}.png").read_bytes())
        assert output.shape == sharp.shape
        assert rec["input_psnr"] == pytest.approx(metrics.psnr(blur, sharp), abs=1e-9)
        assert rec["input_ssim"] == pytest.approx(metrics.ssim(blur, sharp, convention="gopro"), abs=1e-9)
        assert rec["output_psnr"] == pytest.approx(metrics.psnr(output, sharp), abs=1e-9)
        assert rec["output_ssim"] == pytest.approx(metrics.ssim(output, sharp, convention="gopro"), abs=1e-9)
        assert rec["output_lpips"] == pytest.approx(lpips(output, sharp), abs=1e-6)
        assert rec["wiener_psnr"] > rec["input_psnr"] and "unsharp_psnr" in rec  # synthetic pairs: both baselines
        assert (out / "grids" / f"{rec['key']}.png").is_file()
    s = report["summary"]
    assert s["input_psnr"] == pytest.approx(np.mean([r["input_psnr"] for r in report["images"]]))
    assert s["gain_psnr"] == pytest.approx(s["output_psnr"] - s["input_psnr"])
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["output_psnr"]) for r in table] == pytest.approx([r["output_psnr"] for r in report["images"]])
    page = (out / "index.html").read_text()
    assert "Best five" in page and "Worst five" in page and "Wiener (known kernel)" in page and "unsharp mask" in page
    grid = cv2.imread(str(out / "grids" / f"{report['images'][0]['key']}.png"))
    assert grid.shape[1] >= 3 * 256  # blurred | deblurred | sharp side by side


def test_identity_model_equals_the_input_row(mcmaster_shards, tmp_path):
    result = evaluate(
        "identity", str(tmp_path), data=mcmaster_shards, lpips=False, progress=False, engine_factory=IdentityEngine
    )
    for rec in result["images"]:
        assert rec["output_psnr"] == rec["input_psnr"] and rec["output_ssim"] == rec["input_ssim"]
    assert result["summary"]["gain_psnr"] == 0.0


def test_oracle_model_is_capped_and_labelled(mcmaster_shards, tmp_path):
    result = evaluate(
        "oracle",
        str(tmp_path),
        data=mcmaster_shards,
        lpips=False,
        progress=False,
        engine_factory=lambda: OracleEngine(mcmaster_shards),
    )
    for rec in result["images"]:
        assert rec["output_psnr"] == metrics.PSNR_CAP and rec["output_ssim"] == pytest.approx(1.0)
    assert result["summary"]["output_psnr_capped"] == 5
    assert "identical, capped" in (tmp_path / "index.html").read_text()


def test_wiener_baseline_beats_the_blur_when_the_kernel_is_known(mcmaster_shards):
    gains = []
    for row in rows_of(mcmaster_shards).values():
        blur, sharp = decode_image(row["blur"]), decode_image(row["sharp"])
        gains.append(
            metrics.psnr(wiener_deconvolve(blur, np.asarray(row["kernel"])), sharp) - metrics.psnr(blur, sharp)
        )
    assert np.mean(gains) > 1.0


def detailed_window(photo: np.ndarray, h: int, w: int, stride: int = 40) -> np.ndarray:
    """The h×w window of `photo` with the most detail (mean absolute Laplacian), on a `stride` grid."""
    import cv2

    detail = np.abs(cv2.Laplacian(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))
    corners = [
        (i, j) for i in range(0, photo.shape[0] - h + 1, stride) for j in range(0, photo.shape[1] - w + 1, stride)
    ]
    i, j = max(corners, key=lambda c: detail[c[0] : c[0] + h, c[1] : c[1] + w].mean())
    return np.ascontiguousarray(photo[i : i + h, j : j + w])


def test_baselines_match_independent_implementations_on_a_real_photo(real_photo):
    from scipy import ndimage
    from skimage.restoration import wiener

    from deblur.data import synth

    sharp = detailed_window(real_photo, 160, 200)  # a defocused background has nothing for Wiener to restore
    kernel = synth.normalise_kernel(synth.linear_kernel(15, 30))
    blur = synth.apply_kernel(sharp, kernel)
    # unsharp: x + a (x - G_sigma x), here with scipy's Gaussian
    x = blur.astype(np.float64)
    expected = np.clip(
        np.rint(x + 0.6 * (x - ndimage.gaussian_filter(x, (2.0, 2.0, 0), mode="reflect", truncate=4.0))), 0, 255
    )
    assert np.abs(unsharp(blur, 2.0, 0.6).astype(int) - expected).max() <= 1
    assert abs(unsharp(blur).mean() - blur.mean()) < 1.0  # sharpening keeps the brightness
    # Wiener: scikit-image's with an identity regulariser (a delta), on the same reflect padding
    pad = 2 * max(kernel.shape)
    padded = np.pad(blur / 255.0, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    delta = np.zeros((3, 3))
    delta[1, 1] = 1
    ref = np.stack(
        [wiener(padded[..., c], kernel.astype(np.float64), 0.01, reg=delta, clip=False) for c in range(3)], -1
    )
    ref = np.clip(np.rint(ref[pad:-pad, pad:-pad] * 255), 0, 255)
    assert np.abs(wiener_deconvolve(blur, kernel, 0.01).astype(int) - ref).max() <= 1
    # and with the true kernel it restores a lot: the reference point must never sit below the input
    assert (
        metrics.psnr(wiener_deconvolve(blur, kernel), sharp) > metrics.psnr(blur, sharp) + 1
    )  # +1.8 (stand-ins) and +2.2 dB (CBSD68) measured
    assert metrics.psnr(unsharp(blur), sharp) > metrics.psnr(blur, sharp) - 0.5


def test_real_blurred_photos_are_shown_beside_unsharp_masking(
    mcmaster_shards, trained_checkpoint, real_photo, tmp_path
):
    from scipy import ndimage

    folder = tmp_path / "camera-shake"
    folder.mkdir()
    for k in range(3):  # blurred photos without a sharp truth, as a user has them
        shaken = ndimage.uniform_filter1d(real_photo[k * 20 : k * 20 + 120, :160], 9, axis=k % 2)
        write_image(folder / f"shake{k}.jpg", shaken)
    (folder / "notes.txt").write_text("not an image")
    result = evaluate(
        str(trained_checkpoint),
        str(tmp_path / "r"),
        data=mcmaster_shards,
        engine="torch",
        lpips=False,
        progress=False,
        real=str(folder),
    )
    grids = sorted((tmp_path / "r" / "real").glob("*.png"))
    assert [g.stem for g in grids] == ["shake0", "shake1", "shake2"] and all(
        f"real/{g.name}" in result["files"] for g in grids
    )
    grid = cv2.imread(str(grids[0]))
    assert 3 * 160 < grid.shape[1] < 4 * 160  # blurred | unsharp mask | model, side by side
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Real blurred photos" in page and "real/shake1.png" in page
    # beside another model (the shipped one, as a new model's report shows the one it replaces)
    evaluate(
        str(trained_checkpoint),
        str(tmp_path / "c"),
        data=mcmaster_shards,
        engine="torch",
        lpips=False,
        progress=False,
        real=str(folder),
        real_compare=["deblur-nafnet-v1"],
    )
    wide = cv2.imread(str(tmp_path / "c" / "real" / "shake0.png"))
    assert wide.shape[1] > 4 * 160 and wide.shape[0] == grid.shape[0]
    page = (tmp_path / "c" / "index.html").read_text()
    assert f"blurred | unsharp mask | deblur-nafnet-v1 | model ({trained_checkpoint})" in page


def test_actors_score_and_the_driver_draws_the_real_photos_on_its_cpu(
    mcmaster_shards, trained_checkpoint, real_photo, tmp_path, ray_session
):
    """With Ray actors scoring, the driver (often a cluster's CPU head) needs no engine of theirs: it draws the
    real photos on its CPU in fp32, and the header names both engines (bf16 actors where this CPU has it)."""
    from deblur.models.common import cpu_has_native_bf16

    folder = tmp_path / "camera-shake"
    write_image(folder / "shake.jpg", real_photo[:96, :128])
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    result = evaluate(
        str(trained_checkpoint),
        str(tmp_path / "r"),
        data=mcmaster_shards,
        engine="torch",
        precision=precision,
        lpips=False,
        progress=False,
        limit=2,
        workers=1,
        gpus_per_worker=0,
        real=str(folder),
    )
    assert result["header"]["engine"] == f"torch (cpu, {precision})"
    assert result["header"]["real photos drawn by"] == "torch (cpu, fp32)"
    assert (tmp_path / "r" / "real" / "shake.png").is_file()


def test_realblur_protocol_undoes_a_shift_and_an_exposure_change(real_photo):
    sharp = real_photo
    shifted = np.roll(sharp, (2, -3), axis=(0, 1))
    darker = np.clip(shifted.astype(np.float32) * 0.9, 0, 255).astype(np.uint8)
    psnr_plain, _ = score(darker, sharp, "gopro")
    psnr_rb, ssim_rb = score(darker, sharp, "realblur")
    assert psnr_rb > psnr_plain + 10 and psnr_rb > 28 and ssim_rb > 0.98  # ECC lands within a fraction of a pixel
    assert score(np.clip(sharp * 0.9, 0, 255).astype(np.uint8), sharp, "realblur")[0] > 50  # exposure alone: undone
    _, _, mask, _ = realblur_align(darker / 255.0, sharp / 255.0)
    assert 0.9 < mask.mean() < 1.0  # the warped-in border is masked out


def test_shift_protocol_finds_the_offset_and_scores_gray_on_the_cropped_truth(real_photo):
    from deblur.evaluation.protocols import SHIFT_BORDER, best_shift, gray

    sharp = real_photo
    moved = np.roll(sharp, (7, -4), axis=(0, 1))  # a recorded kernel's off-centre blur moves the picture so
    dy, dx, o, t = best_shift(gray(moved), gray(sharp))
    assert (dy, dx) == (7, -4)
    h, w = sharp.shape[:2]
    assert t.shape == (h - 2 * SHIFT_BORDER, w - 2 * SHIFT_BORDER) == o.shape
    assert score(moved, sharp, "shift")[0] == 100.0  # exactly the truth, once aligned (capped, as reports show)
    assert score(moved, sharp, "gopro")[0] < 25
    # Gray: a colour-only change that keeps MATLAB's luma scores (nearly) perfectly; a real error does not.
    swapped = sharp.astype(np.float64)
    swapped[..., 0] += 10 * 0.5870 / 0.2989
    swapped[..., 1] -= 10
    swapped = np.clip(np.rint(swapped), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2)
    assert score(swapped, sharp, "shift")[0] > 40 > score(blurred, sharp, "shift")[0]
    # Beyond the window it cannot align: a shift of 14 px scores like the blurred image, not like the truth.
    assert score(np.roll(sharp, 14, axis=1), sharp, "shift")[0] < 30
    with pytest.raises(ValueError, match="too small"):
        score(sharp[:30, :30], sharp[:30, :30], "shift")


def test_ecc_recovers_a_subpixel_shift(real_photo):
    sharp = real_photo.astype(np.float32) / 255.0
    dy, dx = 0.3, -0.7
    shifted = cv2.warpAffine(
        sharp,
        np.float32([[1, 0, dx], [0, 1, dy]]),
        sharp.shape[1::-1],
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )
    _, _, _, warp = realblur_align(shifted, sharp)
    assert abs(warp[0, 2] - dx) < 0.05 and abs(warp[1, 2] - dy) < 0.05, warp
    shifted8 = np.clip(np.rint(shifted * 255), 0, 255).astype(np.uint8)
    before, after = score(shifted8, real_photo, "gopro")[0], score(shifted8, real_photo, "realblur")[0]
    assert after > before + 5


def test_training_curves_from_the_run(mcmaster_shards, trained_checkpoint, tmp_path):
    run = tmp_path / "run"
    (run / "epoch-0001").mkdir(parents=True)
    (run / "epoch-0001" / "checkpoint.pt").write_bytes(trained_checkpoint.read_bytes())
    (run / "best.json").write_text(json.dumps({"checkpoint": str(run / "epoch-0001")}))
    (run / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "epoch": e,
                    "loss_g": 0.1 / (e + 1),
                    "loss_l1": 0.08,
                    "val_psnr": 25 + e,
                    "val_ssim": 0.8,
                    "val_psnr_input": 25.0,
                    "val_ssim_input": 0.8,
                }
            )
            + "\n"
            for e in range(3)
        )
    )
    result = evaluate(
        str(run), str(tmp_path / "report"), data=mcmaster_shards, engine="torch", lpips=False, progress=False
    )
    assert "curves.png" in result["files"]
    assert cv2.imread(str(tmp_path / "report" / "curves.png")).shape[0] > 200


def test_ray_data_scoring_matches_local(mcmaster_shards, trained_checkpoint, tmp_path, ray_session):
    local = evaluate(
        str(trained_checkpoint), str(tmp_path / "a"), data=mcmaster_shards, engine="torch", lpips=False, progress=False
    )
    spread = evaluate(
        str(trained_checkpoint),
        str(tmp_path / "b"),
        data=mcmaster_shards,
        engine="torch",
        lpips=False,
        progress=False,
        workers=2,
        gpus_per_worker=0.5 if torch.cuda.is_available() else 0,  # where the local run is: the same numbers
    )
    assert [r["key"] for r in spread["images"]] == [r["key"] for r in local["images"]]
    for field in ("engine", "model hash"):  # the actors' own, reported by them (the driver loaded no engine)
        assert spread["header"][field] == local["header"][field]
    assert spread["header"]["actors"].startswith("2 Ray actors")
    assert "engine" not in spread["images"][0] and "model_hash" not in spread["images"][0]
    assert [r["output_psnr"] for r in spread["images"]] == pytest.approx(
        [r["output_psnr"] for r in local["images"]], abs=1e-6
    )


@pytest.mark.parametrize("case", ["bad checkpoint", "empty folder", "fp16 on CPU actors", "fp16, auto GPUs"])
def test_bad_inputs_are_one_line(case, mcmaster_shards, trained_checkpoint, tmp_path):
    if case == "bad checkpoint":
        bad = tmp_path / "model.pt"
        bad.write_bytes(b"garbage")
        args = ["--checkpoint", str(bad), "--data", mcmaster_shards]
    elif case.startswith("fp16"):  # actors given no GPU run on the CPU: refused before any model loads
        if case == "fp16, auto GPUs" and torch.cuda.is_available():
            pytest.skip("this machine has a GPU: fp16 runs")
        args = ["--checkpoint", str(trained_checkpoint), "--data", mcmaster_shards, "--workers", "1"]
        args += ["--precision", "fp16"] + (["--gpus-per-worker", "0"] if case == "fp16 on CPU actors" else [])
    else:
        (tmp_path / "blur").mkdir()
        (tmp_path / "sharp").mkdir()
        args = ["--checkpoint", str(trained_checkpoint), "--data", str(tmp_path)]
    res = subprocess.run(
        [sys.executable, "jobs/evaluate.py", *args, "--out", str(tmp_path / "r")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_ADDRESS": ""},  # a Ray of its own where one starts: this machine's GPUs
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    if case == "fp16 on CPU actors":
        assert "fp16 inference needs a GPU and the workers are given none: --gpus-per-worker 1" in res.stderr
    elif case == "fp16, auto GPUs":  # the default, resolved on the job's own Ray: no GPU here
        assert (
            "fp16 inference needs a GPU and this machine has none (--gpus-per-worker auto gave the workers none): "
            "join a Ray cluster with GPUs" in res.stderr
        )
    else:
        assert (
            ("model.pt" in res.stderr)
            if case == "bad checkpoint"
            else ("no" in res.stderr and str(tmp_path) in res.stderr)
        )
