"""Engines (torch, onnxruntime, tensorrt), full-resolution tiling, and the compile job."""

from __future__ import annotations

import json
import os
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


def version_of(compiled: Path) -> Path:
    """The folder compile.json names: where a compiled model's files are."""
    return compiled / json.loads((compiled / "compile.json").read_text())["version"]


def test_torch_engine_matches_the_model_at_any_size(trained_checkpoint, real_photo):
    engine = load_engine(str(trained_checkpoint), "torch", "cpu")  # the model's own numbers: fp32 on the CPU
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
    assert {p.name for p in compiled.iterdir()} == {"compile.json", summary["version"]}
    assert "model.onnx" in summary["files"] and set(summary["files"]) == {
        p.name for p in version_of(compiled).iterdir()
    }
    from deblur.models.reference import checkpoint_hash

    assert summary["model_hash"] == checkpoint_hash(str(trained_checkpoint))  # names what it was compiled from
    assert any("333x517" in k for k in summary["onnx"]["errors"])  # verified at an odd size too
    if tensorrt_status() is not None:
        assert summary["tensorrt"] == {"built": False, "reason": tensorrt_status()}


@pytest.mark.parametrize("source", ["compiled", "checkpoint"])
def test_onnxruntime_agrees_with_torch(source, compiled, trained_checkpoint, real_photo, tmp_path, monkeypatch):
    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path))  # the checkpoint path exports on the fly into the cache
    engine = load_engine(str(compiled if source == "compiled" else trained_checkpoint), "onnxruntime", "cpu", 2)
    reference = load_engine(str(trained_checkpoint), "torch", "cpu")
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
    engine = load_engine(str(path), "onnxruntime", "cpu", threads=2)
    assert Path(engine.info.source).parent.name == f"{model_hash}-v{EXPORT_VERSION}"
    assert [folder.exists() for folder in others] == [False, False, True, True]  # this checkpoint's older ones go
    ops = {node.op_type for node in onnx.load(engine.info.source, load_external_data=False).graph.node}
    assert {"Conv", "ReduceMean"} <= ops and not ops & {"LayerNormalization", "Split"}, ops
    reference = load_engine(str(path), "torch", "cpu")
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
    first = load_engine(str(trained_checkpoint), "onnxruntime", "cpu", threads=1)  # exports into the cache
    np.save(tmp_path / "photo.npy", real_photo[:96, :128])
    code = f"""
import sys, numpy as np
import deblur.bulk.job
from deblur.inference import load_engine
engine = load_engine({str(trained_checkpoint)!r}, "auto", "cpu", threads=1)  # a CPU actor's engine
np.save({str(tmp_path / "out.npy")!r}, engine.deblur_image(np.load({str(tmp_path / "photo.npy")!r})))
print(engine.info.backend, engine.info.multiple, engine.info.model_hash, "torch" in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    backend, multiple, model_hash, torch_imported = res.stdout.split()
    assert (backend, int(multiple), model_hash) == ("onnxruntime", first.info.multiple, first.info.model_hash)
    assert torch_imported == "False"
    assert np.array_equal(np.load(tmp_path / "out.npy"), first.deblur_image(real_photo[:96, :128]))


def test_actors_starting_together_export_a_checkpoint_once(trained_checkpoint, tmp_path):
    """A fresh node's actors all want the checkpoint's ONNX export at once: one makes it, the others wait and
    load that one (each process counts the exports it ran into a shared file)."""
    count = tmp_path / "exports"
    code = f"""
import deblur.inference.load as load
real = load._export
def counted(*args):
    with open({str(count)!r}, "a") as f:
        f.write("x")
    real(*args)
load._export = counted
print(load.load_engine({str(trained_checkpoint)!r}, "onnxruntime", "cpu", threads=1).info.source)
"""
    env = {**os.environ, "DEBLUR_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    sources = {p.communicate(timeout=600)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(sources) == 1, sources
    assert count.read_text() == "x"


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
    ort, ref = (
        OnnxEngine(tmp_path / "model.onnx", "cpu", 2, model.multiple),
        TorchEngine(model, device="cpu", threads=2),
    )
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
        if backend == "auto" and (version_of(moved) / "engine.plan").is_file():
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
    (version_of(folder) / PLAN).write_bytes(b"a plan")
    here = {"tensorrt_version": "10.8.0", "gpu_name": "NVIDIA A10G", "compute_capability": "8.6"}
    shapes = {"min_shape": [1, 3, 64, 64], "opt_shape": [1, 3, 720, 1280], "max_shape": [4, 3, 2160, 3840]}
    (version_of(folder) / META).write_text(json.dumps({"precision": "fp16", **here, **shapes}))
    summary = json.loads((folder / "compile.json").read_text())
    (folder / "compile.json").write_text(json.dumps(summary | {"files": summary["files"] + [PLAN, META]}))
    monkeypatch.setattr(load, "tensorrt_status", lambda: None)
    monkeypatch.setattr(load, "current_platform", lambda: here)
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
        message = f"its engine.plan was built for fp16, not {other}; rebuild it with deblur compile --precision {other}"
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


def test_a_plan_built_elsewhere_is_not_run_by_auto_and_named_for_tensorrt(compiled, tmp_path, monkeypatch, capsys):
    """A plan is tied to the TensorRT version and GPU architecture that built it (an A100's plan does not run
    on an A10G): `auto` checks engine.json first and falls back to ONNX Runtime with one warning line;
    `--engine tensorrt` says what to rebuild. Made to look like a GPU machine with TensorRT, as above."""
    import deblur.inference.load as load
    from deblur.inference.tensorrt_engine import META, PLAN

    folder = tmp_path / "a100-plan"
    shutil.copytree(compiled, folder)
    built = {"tensorrt_version": "10.8.0", "gpu_name": "NVIDIA A100", "compute_capability": "8.0"}
    shapes = {"min_shape": [1, 3, 64, 64], "opt_shape": [1, 3, 720, 1280], "max_shape": [4, 3, 2160, 3840]}
    (version_of(folder) / PLAN).write_bytes(b"a plan")
    (version_of(folder) / META).write_text(json.dumps({"precision": "fp16", **built, **shapes}))
    summary = json.loads((folder / "compile.json").read_text())
    (folder / "compile.json").write_text(json.dumps(summary | {"files": summary["files"] + [PLAN, META]}))
    monkeypatch.setattr(load, "tensorrt_status", lambda: None)
    monkeypatch.setattr(
        load, "current_platform", lambda: {**built, "gpu_name": "NVIDIA A10G", "compute_capability": "8.6"}
    )
    info = load_engine(str(folder), "auto").info
    assert (info.backend, Path(info.source).name) == ("onnxruntime", "model.onnx")
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and "NVIDIA A100 (compute capability 8.0)" in warning and "onnxruntime" in warning
    with pytest.raises(EngineError, match="rebuild the engine here with deblur compile"):
        load_engine(str(folder), "tensorrt")


def test_a_recompile_serves_one_whole_model_and_leaves_nothing_stale(
    trained_checkpoint, compiled, tmp_path, monkeypatch
):
    """Recompiling into a folder that held a TensorRT plan, on a machine without TensorRT, must not leave that
    plan to run under the new model's hash: every compile publishes a version folder of its own and switches
    compile.json to it last. A reader that took the previous compile.json still finds its files."""
    import deblur.inference.compile as compile_module
    from deblur.inference.compile import compile_checkpoint
    from deblur.inference.tensorrt_engine import META, PLAN

    monkeypatch.setattr(compile_module, "tensorrt_status", lambda: "TensorRT is not installed (here: made so)")
    out = tmp_path / "served"
    shutil.copytree(compiled, out)
    old = json.loads((out / "compile.json").read_text())
    (version_of(out) / PLAN).write_bytes(b"an older model's plan")
    (version_of(out) / META).write_text("{}")
    (out / "compile.json").write_text(json.dumps(old | {"files": old["files"] + [PLAN, META]}))
    (out / "model.onnx").write_bytes(b"left by the single-folder layout")
    (out / "v-0123456789ab-20260101T000000000000Z").mkdir()  # an older version than the previous one
    summary = compile_checkpoint(str(trained_checkpoint), str(out), progress=lambda m: None)
    assert summary["version"] != old["version"] and PLAN not in summary["files"]
    assert {p.name for p in out.iterdir()} == {"compile.json", summary["version"], old["version"]}
    assert (out / old["version"] / "model.onnx").is_file()  # the previous version, for readers mid-load
    info = load_engine(str(out), "auto", "cpu").info
    assert info.backend == "onnxruntime" and Path(info.source).parent.name == summary["version"]
    compile_checkpoint(str(trained_checkpoint), str(out), progress=lambda m: None)
    assert not (out / old["version"]).exists()  # two compiles later it is gone


def test_auto_picks_what_this_machine_has(compiled):
    engine = load_engine(str(compiled), "auto")
    expected = "tensorrt" if tensorrt_status() is None else "onnxruntime"
    assert engine.info.backend == expected


def test_a_batch_goes_to_the_backend_within_the_pixel_budget(trained_checkpoint, real_photo):
    """Serve hands an engine up to 8 same-size photos at once: no backend call may hold more pixels than the
    budget (a GPU sized for one 4 Mpx photo would run out of memory on eight); the output is the same."""
    engine = load_engine(str(trained_checkpoint), "torch", "cpu")
    x = np.concatenate([photo_batch(real_photo[k * 7 :], 96, 128) for k in range(5)])
    whole = engine.deblur_batch(x)
    calls = []
    infer = engine._infer
    engine._infer = lambda batch: calls.append(batch.shape) or infer(batch)
    engine.configure_tiling(max_pixels=2 * 128 * 128)  # two padded images a call (the model's stride is 128)
    parts = engine.deblur_batch(x)
    assert [c[0] for c in calls] == [2, 2, 1] and all(n * h * w <= 2 * 128 * 128 for n, _, h, w in calls)
    assert np.abs(parts - whole).max() < 1e-5


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
    """A compiled folder on S3: fetched once per machine, for the engine that needs it, named by the folder and
    its version; after recompiles the two newest copies stay (a reader of the one before keeps its files)."""
    import hashlib

    from deblur.inference.compile import compile_checkpoint

    uri = f"{bucket}/models/tiny"
    key = hashlib.sha256(uri.encode()).hexdigest()[:12]
    versions = [compile_checkpoint(str(trained_checkpoint), uri, progress=lambda m: None)["version"]]
    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path / "cache"))
    copies = tmp_path / "cache" / "compiled"

    def cached() -> list[str]:
        return sorted(p.name for p in copies.iterdir() if p.is_dir())

    assert load_engine(uri, "torch", "cpu").info.backend == "torch" and not copies.exists()  # fetched nothing
    engine = load_engine(uri, "onnxruntime", "cpu")
    assert cached() == [f"{key}-{versions[0]}"] and Path(engine.info.source).parent.name == f"{key}-{versions[0]}"
    stamp = (copies / f"{key}-{versions[0]}" / "model.onnx").stat().st_mtime_ns
    assert load_engine(uri, "onnxruntime", "cpu").info.source == engine.info.source
    assert (copies / f"{key}-{versions[0]}" / "model.onnx").stat().st_mtime_ns == stamp  # reused, not fetched again
    for _ in range(2):
        versions.append(compile_checkpoint(str(trained_checkpoint), uri, progress=lambda m: None)["version"])
        load_engine(uri, "onnxruntime", "cpu")
    assert cached() == sorted(f"{key}-{v}" for v in versions[1:])  # the oldest copy removed
    x = np.zeros((1, 3, 100, 90), np.float32)
    assert engine.deblur_batch(x).shape == x.shape


def test_a_folder_compiled_before_versions_still_loads(compiled, tmp_path, bucket, monkeypatch):
    """The single-folder layout (files beside compile.json, whose list names compile.json too), local and on S3;
    a plan left there by an earlier compile, not in the list, is never run."""
    from deblur.inference.tensorrt_engine import PLAN

    old = tmp_path / "old"
    old.mkdir()
    summary = json.loads((compiled / "compile.json").read_text())
    for name in summary["files"]:
        shutil.copy(version_of(compiled) / name, old / name)
    legacy = {k: v for k, v in summary.items() if k != "version"} | {"files": summary["files"] + ["compile.json"]}
    (old / "compile.json").write_text(json.dumps(legacy))
    (old / PLAN).write_bytes(b"a plan an earlier compile left")
    info = load_engine(str(old), "auto", "cpu").info
    assert (info.backend, Path(info.source).parent) == ("onnxruntime", old)
    from deblur import storage

    for path in old.iterdir():
        storage.write_bytes(f"{bucket}/old/{path.name}", path.read_bytes())
    monkeypatch.setenv("DEBLUR_CACHE", str(tmp_path / "cache"))
    assert load_engine(f"{bucket}/old", "onnxruntime", "cpu").info.model_hash == summary["model_hash"]


def test_onnxruntime_on_cuda_asks_cudnn_for_heuristics_not_an_exhaustive_search():
    from deblur.inference.onnx_engine import ort_providers

    cuda, cpu = ort_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}) and cpu == "CPUExecutionProvider"
    assert ort_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        ort_providers("cuda", ["CPUExecutionProvider"])


def test_broken_onnx_files_are_named(compiled, tmp_path):
    from deblur.inference.onnx_engine import OnnxEngine

    truncated = tmp_path / "truncated"
    shutil.copytree(compiled, truncated)
    data = (version_of(truncated) / "model.onnx").read_bytes()
    (version_of(truncated) / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(EngineError, match="model.onnx"):
        load_engine(str(truncated), "onnxruntime")
    assert (version_of(compiled) / "model.onnx.data").exists()  # the exporter keeps weights beside the graph
    orphan = tmp_path / "orphan"
    shutil.copytree(compiled, orphan)
    (version_of(orphan) / "model.onnx.data").unlink()
    with pytest.raises(EngineError, match=r"model\.onnx\.data is missing"):
        OnnxEngine(version_of(orphan) / "model.onnx")
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
    meta = json.loads((version_of(out) / "engine.json").read_text())
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
