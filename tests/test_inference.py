"""Engines (torch, onnxruntime, tensorrt), full-resolution tiling, and the compile job."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deblur.inference import EngineError, load_engine
from deblur.inference.tensorrt_engine import check_engine_metadata, tensorrt_status
from deblur.models import load_generator

from conftest import ROOT

SIZES = [(64, 64), (333, 517), (720, 1280)]


def photo_batch(photo: np.ndarray, h: int, w: int) -> np.ndarray:
    reps = (-(-h // photo.shape[0]), -(-w // photo.shape[1]), 1)
    img = np.tile(photo, reps)[:h, :w]
    return img.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def compiled(trained_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    res = subprocess.run(
        [sys.executable, "jobs/compile.py", "--checkpoint", str(trained_checkpoint), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "max |onnxruntime - torch|" in res.stdout
    return out


def test_torch_engine_matches_the_model_at_any_size(trained_checkpoint, real_photo):
    engine = load_engine(str(trained_checkpoint), "torch")
    model = load_generator(str(trained_checkpoint))
    assert engine.info.backend == "torch" and engine.info.multiple == 128 and len(engine.info.model_hash) == 16
    for h, w in SIZES:
        x = photo_batch(real_photo, h, w)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        out = engine.deblur_batch(x)
        assert out.shape == x.shape
        assert np.abs(out - expected).max() < 1e-5, (h, w)
    assert np.abs(out - x).mean() > 1e-3, "the trained model should change the image"


def test_compile_job_writes_a_verified_onnx_folder(compiled, trained_checkpoint):
    summary = json.loads((compiled / "compile.json").read_text())
    assert {"model.onnx", "compile.json"} <= set(summary["files"]) <= {p.name for p in compiled.iterdir()}
    from deblur.models.reference import checkpoint_hash

    assert summary["model_hash"] == checkpoint_hash(str(trained_checkpoint))  # names what it was compiled from
    assert any("333x517" in k for k in summary["onnx"]["errors"])  # verified at an odd size too
    if tensorrt_status() is not None:
        assert summary["tensorrt"] == {"built": False, "reason": tensorrt_status()}


@pytest.mark.parametrize("source", ["compiled", "checkpoint"])
def test_onnxruntime_agrees_with_torch(source, compiled, trained_checkpoint, real_photo, tmp_path, monkeypatch):
    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path))  # the checkpoint path exports on the fly into the cache
    engine = load_engine(str(compiled if source == "compiled" else trained_checkpoint), "onnxruntime", threads=2)
    reference = load_engine(str(trained_checkpoint), "torch")
    assert engine.info.backend == "onnxruntime" and engine.info.model_hash == reference.info.model_hash
    for h, w in SIZES:
        x = photo_batch(real_photo, h, w)
        assert np.abs(engine.deblur_batch(x) - reference.deblur_batch(x)).max() <= 1e-4, (h, w)


def test_a_nafnet_checkpoint_runs_on_onnx_runtime_through_its_faster_graph(real_photo, tmp_path, monkeypatch):
    """The shipped model's path: a NAFNet checkpoint exported on the fly (through `for_inference`: no
    LayerNormalization, no Split) into a cache folder named by its hash and EXPORT_VERSION, agreeing with
    torch."""
    import onnx
    from test_models import SMALL

    from deblur.inference.onnx_engine import EXPORT_VERSION
    from deblur.models import build_generator, generator_checkpoint
    from deblur.models.reference import checkpoint_hash

    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    g = build_generator("nafnet", **SMALL["nafnet"])
    for p in g.parameters():  # NAFNet starts as the identity; give it weights that do something
        torch.nn.init.normal_(p, mean=0.5 if p.ndim == 1 else 0.0, std=0.05)
    path = tmp_path / "nafnet.pt"
    torch.save(generator_checkpoint(g, "nafnet", SMALL["nafnet"]), path)
    model_hash = checkpoint_hash(str(path))
    names = (model_hash, f"{model_hash}-v1", f"{model_hash}-v{EXPORT_VERSION + 1}", "0123456789abcdef-v1")
    others = [tmp_path / "cache" / "onnx" / name for name in names]
    for folder in others:  # this checkpoint's exports by older and newer code, and another checkpoint's
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"other")
    engine = load_engine(str(path), "onnxruntime", threads=2)
    assert Path(engine.info.source).parent.name == f"{model_hash}-v{EXPORT_VERSION}"
    assert [folder.exists() for folder in others] == [False, False, True, True]  # this checkpoint's older ones go
    ops = {node.op_type for node in onnx.load(engine.info.source, load_external_data=False).graph.node}
    assert {"Conv", "ReduceMean"} <= ops and not ops & {"LayerNormalization", "Split"}, ops
    reference = load_engine(str(path), "torch")
    x = photo_batch(real_photo, 75, 130)
    expected = reference.deblur_batch(x)
    assert np.abs(expected - x).mean() > 1e-3  # the model changes the image
    assert np.abs(engine.deblur_batch(x) - expected).max() <= 1e-4


def test_a_tensorrt_engine_whose_output_is_nan_is_refused():
    """The compile job keeps a reduced-precision engine only within its tolerance of ONNX Runtime; NaN
    (an fp16 overflow) compares as neither above nor below it and must count as failing."""
    from deblur.inference.compile import _verify_tensorrt
    from deblur.inference.engine import Engine, EngineInfo

    class Constant(Engine):  # an engine of this interface that answers one value everywhere
        def __init__(self, value: float):
            self.value, self.info = value, EngineInfo("test", "cpu", "fp32", 1, "constant")

        def _infer(self, batch: np.ndarray) -> np.ndarray:
            return np.full_like(batch, self.value)

    inputs = {"flat": np.zeros((1, 3, 8, 8), np.float32)}
    assert _verify_tensorrt(Constant(0.1), Constant(0.1), inputs, "fp16")["built"]
    with pytest.raises(EngineError, match="differs from ONNX Runtime"):
        _verify_tensorrt(Constant(0.1), Constant(np.nan), inputs, "fp16")


def test_a_cached_export_runs_in_a_process_that_never_imports_torch(
    trained_checkpoint, real_photo, tmp_path, monkeypatch
):
    """What each bulk/video actor does: once a checkpoint's ONNX export is cached, importing the job and
    loading its engine ("auto" too, on a machine without CUDA) leave torch unimported (~1.6 s per actor)."""
    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path))
    first = load_engine(str(trained_checkpoint), "onnxruntime", threads=1)  # exports into the cache
    np.save(tmp_path / "photo.npy", real_photo[:96, :128])
    code = f"""
import sys, numpy as np
import deblur.bulk.job
from deblur.inference import load_engine
from deblur.inference.load import cuda_available
engine = load_engine({str(trained_checkpoint)!r}, "auto" if not cuda_available() else "onnxruntime", threads=1)
np.save({str(tmp_path / "out.npy")!r}, engine.deblur_image(np.load({str(tmp_path / "photo.npy")!r})))
print(engine.info.backend, engine.info.multiple, engine.info.model_hash, "torch" in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    backend, multiple, model_hash, torch_imported = res.stdout.split()
    assert (backend, int(multiple), model_hash) == ("onnxruntime", first.info.multiple, first.info.model_hash)
    assert torch_imported == "False"
    assert np.array_equal(np.load(tmp_path / "out.npy"), first.deblur_image(real_photo[:96, :128]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet_fpn", "resnet", "fpn_mobilenet", "nafnet"])
def test_every_generator_exports_to_onnx_with_dynamic_batch_and_size(name, real_photo, tmp_path):
    from deblur.inference.compile import FP32_TOLERANCE
    from deblur.inference.onnx_engine import OnnxEngine, export_onnx
    from deblur.inference.torch_engine import TorchEngine
    from deblur.models import GENERATORS

    assert name in GENERATORS
    model = small_generator(name)
    export_onnx(model, tmp_path / "model.onnx", model.multiple)
    ort, ref = OnnxEngine(tmp_path / "model.onnx", "cpu", 2, model.multiple), TorchEngine(model, threads=2)
    for n, h, w in ((1, 96, 160), (2, 75, 130)):
        x = np.concatenate([photo_batch(real_photo[k * 10 :], h, w) for k in range(n)])
        expected = ref.deblur_batch(x)
        assert np.abs(expected - x).mean() > 1e-3  # the model changes the image
        assert np.abs(ort.deblur_batch(x) - expected).max() <= FP32_TOLERANCE, (name, n, h, w)


def small_generator(name: str) -> torch.nn.Module:
    """test_models' small configuration of a generator, its zero-initialised output layers given weights
    (else every model would be the identity)."""
    from test_models import SMALL

    from deblur.models import build_generator

    torch.manual_seed(0)
    model = build_generator(name, **SMALL[name]).eval()
    for p in model.parameters():
        if p.ndim == 4 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.01)
    return model


@pytest.mark.parametrize("name", ["unet_fpn", "resnet", "nafnet"])
def test_bf16_on_a_cpu_runs_a_bf16_copy_of_the_weights_where_the_cpu_computes_bf16(name, real_photo):
    from deblur.inference.engine import REDUCED_TOLERANCE
    from deblur.inference.torch_engine import TorchEngine
    from deblur.models.common import cpu_has_native_bf16

    model = small_generator(name)
    with pytest.raises(EngineError, match="needs a GPU"):
        TorchEngine(model, device="cpu", precision="fp16")
    if not cpu_has_native_bf16():  # torch would emulate bf16: slower than fp32, so refused
        with pytest.raises(EngineError, match="AMX or AVX512-BF16"):
            TorchEngine(model, device="cpu", precision="bf16")
        return
    fp32, bf16 = (
        TorchEngine(model, device="cpu", threads=2),
        TorchEngine(model, device="cpu", precision="bf16", threads=2),
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the caller's model is untouched
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert (bf16.info.backend, bf16.info.precision) == ("torch", "bf16")
    assert 0 < bf16.info.extra["mean_error_vs_fp32"] <= REDUCED_TOLERANCE["bf16"]
    x = photo_batch(real_photo, 75, 130)
    expected, got = fp32.deblur_batch(x), bf16.deblur_batch(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    error = np.abs(got - expected)
    # really bf16, and within the bar the engine holds itself to (on this photo too, not only its probe)
    assert 0 < error.mean() <= REDUCED_TOLERANCE["bf16"], (name, error.mean())


class Cancelling(torch.nn.Module):
    """x + 300 − 300: exact in fp32, but bf16 has steps of 2 between 256 and 512, so every pixel snaps to −2, 0
    or 2 (a model whose layers amplify rounding, in one line)."""

    multiple = 1

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(300.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + self.offset) - self.offset).clamp(-1, 1)


def test_a_model_that_bf16_would_change_is_refused_in_bf16():
    from deblur.inference.torch_engine import TorchEngine
    from deblur.models.common import cpu_has_native_bf16

    reason = "changes its output by" if cpu_has_native_bf16() else "AMX or AVX512-BF16"
    with pytest.raises(EngineError, match=reason):
        TorchEngine(Cancelling(), "cancelling.pt", device="cpu", precision="bf16")
    assert TorchEngine(Cancelling(), device="cpu").deblur_batch(np.full((1, 3, 8, 8), 0.3, np.float32)).min() > 0.29


def test_a_precision_picks_the_engine_that_computes_it(compiled, trained_checkpoint, tmp_path):
    from deblur.inference import check_engine_here, check_engine_request
    from deblur.models.common import cpu_has_native_bf16

    checkpoint = str(trained_checkpoint)
    with pytest.raises(EngineError, match="ONNX Runtime runs the fp32 graph; for bf16 use the torch engine"):
        load_engine(checkpoint, "onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        load_engine(checkpoint, precision="fp8")
    for ref in (checkpoint, str(compiled)):  # a compiled folder's torch engine is its source checkpoint's
        if torch.cuda.is_available() or cpu_has_native_bf16():
            engine = load_engine(ref, precision="bf16")
            # jobs/compile.py builds its plans for fp16 by default: bf16 is torch's, as everywhere else
            assert (engine.info.backend, engine.info.precision) == ("torch", "bf16")
            assert engine.info.model_hash == load_engine(ref).info.model_hash
        else:
            with pytest.raises(EngineError, match="AMX"):
                load_engine(ref, precision="bf16")
    # what a job's driver checks before Ray starts: no model loaded, no hardware asked
    check_engine_request(checkpoint, "torch", "bf16")
    check_engine_request(str(compiled), "auto", "fp16")
    with pytest.raises(EngineError, match="nope.pt: checkpoint not found"):
        check_engine_request(str(trained_checkpoint.parent / "nope.pt"))
    with pytest.raises(EngineError, match="ONNX Runtime runs the fp32 graph"):
        check_engine_request(checkpoint, "onnxruntime", "fp16")
    with pytest.raises(EngineError, match="a checkpoint has no TensorRT engine"):
        check_engine_request(checkpoint, "tensorrt")
    # a job that gives its workers no GPU runs them on CPUs (Ray hides the machine's GPUs from them)
    check_engine_request(checkpoint, "torch", "fp16", gpus=1)
    with pytest.raises(EngineError, match="fp16 inference needs a GPU and the workers are given none"):
        check_engine_request(checkpoint, "torch", "fp16", gpus=0)
    with pytest.raises(EngineError, match="TensorRT needs a GPU and the workers are given none"):
        check_engine_request(str(compiled), "tensorrt", gpus=0)
    # and where the workers are this machine (a Ray the job started), its hardware answers too
    check_engine_here("auto", "fp32", 0)
    with pytest.raises(EngineError, match="fp16 inference needs a GPU"):
        check_engine_here("torch", "fp16", 0)
    if cpu_has_native_bf16():
        check_engine_here("torch", "bf16", 0)
    else:
        with pytest.raises(EngineError, match="AMX"):
            check_engine_here("torch", "bf16", 0)
    if tensorrt_status() is not None:
        with pytest.raises(EngineError, match=re.escape(tensorrt_status()[:20])):
            check_engine_here("tensorrt", "fp32", 1)
    # a compiled folder from elsewhere: fine for ONNX Runtime, but its torch engine needs the checkpoint it names
    moved = tmp_path / "moved"
    shutil.copytree(compiled, moved)
    summary = json.loads((moved / "compile.json").read_text())
    (moved / "compile.json").write_text(json.dumps(summary | {"checkpoint": "/elsewhere/best.pt"}))
    check_engine_request(str(moved), "onnxruntime")
    for backend, precision in (("torch", "fp32"), ("auto", "bf16")):
        if backend == "auto" and (moved / "engine.plan").is_file():
            continue  # the actors may run its TensorRT plan
        with pytest.raises(EngineError, match="/elsewhere/best.pt: checkpoint not found"):
            check_engine_request(str(moved), backend, precision)
    (moved / "compile.json").write_text("{not json")
    with pytest.raises(EngineError, match="compile.json: unreadable"):
        check_engine_request(str(moved))


def test_an_engine_asked_for_the_cpu_stays_there_on_a_gpu_machine(compiled, trained_checkpoint, tmp_path, monkeypatch):
    """A Ray actor given no GPU asks for the CPU (`deblur.ray_env.worker_device`: Ray 2.60 no longer hides the
    GPUs from it). On a machine made to look like a GPU one with TensorRT (CUDA answers yes, TensorRT is usable,
    the compiled folder has a plan), `auto` still picks ONNX Runtime on the CPU: never torch on CUDA, never the
    plan; an explicit TensorRT is refused."""
    import deblur.inference.load as load
    from deblur.inference.tensorrt_engine import PLAN

    monkeypatch.setattr(load, "cuda_available", lambda: True)
    monkeypatch.setattr(load, "tensorrt_status", lambda: None)
    folder = tmp_path / "compiled"
    shutil.copytree(compiled, folder)
    (folder / PLAN).write_bytes(b"not a plan: loading it would fail")
    for ref in (str(folder), str(trained_checkpoint)):
        info = load_engine(ref, device="cpu").info
        assert (info.backend, info.device) == ("onnxruntime", "cpu"), ref
    with pytest.raises(EngineError, match="TensorRT needs a GPU, and this engine was asked to run on the CPU"):
        load_engine(str(folder), "tensorrt", device="cpu")


def test_a_tensorrt_plan_runs_only_the_precision_it_was_built_for(compiled, tmp_path, monkeypatch):
    """A plan's precision is fixed when TensorRT builds it. No precision (the default) runs it as built; a
    precision named that is not the plan's, fp32 included, is refused for `--engine tensorrt` (in the driver's
    check too) and sends `auto` to an engine that computes it: fp32 never runs an fp16 plan. Made to look like
    a GPU machine with TensorRT (the plan itself is never opened: TensorRTEngine is replaced by a recorder)."""
    import deblur.inference.load as load
    from deblur.inference import check_engine_request
    from deblur.inference.tensorrt_engine import META, PLAN

    folder = tmp_path / "fp16-plan"
    shutil.copytree(compiled, folder)
    (folder / PLAN).write_bytes(b"a plan")
    (folder / META).write_text(json.dumps({"precision": "fp16"}))
    monkeypatch.setattr(load, "tensorrt_status", lambda: None)
    from deblur.inference.engine import Engine, EngineInfo

    class Plan(Engine):  # what loading the plan would give, without TensorRT
        def __init__(self, plan, multiple, model_hash):
            self.info = EngineInfo("tensorrt", "gpu", "fp16", multiple, str(plan), model_hash)

        def _infer(self, batch):
            return batch

    monkeypatch.setattr(load, "TensorRTEngine", Plan)
    for backend, precision in (("tensorrt", "fp16"), ("tensorrt", None), ("auto", "fp16"), ("auto", None)):
        check_engine_request(str(folder), backend, precision, gpus=1)
        info = load_engine(str(folder), backend, precision=precision).info
        assert (info.backend, Path(info.source).name) == ("tensorrt", PLAN), (backend, precision)
    for other in ("bf16", "fp32"):
        message = (
            f"its engine.plan was built for fp16, not {other}; rebuild it with jobs/compile.py --precision {other}"
        )
        with pytest.raises(EngineError, match=message + ", or leave --precision out to run it as built"):
            check_engine_request(str(folder), "tensorrt", other, gpus=1)
        with pytest.raises(EngineError, match=message):
            load_engine(str(folder), "tensorrt", precision=other)
    check_engine_request(str(folder), "auto", "fp32", gpus=1)  # ONNX Runtime computes it, from the folder's graph
    info = load_engine(str(folder), "auto", precision="fp32").info
    assert (info.backend, info.precision, Path(info.source).name) == ("onnxruntime", "fp32", "model.onnx")
    check_engine_request(str(folder), "auto", "bf16", gpus=1)  # torch computes it, from the source checkpoint
    monkeypatch.setattr(load, "_checkpoint_engine", lambda uri, backend, *_: (backend, Path(uri).name))
    assert load_engine(str(folder), "auto", precision="bf16") == ("torch", "checkpoint.pt")


def test_auto_picks_what_this_machine_has(compiled):
    engine = load_engine(str(compiled), "auto")
    expected = "tensorrt" if tensorrt_status() is None else "onnxruntime"
    assert engine.info.backend == expected


def test_tiled_output_matches_the_whole_image(trained_checkpoint, real_photo):
    engine = load_engine(str(trained_checkpoint), "torch")
    x = photo_batch(real_photo, 720, 1280)
    whole = engine.deblur_batch(x)
    engine.configure_tiling(max_pixels=512 * 512, tile=384, overlap=96)
    tiled = engine.deblur_batch(x)
    assert np.abs(tiled - whole).mean() < 1e-3
    assert np.abs(tiled - x).mean() > 1e-3  # tiles were really deblurred, not passed through


def test_deblur_image_keeps_size_and_dtype(trained_checkpoint, real_photo):
    engine = load_engine(str(trained_checkpoint), "torch")
    odd = real_photo[:131, :97]
    outs = engine.deblur_images([odd, real_photo, odd])
    assert [o.shape for o in outs] == [odd.shape, real_photo.shape, odd.shape]
    assert all(o.dtype == np.uint8 for o in outs)
    assert np.array_equal(outs[0], outs[2])
    with pytest.raises(ValueError, match="uint8"):
        engine.deblur_image(odd.astype(np.float32))


def test_compile_to_s3_and_load_from_it(trained_checkpoint, bucket, tmp_path, monkeypatch):
    from deblur.inference.compile import compile_checkpoint

    summary = compile_checkpoint(str(trained_checkpoint), f"{bucket}/models/tiny", progress=lambda m: None)
    engine = load_engine(f"{bucket}/models/tiny", "onnxruntime")
    assert engine.info.model_hash == summary["model_hash"]
    x = np.zeros((1, 3, 100, 90), np.float32)
    assert engine.deblur_batch(x).shape == x.shape


def test_broken_onnx_files_are_named(compiled, tmp_path):
    from deblur.inference.onnx_engine import OnnxEngine

    truncated = tmp_path / "truncated"
    shutil.copytree(compiled, truncated)
    data = (truncated / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(EngineError, match="model.onnx"):
        load_engine(str(truncated), "onnxruntime")
    assert (compiled / "model.onnx.data").exists()  # the exporter keeps weights beside the graph
    orphan = tmp_path / "orphan"
    shutil.copytree(compiled, orphan)
    (orphan / "model.onnx.data").unlink()
    with pytest.raises(EngineError, match=r"model\.onnx\.data is missing"):
        OnnxEngine(orphan / "model.onnx")
    with pytest.raises(EngineError, match="not found"):
        OnnxEngine(tmp_path / "nothing.onnx")


def test_checkpoint_problems_are_engine_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(EngineError, match="bad.pt"):
        load_engine(str(bad), "torch")
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine(str(bad), "tensorflow")


def test_engine_metadata_mismatch_says_rebuild(tmp_path):
    meta = {
        "tensorrt_version": "10.3.0",
        "gpu_name": "NVIDIA A10G",
        "compute_capability": "8.6",
        "precision": "fp16",
        "min_shape": [1, 3, 128, 128],
        "opt_shape": [1, 3, 768, 1280],
        "max_shape": [4, 3, 2176, 3840],
    }
    here = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    with pytest.raises(EngineError, match=r"built for NVIDIA A10G .*8\.6.*H100.*rebuild"):
        check_engine_metadata(meta, here, "engine.plan")
    with pytest.raises(EngineError, match=r"TensorRT 10\.3\.0, this machine has 10\.8\.0"):
        check_engine_metadata(meta, {**here, "compute_capability": "8.6", "tensorrt_version": "10.8.0"}, "engine.plan")
    with pytest.raises(EngineError, match="lacks"):
        check_engine_metadata({"precision": "fp16"}, here, "engine.plan")
    check_engine_metadata(meta, {**here, "compute_capability": "8.6"}, "engine.plan")  # same platform: accepted

    from deblur.inference.tensorrt_engine import TensorRTEngine

    (tmp_path / "engine.plan").write_bytes(b"\0" * 64)
    with pytest.raises(EngineError, match="engine.json is missing"):
        TensorRTEngine(tmp_path / "engine.plan")


@pytest.mark.gpu
@pytest.mark.skipif(tensorrt_status() is not None, reason=f"TensorRT cannot run here: {tensorrt_status()}")
def test_tensorrt_engine_agrees_with_onnxruntime(trained_checkpoint, real_photo, tmp_path):
    from deblur.inference.compile import compile_checkpoint

    out = tmp_path / "trt"
    summary = compile_checkpoint(str(trained_checkpoint), str(out), "fp16", (64, 64), (720, 1280), (1080, 1920))
    assert summary["tensorrt"]["built"]
    meta = json.loads((out / "engine.json").read_text())
    assert meta["precision"] == "fp16" and meta["model_hash"] == summary["model_hash"]
    trt_engine = load_engine(str(out), "tensorrt")
    ort_engine = load_engine(str(out), "onnxruntime")
    for h, w in SIZES:
        x = photo_batch(real_photo, h, w)
        assert np.abs(trt_engine.deblur_batch(x) - ort_engine.deblur_batch(x)).mean() <= 5e-3, (h, w)


class _ProfileEngine:
    """The TensorRT engine's size rules without TensorRT: the max_hw bound, the profile's tile, a recorder."""

    @staticmethod
    def make(max_hw, multiple, tile=1024):
        from deblur.inference.engine import Engine, EngineInfo
        from deblur.inference.tensorrt_engine import profile_tile

        class Recorder(Engine):
            def __init__(self):
                self.info = EngineInfo("fake-tensorrt", "cpu", "fp32", multiple, "test")
                self.max_pixels, self.max_hw = max_hw[0] * max_hw[1], max_hw
                self.tile, self.overlap = profile_tile(max_hw, multiple, tile), 32
                self.shapes = []

            def _infer(self, batch):
                assert batch.shape[2] <= max_hw[0] and batch.shape[3] <= max_hw[1], batch.shape
                self.shapes.append(batch.shape)
                return batch

        return Recorder()


def test_frames_beyond_a_profile_side_are_tiled_even_under_its_pixel_budget():
    engine = _ProfileEngine.make((2160, 3840), 128)
    portrait = np.random.default_rng(0).uniform(-1, 1, (1, 3, 2560, 1440)).astype(np.float32)  # 3.7 Mpx < 8.3 Mpx
    assert not engine.fits(2560, 1440) and engine.fits(1440, 2560) and not engine.fits(2100, 3800 + 100)
    out = engine.deblur_batch(portrait)
    assert np.allclose(out, portrait, atol=1e-5) and len(engine.shapes) > 1  # tiled, every tile within the profile
    engine.shapes.clear()
    engine.deblur_batch(portrait[:, :, :1440, :1440])
    assert len(engine.shapes) == 1  # within both sides: one call
    # a size that pads past the profile (2100 → 2176 > 2160 with a 128 stride) is tiled too
    assert not engine.fits(2100, 1000)
    from deblur.inference.engine import EngineError
    from deblur.inference.tensorrt_engine import profile_tile

    assert profile_tile((2160, 3840), 128, 1024) == 1024 and profile_tile((700, 3840), 128, 1024) == 640
    with pytest.raises(EngineError):
        profile_tile((100, 100), 128, 1024)
