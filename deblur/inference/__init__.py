"""Inference: one `Engine` interface over torch, ONNX Runtime and TensorRT, at any image size;
`load_engine` (load.py) picks the fastest one a machine can run for a model reference."""

from .engine import Engine, EngineError, EngineInfo, cpu_threads
from .load import (
    BACKENDS,
    COMPILE_FILE,
    ONNX_FILE,
    PRECISIONS,
    Precision,
    check_engine_choice,
    check_engine_here,
    check_engine_request,
    check_workers_gpus,
    load_engine,
)
from .tiling import run_tiled

__all__ = [
    "BACKENDS",
    "COMPILE_FILE",
    "ONNX_FILE",
    "PRECISIONS",
    "Precision",
    "Engine",
    "EngineError",
    "EngineInfo",
    "check_engine_choice",
    "check_engine_here",
    "check_engine_request",
    "check_workers_gpus",
    "load_engine",
    "cpu_threads",
    "run_tiled",
]
