"""`load_engine`: a model reference in, the fastest engine this machine can run out.

A reference is a checkpoint (file, Ray checkpoint directory, run directory with best.json, a shipped model's
name; local or s3://) or a compiled directory (`compile.json` + `model.onnx` [+ `engine.plan`]). The order of
preference is tensorrt > onnxruntime-cuda > torch-cuda > onnxruntime-cpu (> torch-cpu when only a checkpoint
is given): ONNX Runtime beats eager torch on CPU, and a checkpoint is exported to ONNX once, then reused.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from .. import storage
from ..models.checkpoint import CheckpointError, checkpoint_hash, load_generator
from .engine import Engine, EngineError
from .onnx_engine import OnnxEngine, add_metadata, export_onnx
from .tensorrt_engine import META, PLAN, TensorRTEngine, tensorrt_status
from .torch_engine import TorchEngine

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
COMPILE_FILE, ONNX_FILE = "compile.json", "model.onnx"


def load_engine(
    model_uri: str,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    precision: str = "fp32",
) -> Engine:
    """The engine for a checkpoint or a compiled directory; a clear EngineError when it cannot be had."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown engine {backend!r}; choose one of {BACKENDS}")
    model_uri = str(model_uri)
    if storage.exists(storage.join(model_uri, COMPILE_FILE)):
        engine = _compiled_engine(model_uri, backend, device, threads)
        if isinstance(engine, Engine):
            return engine
        model_uri, backend = engine  # the torch engine of a compiled folder is its source checkpoint's
    return _checkpoint_engine(model_uri, backend, device, threads, precision)


def _compiled_engine(model_uri: str, backend: str, device: str | None, threads: int | None) -> Engine | tuple[str, str]:
    """A compiled folder's TensorRT or ONNX Runtime engine, or (source checkpoint, "torch") for the torch one."""
    summary = json.loads(storage.read_text(storage.join(model_uri, COMPILE_FILE)))
    local = _local_copy(model_uri, [COMPILE_FILE, ONNX_FILE, ONNX_FILE + ".data", PLAN, META])
    multiple, model_hash = int(summary["multiple"]), summary.get("model_hash", "")
    has_plan = (local / PLAN).is_file()
    if backend == "auto":
        backend = "tensorrt" if has_plan and tensorrt_status() is None else "onnxruntime"
    if backend == "tensorrt":
        if not has_plan:
            raise EngineError(f"{model_uri}: no {PLAN} was compiled ({summary.get('tensorrt', 'not built')})")
        return TensorRTEngine(local / PLAN, multiple, model_hash)
    if backend == "onnxruntime":
        return OnnxEngine(local / ONNX_FILE, device or "auto", threads, multiple, model_hash)
    source = summary.get("checkpoint")
    if not source:
        raise EngineError(
            f"{model_uri}: the torch engine needs the source checkpoint, which compile.json does not name"
        )
    return source, "torch"


def _checkpoint_engine(model_uri: str, backend: str, device: str | None, threads: int | None, precision: str) -> Engine:
    try:
        model = load_generator(model_uri)
        model_hash = checkpoint_hash(model_uri)
    except CheckpointError as e:
        raise EngineError(str(e)) from None
    if backend == "auto":
        cuda = torch.cuda.is_available()
        backend = "onnxruntime" if "CUDAExecutionProvider" in ort.get_available_providers() or not cuda else "torch"
    if backend == "tensorrt":
        raise EngineError(f"{model_uri}: a checkpoint has no TensorRT engine; build one with jobs/compile.py")
    if backend == "onnxruntime":
        onnx_file = _exported(model, model_hash)
        return OnnxEngine(onnx_file, device or "auto", threads, model.multiple, model_hash)
    return TorchEngine(model, model_uri, device, precision, model_hash=model_hash, threads=threads)


def _exported(model: torch.nn.Module, model_hash: str) -> Path:
    """The checkpoint's ONNX export in the local cache: made once per checkpoint hash, then reused."""
    folder = Path(storage.cache_dir()) / "onnx" / model_hash
    if not (folder / ONNX_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="export-", dir=folder.parent))
        export_onnx(model, staging / ONNX_FILE, model.multiple)
        add_metadata(staging / ONNX_FILE, multiple=model.multiple, model_hash=model_hash)
        try:
            staging.rename(folder)
        except OSError:  # another process exported it first
            pass
    return folder / ONNX_FILE


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
