"""Inference: one `Engine` interface over torch, ONNX Runtime and TensorRT, at any image size.

`load_engine(model_uri, backend="auto")` takes a checkpoint (file, Ray checkpoint directory, run
directory with best.json; local or s3://) or a compiled directory (`compile.json` + `model.onnx`
[+ `engine.plan`]) and returns the fastest engine this machine can run:
tensorrt > onnxruntime-cuda > torch-cuda > onnxruntime-cpu (> torch-cpu when only a checkpoint is given).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .. import storage
from .engine import Engine, EngineError, EngineInfo, cpu_threads
from .tiling import run_tiled

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
COMPILE_FILE, ONNX_FILE = "compile.json", "model.onnx"


def _local_copy(uri: str, names: list[str]) -> Path:
    """Compiled files on s3:// are fetched to a temporary folder (ONNX Runtime and TensorRT read files)."""
    if not storage.is_remote(uri):
        return Path(uri)
    folder = Path(tempfile.mkdtemp(prefix="deblur-model-"))
    for name in names:
        src = storage.join(uri, name)
        if storage.exists(src):
            (folder / name).write_bytes(storage.read_bytes(src))
    return folder


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def load_engine(model_uri: str, backend: str = "auto", device: str | None = None, threads: int | None = None,
                precision: str = "fp32") -> Engine:
    """The engine for a checkpoint or a compiled directory; a clear EngineError when it cannot be had."""
    from ..models.checkpoint import CheckpointError, checkpoint_hash, load_generator
    from .onnx_engine import OnnxEngine
    from .tensorrt_engine import PLAN, META, TensorRTEngine, tensorrt_status

    if backend not in BACKENDS:
        raise ValueError(f"unknown engine {backend!r}; choose one of {BACKENDS}")
    model_uri = str(model_uri)
    compiled = storage.exists(storage.join(model_uri, COMPILE_FILE))
    if compiled:
        summary = json.loads(storage.read_text(storage.join(model_uri, COMPILE_FILE)))
        local = _local_copy(model_uri, [COMPILE_FILE, ONNX_FILE, ONNX_FILE + ".data", PLAN, META])
        multiple, model_hash = int(summary["multiple"]), summary.get("model_hash", "")
        has_plan = (local / PLAN).is_file()
        if backend == "auto":
            backend = ("tensorrt" if has_plan and tensorrt_status() is None
                       else "onnxruntime")
        if backend == "tensorrt":
            if not has_plan:
                raise EngineError(f"{model_uri}: no {PLAN} was compiled ({summary.get('tensorrt', 'not built')})")
            return TensorRTEngine(local / PLAN, multiple, model_hash)
        if backend == "onnxruntime":
            return OnnxEngine(local / ONNX_FILE, device or "auto", threads, multiple, model_hash)
        source = summary.get("checkpoint")
        if not source:
            raise EngineError(f"{model_uri}: the torch engine needs the source checkpoint, which compile.json does not name")
        model_uri = source
    try:
        model = load_generator(model_uri)
        model_hash = checkpoint_hash(model_uri)
    except CheckpointError as e:
        raise EngineError(str(e)) from None
    if backend == "auto":
        backend = "onnxruntime" if _has_ort_cuda() or not _cuda() else "torch"
    if backend == "tensorrt":
        raise EngineError(f"{model_uri}: a checkpoint has no TensorRT engine; build one with jobs/compile.py")
    if backend == "onnxruntime":
        from .onnx_engine import add_metadata, export_onnx

        folder = Path(storage.cache_dir()) / "onnx" / model_hash
        if not (folder / ONNX_FILE).is_file():  # exported once per checkpoint, then reused
            staging = Path(tempfile.mkdtemp(prefix="export-", dir=folder.parent.mkdir(parents=True, exist_ok=True) or folder.parent))
            export_onnx(model, staging / ONNX_FILE, model.multiple)
            add_metadata(staging / ONNX_FILE, multiple=model.multiple, model_hash=model_hash)
            try:
                staging.rename(folder)
            except OSError:  # another process exported it first
                pass
        return OnnxEngine(folder / ONNX_FILE, device or "auto", threads, model.multiple, model_hash)
    from .torch_engine import TorchEngine

    return TorchEngine(model, model_uri, device, precision, model_hash=model_hash, threads=threads)


__all__ = ["BACKENDS", "Engine", "EngineError", "EngineInfo", "load_engine", "cpu_threads", "run_tiled"]
