"""TensorRT: build an engine from the ONNX graph, and run it. Needs the `tensorrt` extra and a CUDA GPU.

A serialized engine is only valid for the TensorRT version and GPU architecture that built it, so every
`engine.plan` travels with `engine.json` (versions, GPU, shapes, precision, source hash) and loading
checks it first, failing with the reason and the command that rebuilds it instead of a CUDA error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine, EngineError, EngineInfo
from .onnx_engine import INPUT, OUTPUT

PLAN, META, TIMING_CACHE = "engine.plan", "engine.json", "timing.cache"
REQUIRED_META = (
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "precision",
    "min_shape",
    "opt_shape",
    "max_shape",
)


def tensorrt_status() -> str | None:
    """None when TensorRT can run here, else why not (shown to the user as-is)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'deblurgan-ray[tensorrt]' with NVIDIA's index)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible, and TensorRT engines only run on one"
    return None


def current_platform() -> dict[str, Any]:
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
    }


def check_engine_metadata(meta: dict[str, Any], platform: dict[str, Any], where: str) -> None:
    """Refuse an engine built elsewhere: TensorRT plans are tied to the TensorRT version and the GPU."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise EngineError(f"{where}: engine metadata lacks {missing}; rebuild with deblur compile")
    if str(meta["tensorrt_version"]) != str(platform["tensorrt_version"]):
        raise EngineError(
            f"{where}: built with TensorRT {meta['tensorrt_version']}, this machine has {platform['tensorrt_version']}; "
            "rebuild the engine here with deblur compile"
        )
    if str(meta["compute_capability"]) != str(platform["compute_capability"]):
        raise EngineError(
            f"{where}: built for {meta['gpu_name']} (compute capability {meta['compute_capability']}), this GPU is "
            f"{platform['gpu_name']} ({platform['compute_capability']}); rebuild the engine here with deblur compile"
        )


def build_engine(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    min_shape: tuple[int, int, int, int],
    opt_shape: tuple[int, int, int, int],
    max_shape: tuple[int, int, int, int],
    precision: str = "fp16",
    workspace_gb: float = 4.0,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """ONNX → `engine.plan` + `engine.json` (+ the timing cache, reused by the next build)."""
    import tensorrt as trt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):  # reads the .onnx.data beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT's ONNX parser refused it: {errors[:500]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        from ..models.common import cuda_has_native_bf16

        if not cuda_has_native_bf16():
            raise EngineError("this GPU has no bf16 in hardware (compute capability 8.0 or later); build fp16")
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}; choose fp32, fp16 or bf16")
    cache_path = out_dir / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, min_shape, opt_shape, max_shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    (out_dir / PLAN).write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = {
        **current_platform(),
        "precision": precision,
        "min_shape": list(min_shape),
        "opt_shape": list(opt_shape),
        "max_shape": list(max_shape),
        **(extra_meta or {}),
    }
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    return out_dir / PLAN


def read_engine_metadata(plan: Path) -> dict[str, Any]:
    meta_path = plan.parent / META
    if not meta_path.is_file():
        raise EngineError(f"{plan}: {META} is missing beside it; an engine without its metadata cannot be checked")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise EngineError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise EngineError(f"{meta_path}: expected a JSON object")
    return meta


def profile_tile(max_hw: tuple[int, int], multiple: int, tile: int) -> int:
    """The tile side for an engine whose profile allows at most max_hw: a multiple of the stride that fits
    both sides once padded (so no tile is ever refused by the profile)."""
    side = min(max_hw[0], max_hw[1], tile)
    side -= side % multiple
    if side < multiple:
        raise EngineError(f"a TensorRT profile of at most {max_hw[0]}×{max_hw[1]} cannot take one {multiple}-px block")
    return side


class TensorRTEngine(Engine):
    def __init__(self, plan: str | os.PathLike, multiple: int = 1, model_hash: str = ""):
        plan = Path(plan)
        if not plan.is_file():
            raise EngineError(f"{plan}: TensorRT engine not found")
        meta = read_engine_metadata(plan)
        reason = tensorrt_status()
        if reason:
            raise EngineError(f"{plan}: cannot run a TensorRT engine here: {reason}")
        check_engine_metadata(meta, current_platform(), str(plan))
        import tensorrt as trt
        import torch

        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise EngineError(f"{plan}: TensorRT could not deserialize it; rebuild with deblur compile")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.min_hw = tuple(meta["min_shape"][2:])
        max_n, _, max_h, max_w = meta["max_shape"]
        self.max_batch = int(max_n)
        self.max_pixels = int(max_h) * int(max_w)
        self.max_hw = (int(max_h), int(max_w))  # beyond the profile on either side, the Engine tiles
        self.tile = profile_tile(self.max_hw, multiple, self.tile)
        self.overlap = min(self.overlap, self.tile // 4)
        self.info = EngineInfo(
            "tensorrt",
            meta["gpu_name"],
            meta["precision"],
            multiple,
            str(plan),
            model_hash or meta.get("model_hash", ""),
            {"tensorrt_version": meta["tensorrt_version"]},
        )

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        n, _, h, w = batch.shape
        ph, pw = max(0, self.min_hw[0] - h), max(0, self.min_hw[1] - w)
        if ph or pw:  # below the profile's minimum: pad, run, crop
            batch = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        outs = []
        for k in range(0, n, self.max_batch):
            x = torch.from_numpy(np.ascontiguousarray(batch[k : k + self.max_batch])).cuda()
            y = torch.empty_like(x)
            if not self.context.set_input_shape(INPUT, tuple(x.shape)):
                raise EngineError(
                    f"{self.info.source}: shape {tuple(x.shape)} is outside the engine's profile "
                    f"(max {self.max_batch}×3×{self.max_hw[0]}×{self.max_hw[1]})"
                )
            self.context.set_tensor_address(INPUT, x.data_ptr())
            self.context.set_tensor_address(OUTPUT, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineError(f"{self.info.source}: TensorRT execution failed for shape {tuple(x.shape)}")
            self.stream.synchronize()
            outs.append(y.cpu().numpy())
        return np.concatenate(outs)[..., :h, :w]
