"""Compile a checkpoint: ONNX export (dynamic batch/height/width), verification against torch, and a
TensorRT engine when this machine can build one. Everything lands in one folder, summarised by
`compile.json`, and `load_engine(folder)` picks it up.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime
import skimage.data
import torch

from .. import storage
from ..images import to_model_input
from ..models.checkpoint import load_generator
from ..models.reference import checkpoint_hash, resolve_checkpoint
from .engine import REDUCED_TOLERANCE, Engine, EngineError
from .load import COMPILE_FILE, ONNX_FILE
from .onnx_engine import EXPORT_VERSION, OPSET, OnnxEngine, add_metadata, export_onnx
from .tensorrt_engine import TensorRTEngine, build_engine, tensorrt_status
from .torch_engine import TorchEngine

#: max |ONNX Runtime − torch| allowed in fp32, in [-1, 1] units (the job fails above it): an eighth of an
#: 8-bit level (1/127.5). Generators that normalise with each image's statistics (NAFNet's LayerNorms,
#: DeblurGAN-v2's instance statistics) amplify float rounding to a few 1e-4 between the two runtimes.
FP32_TOLERANCE = 1e-3


def parse_shape(text: str) -> tuple[int, int]:
    """'720x1280' → (720, 1280): height × width, as the command line takes it."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"bad shape {text!r}; write HEIGHTxWIDTH, e.g. 720x1280") from None
    if h < 1 or w < 1:
        raise ValueError(f"bad shape {text!r}; both sides must be positive")
    return h, w


def verification_inputs(multiple: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random batches at aligned and odd sizes, and real photos cut to odd sizes (333×517, ...)."""
    rng = np.random.default_rng(seed)
    inputs = {
        f"random 2x3x{2 * multiple}x{2 * multiple}": rng.uniform(-1, 1, (2, 3, 2 * multiple, 2 * multiple)),
        "random 1x3x333x517": rng.uniform(-1, 1, (1, 3, 333, 517)),
        "photo astronaut 333x517": _photo(skimage.data.astronaut(), 333, 517),
        "photo coffee 301x389": _photo(skimage.data.coffee(), 301, 389),
    }
    return {k: v.astype(np.float32) for k, v in inputs.items()}


def _photo(img: np.ndarray, h: int, w: int) -> np.ndarray:
    reps = (-(-h // img.shape[0]), -(-w // img.shape[1]), 1)
    return to_model_input(np.tile(img, reps)[:h, :w])[None]


def compare(reference: Engine, candidate: Engine, inputs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    errors = {}
    for name, batch in inputs.items():
        diff = np.abs(reference.deblur_batch(batch) - candidate.deblur_batch(batch))
        errors[name] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
    return errors


def compile_checkpoint(
    checkpoint: str,
    out: str,
    precision: str = "fp16",
    min_shape: tuple[int, int] = (64, 64),
    opt_shape: tuple[int, int] = (720, 1280),
    max_shape: tuple[int, int] = (2160, 3840),
    max_batch: int = 4,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build `out/` = compile.json + its version folder of model.onnx[.data] (+ engine.plan, engine.json,
    timing.cache): export → verify ONNX Runtime against torch → build and verify TensorRT where it runs →
    publish (`_publish`)."""
    if precision not in REDUCED_TOLERANCE:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(REDUCED_TOLERANCE)}")
    source = resolve_checkpoint(checkpoint)
    model = load_generator(source)
    model_hash, multiple = checkpoint_hash(source), int(model.multiple)
    staging = Path(tempfile.mkdtemp(prefix="deblur-compile-"))
    progress(f"exporting {source} to ONNX (dynamic batch, height, width; multiple of {multiple})")
    export_onnx(model, staging / ONNX_FILE, multiple)
    add_metadata(staging / ONNX_FILE, multiple=multiple, model_hash=model_hash)
    progress("verifying ONNX Runtime against torch (random inputs and photos of odd sizes)")
    ort_engine = OnnxEngine(staging / ONNX_FILE, "cpu", multiple=multiple, model_hash=model_hash)
    inputs = verification_inputs(multiple)
    summary: dict[str, Any] = {
        "checkpoint": source,
        "model_hash": model_hash,
        "generator": type(model).__name__,
        "multiple": multiple,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "onnx": _verify_onnx(TorchEngine(model, source, "cpu", model_hash=model_hash), ort_engine, inputs),
    }
    reason = tensorrt_status()
    if reason:
        progress(f"TensorRT skipped: {reason}; the ONNX model is the result")
        summary["tensorrt"] = {"built": False, "reason": reason}
    else:
        shapes = _profile_shapes(multiple, min_shape, opt_shape, max_shape, max_batch)
        progress(f"building a TensorRT {precision} engine for shapes {shapes} (minutes)")
        build_engine(
            staging / ONNX_FILE,
            staging,
            *shapes,
            precision=precision,
            extra_meta={"model_hash": model_hash, "checkpoint": source},
        )
        trt_engine = TensorRTEngine(staging / "engine.plan", multiple, model_hash)
        summary["tensorrt"] = _verify_tensorrt(ort_engine, trt_engine, inputs, precision) | {"shapes": shapes}
    _publish(staging, out, summary)
    return summary


def _verify_onnx(reference: Engine, ort_engine: Engine, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """ONNX Runtime must match torch to FP32_TOLERANCE on every input, else the export is refused."""
    errors = compare(reference, ort_engine, inputs)
    worst = max(e["max_abs"] for e in errors.values())
    if not worst <= FP32_TOLERANCE:  # NaN included
        raise EngineError(f"ONNX Runtime differs from torch by {worst:.2e} (> {FP32_TOLERANCE:.0e}): {errors}")
    return {
        "opset": OPSET,
        "export_version": EXPORT_VERSION,
        "tolerance_max_abs": FP32_TOLERANCE,
        "max_abs_error": worst,
        "errors": errors,
    }


def _verify_tensorrt(
    ort_engine: Engine, trt_engine: Engine, inputs: dict[str, np.ndarray], precision: str
) -> dict[str, Any]:
    """A reduced-precision engine is judged by its mean error against ONNX Runtime (fp32)."""
    errors = compare(ort_engine, trt_engine, inputs)
    mean = max(e["mean_abs"] for e in errors.values())
    if not mean <= REDUCED_TOLERANCE[precision]:  # NaN included: an engine that overflows must not pass
        raise EngineError(
            f"TensorRT {precision} differs from ONNX Runtime by mean {mean:.2e} "
            f"(> {REDUCED_TOLERANCE[precision]:.0e}): {errors}"
        )
    return {"built": True, "precision": precision, "tolerance_mean_abs": REDUCED_TOLERANCE[precision], "errors": errors}


def _profile_shapes(
    multiple: int, min_shape: tuple[int, int], opt_shape: tuple[int, int], max_shape: tuple[int, int], max_batch: int
) -> list[tuple[int, ...]]:
    """The TensorRT optimisation profile (min, opt, max N×3×H×W), sides rounded up to the model's multiple."""

    def align(hw: tuple[int, int]) -> tuple[int, int]:
        return tuple(-(-v // multiple) * multiple for v in hw)  # type: ignore[return-value]

    return [(1, 3, *align(min_shape)), (1, 3, *align(opt_shape)), (max_batch, 3, *align(max_shape))]


#: what compiled folders held at their top level before each compile got its own version folder
LEGACY_FILES = (ONNX_FILE, ONNX_FILE + ".data", "engine.plan", "engine.json", "timing.cache")


def _publish(staging: Path, out: str, summary: dict[str, Any]) -> None:
    """Make `out` serve the staged model, whole or not at all, whoever is reading it.

    The files go to a version folder of their own (`v-<model hash>-<time>`), never written into again; then
    compile.json, written atomically, switches readers to it (a reader takes compile.json first and the files
    it names from its version). A recompile thus never pairs a new model.onnx with an old model.onnx.data, nor
    leaves an older engine.plan to be run under the new model's hash. The version compile.json named before
    stays for readers that were loading it; older versions go, and so do the files of the single-folder layout,
    one publish after the folder left it.
    """
    previous = None
    if storage.exists(storage.join(out, COMPILE_FILE)):
        try:
            previous = json.loads(storage.read_text(storage.join(out, COMPILE_FILE))).get("version")
        except ValueError:
            previous = None  # an unreadable summary is replaced below
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    version = f"v-{summary['model_hash'][:12]}-{stamp}"
    summary["version"] = version
    summary["files"] = sorted(p.name for p in staging.iterdir())
    for name in summary["files"]:
        storage.write_bytes(storage.join(out, version, name), (staging / name).read_bytes())
    storage.write_text(storage.join(out, COMPILE_FILE), json.dumps(summary, indent=2))
    for name in storage.subfolders(out):
        if name.startswith("v-") and name not in (version, previous):
            storage.remove(storage.join(out, name))
    if previous:  # the single-folder layout's files outlive one versioned publish, for its readers mid-load
        for name in LEGACY_FILES:
            storage.remove(storage.join(out, name))
