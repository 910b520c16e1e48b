"""On a GPU, every engine's numbers against the fp32 reference, on a real photo; bulk actors and Serve replicas on
the device they claim.

Skipped where CUDA is not visible (this suite's CI has none); `make test-gpu` runs them, with TensorRT where
NVIDIA's wheels install. Tolerances: fp16/bf16 outputs within 40 dB PSNR of the fp32 CPU reference (a few 8-bit
levels at most), ONNX Runtime's CUDA fp32 within 1 level everywhere but rounding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deblur import metrics
from deblur.inference import load_engine
from deblur.inference.load import cuda_available
from deblur.inference.tensorrt_engine import tensorrt_status
from deblur.models.shipped import NETWORK  # the engines under test run the network (the default route wraps it)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU visible")]


@pytest.fixture(scope="module")
def reference(real_photo):
    photo = np.ascontiguousarray(real_photo[:320, :480])
    return photo, load_engine(NETWORK, "torch", "cpu").deblur_image(photo)


def _precisions() -> list[str]:
    from deblur.models.common import cuda_has_native_bf16

    return ["fp32", "fp16"] + (["bf16"] if cuda_available() and cuda_has_native_bf16() else [])


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_on_the_gpu_matches_the_fp32_reference(reference, precision):
    if precision not in _precisions():
        pytest.skip("this GPU has no bf16 in hardware (compute capability < 8.0)")
    photo, expected = reference
    engine = load_engine(NETWORK, "torch", "cuda", precision=precision)
    assert engine.info.device.startswith("cuda")
    out = engine.deblur_image(photo)
    assert metrics.psnr(out, expected) > (45 if precision == "fp32" else 40), precision
    assert metrics.psnr(out, photo) < metrics.psnr(expected, photo) + 1  # it deblurred, as the reference did


def test_onnxruntime_cuda_matches_the_fp32_reference(reference, tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path))  # the shipped model's export, not into the user's cache
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (onnxruntime-gpu)")
    photo, expected = reference
    engine = load_engine(NETWORK, "onnxruntime", "cuda")
    assert engine.info.device == "cuda"
    assert engine.info.extra["providers"][0] == "CUDAExecutionProvider"
    assert np.abs(engine.deblur_image(photo).astype(int) - expected).max() <= 2


@pytest.mark.skipif(tensorrt_status() is not None, reason=f"TensorRT cannot run here: {tensorrt_status()}")
def test_tensorrt_fp16_of_the_shipped_model_matches_the_fp32_reference(reference, tmp_path):
    from deblur.inference.compile import compile_checkpoint

    photo, expected = reference
    summary = compile_checkpoint("default", str(tmp_path / "trt"), "fp16", (64, 64), (320, 480), (1088, 1920))
    assert summary["tensorrt"]["built"], summary["tensorrt"]
    engine = load_engine(str(tmp_path / "trt"), "auto")
    assert engine.info.backend == "tensorrt"
    assert metrics.psnr(engine.deblur_image(photo), expected) > 40


def test_bulk_actors_run_on_the_gpu_they_are_given(reference, tmp_path, ray_session):
    from deblur.bulk import Options, deblur_archive
    from deblur.images import read_image

    from conftest import write_image

    photo, expected = reference
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        write_image(src / f"p{k}.png", photo)
    summary = deblur_archive(
        str(src), str(tmp_path / "out"), Options(engine="torch"), workers=1, gpus_per_worker=1, progress=False
    )
    assert summary["done"] == 2 and summary["engines"] and all("cuda" in e for e in summary["engines"]), summary
    assert metrics.psnr(read_image(str(tmp_path / "out" / "p0.png")), expected) > 45
    assert json.loads((tmp_path / "out" / "_summary.json").read_text())["gpus_per_worker"] == 1


def test_a_serve_replica_given_a_gpu_runs_there_and_matches(reference, ray_session):
    import io

    import requests
    from PIL import Image
    from ray import serve

    from deblur.serve.app import build_app, start

    from conftest import free_port

    photo, expected = reference
    port = free_port()
    start("127.0.0.1", port, 120)
    serve.run(build_app({"engine": "torch", "num_gpus": 1, "max_replicas": 1}), name="gpu", route_prefix="/gpu")
    try:
        info = requests.get(f"http://127.0.0.1:{port}/gpu/v1/model", timeout=60).json()
        assert info["device"].startswith("cuda"), info
        body = io.BytesIO()
        Image.fromarray(photo).save(body, format="PNG")
        res = requests.post(
            f"http://127.0.0.1:{port}/gpu/v1/deblur",
            data=body.getvalue(),
            headers={"Content-Type": "image/png"},
            timeout=300,
        )
        assert res.status_code == 200
        assert metrics.psnr(np.asarray(Image.open(io.BytesIO(res.content)).convert("RGB")), expected) > 45
    finally:
        serve.delete("gpu")
