"""`load_engine`: a model reference in, the fastest engine this machine can run out.

A reference is a checkpoint (file, Ray checkpoint directory, run directory with best.json, a shipped model's
name; local or s3://) or a compiled directory (`compile.json` + `model.onnx` [+ `engine.plan`]). The order of
preference is tensorrt > onnxruntime-cuda > torch-cuda > onnxruntime-cpu (> torch-cpu when only a checkpoint
is given): ONNX Runtime beats eager torch on CPU, and a checkpoint is exported to ONNX once, then reused.
ONNX Runtime runs the fp32 graph only, so asking for bf16 or fp16 makes "auto" pick torch (unless a TensorRT
engine built for that precision is there): on a CPU with AMX that is the fastest engine (bf16 weights ~1.3×
ONNX Runtime fp32 on the shipped model, images within a few uint8 levels). A TensorRT plan's precision was
fixed when it was built: no precision (None, the default) runs a plan as built and everything else in fp32;
a precision named, fp32 included, must be the plan's, so `fp32` never runs an fp16 plan.
A checkpoint whose export is cached runs on ONNX Runtime without importing torch (~1.6 s that every Ray
actor of the bulk and video jobs would pay), so torch is imported only where a model is built or run by it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import onnxruntime as ort
from pydantic import Field

from .. import storage
from ..models.reference import CheckpointError, checkpoint_hash, resolve_checkpoint
from .engine import Engine, EngineError
from .onnx_engine import EXPORT_VERSION, OnnxEngine, add_metadata, export_onnx
from .tensorrt_engine import META, PLAN, TensorRTEngine, check_engine_metadata, current_platform, tensorrt_status

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16")
#: the jobs' option: None (the default) is fp32, or a compiled folder's TensorRT plan as it was built
Precision = Annotated[
    Literal[PRECISIONS] | None,
    Field(description="None: fp32, or a TensorRT plan as built; bf16/fp16 run on torch unless a plan was built so"),
]
COMPILE_FILE, ONNX_FILE = "compile.json", "model.onnx"


def load_engine(
    model_uri: str,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    precision: str | None = None,
) -> Engine:
    """The engine for a checkpoint or a compiled directory; a clear EngineError when it cannot be had."""
    check_engine_choice(backend, precision)
    model_uri = str(model_uri)
    if recipe := _route(model_uri):
        from ..kernel.route import KernelRouteEngine

        return KernelRouteEngine(load_engine(recipe.network, backend, device, threads, precision), recipe, threads)
    if storage.exists(storage.join(model_uri, COMPILE_FILE)):
        engine = _compiled_engine(model_uri, backend, device, threads, precision)
        if isinstance(engine, Engine):
            return engine
        model_uri, backend = engine  # the torch engine of a compiled folder is its source checkpoint's
    return _checkpoint_engine(model_uri, backend, device, threads, precision)


def model_fingerprint(model_uri: str) -> str:
    """What a model reference holds now, by content: a checkpoint's sha256 (its file, wherever the reference points:
    a run's best.json, a shipped name), or a compiled folder's model hash and the version its compile.json names.
    Work cached under this key (video segments) is never mixed across two models that one reference named."""
    model_uri = str(model_uri)
    if recipe := _route(model_uri):
        return f"{model_fingerprint(recipe.network)}+{recipe.name}.{recipe.version}"
    try:
        if storage.exists(storage.join(model_uri, COMPILE_FILE)):
            summary = _compile_summary(model_uri)
            return f"{summary.get('model_hash', '')}:{summary.get('version', '')}"
        return checkpoint_hash(model_uri)
    except CheckpointError as e:
        raise EngineError(str(e)) from None


def check_engine_request(
    model_uri: str,
    backend: str = "auto",
    precision: str | None = None,
    gpus: float | str | None = None,
    gpus_flag: str = "--gpus-per-worker",
) -> None:
    """What `load_engine` would refuse that needs neither the model loaded nor the hardware known: unknown
    names, ONNX Runtime asked for reduced precision, a reference that names no model, and fp16 or TensorRT for
    workers the job gives no GPU (`gpus=0`: they run on CPUs, `deblur.ray_env.worker_device`; None or "auto":
    not known before Ray is up, `deblur.ray_env.resolve_actor_gpus` checks it then). The jobs check it in their driver, often a CPU head node far from
    the GPUs, so a mistake is one line before Ray starts instead of a traceback from every actor. Whether
    TensorRT or bf16 runs where the actors land is theirs to say (`check_engine_here` where that is this
    machine)."""
    check_engine_choice(backend, precision)
    if gpus not in (None, "auto"):
        check_workers_gpus(backend, precision, float(gpus), gpus_flag)
    model_uri = str(model_uri)
    if recipe := _route(model_uri):
        model_uri = recipe.network  # a route runs its network's engine beside the deconvolution
    if storage.exists(storage.join(model_uri, COMPILE_FILE)):
        summary = _compile_summary(model_uri)
        folder, files = _compiled_files(model_uri, summary)
        has_plan = PLAN in files
        if backend == "tensorrt":
            _check_plan(model_uri, summary, has_plan, precision, folder)
        if not (
            backend == "torch"
            or (backend == "auto" and _reduced(precision) and not _plan_runs(folder, has_plan, precision))
        ):
            return
        model_uri = _source_checkpoint(model_uri, summary)  # the torch engine is its source checkpoint's
    elif backend == "tensorrt":
        raise _no_plan_for_checkpoint(model_uri)
    try:
        resolve_checkpoint(model_uri)
    except CheckpointError as e:
        raise EngineError(str(e)) from None


def check_workers_gpus(
    backend: str, precision: str | None, gpus: float, gpus_flag: str = "--gpus-per-worker", auto: str | None = None
) -> None:
    """fp16 and TensorRT need a GPU: refuse them for workers given none. `auto`: where the flag was "auto" and
    `deblur.ray_env.actor_gpus` found no GPU, the Ray it looked at ("local": one this job started on this
    machine; "cluster": one it joined, whose autoscaler may still add GPU nodes when asked with a number)."""
    if gpus or not (precision == "fp16" or backend == "tensorrt"):
        return
    what, instead = (
        ("fp16 inference", "bf16 (a CPU with AMX or AVX512-BF16) or fp32")
        if precision == "fp16"
        else ("TensorRT", "--engine auto")
    )
    if auto == "local":
        raise EngineError(
            f"{what} needs a GPU and this machine has none ({gpus_flag} auto gave the workers none): join a Ray "
            f"cluster with GPUs (RAY_ADDRESS or `ray job submit`), or use {instead}"
        )
    if auto:
        raise EngineError(
            f"{what} needs a GPU and no node of the Ray cluster has one now ({gpus_flag} auto gave the workers "
            f"none): {gpus_flag} 1 asks an autoscaler for GPU nodes, or use {instead}"
        )
    raise EngineError(f"{what} needs a GPU and the workers are given none: {gpus_flag} 1, or use {instead}")


def check_engine_here(backend: str, precision: str | None, gpus: float) -> None:
    """What this machine's hardware refuses (bf16 on a CPU that would emulate it, TensorRT not installed), for a
    job whose actors all run here (a Ray it started itself): one line now, not a traceback from every actor."""
    if not gpus and _reduced(precision):  # fp32 runs on any CPU (and needs no torch import here)
        from .torch_engine import check_cpu_precision

        check_cpu_precision(precision)
    elif gpus and backend == "tensorrt" and (why := tensorrt_status()):
        raise EngineError(why)


def check_engine_choice(backend: str, precision: str | None) -> None:
    """Names and combinations an engine can never have, anywhere (the jobs' options check them when parsed)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown engine {backend!r}; choose one of {BACKENDS}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if backend == "onnxruntime" and _reduced(precision):
        raise EngineError(f"ONNX Runtime runs the fp32 graph; for {precision} use the torch engine (or TensorRT)")


def _route(model_uri: str):
    """The shipped kernel-aware route a name means (`deblur.kernel.route.ROUTES`; "default" is
    `deblur.models.shipped.DEFAULT`), else None; names only, so a folder of that name is reached as ./name, as
    with shipped models."""
    from ..kernel.route import route_recipe
    from ..models.shipped import DEFAULT

    return route_recipe(DEFAULT if model_uri == "default" else model_uri)


def network_of(model_uri: str) -> str:
    """The network a reference deblurs with: a route's (the default's is the shipped network), else the reference
    itself. Video uses it: a kernel estimated per frame would differ from frame to frame and flicker."""
    recipe = _route(str(model_uri))
    return recipe.network if recipe else str(model_uri)


def _reduced(precision: str | None) -> bool:
    """bf16 or fp16: what ONNX Runtime's fp32 graph cannot compute (None is fp32 or a plan as built)."""
    return precision not in (None, "fp32")


def _compiled_engine(
    model_uri: str, backend: str, device: str | None, threads: int | None, precision: str | None
) -> Engine | tuple[str, str]:
    """A compiled folder's TensorRT or ONNX Runtime engine, or (source checkpoint, "torch") for the torch one.

    compile.json names the version folder that holds the model's files (see compile._publish): they are
    read from there only, so a file another compile left behind is never run. A folder compiled before
    versions existed keeps its files beside compile.json, which lists them.
    """
    summary = _compile_summary(model_uri)
    folder, files = _compiled_files(model_uri, summary)
    multiple, model_hash = int(summary["multiple"]), summary.get("model_hash", "")
    has_plan = PLAN in files
    if backend == "auto":
        fallback = "torch" if _reduced(precision) else "onnxruntime"  # ORT runs the fp32 graph only
        runs = _plan_runs(folder, has_plan, precision) and device != "cpu" and tensorrt_status() is None
        problem = _plan_problem(folder) if runs else None
        if problem:
            print(
                f"deblur: not running {PLAN}: {problem.split(': ', 1)[-1]}; using {fallback} instead", file=sys.stderr
            )
        backend = "tensorrt" if runs and not problem else fallback
    if backend == "tensorrt":
        if device == "cpu":
            raise EngineError("TensorRT needs a GPU, and this engine was asked to run on the CPU")
        _check_plan(model_uri, summary, has_plan, precision, folder)
        if why := tensorrt_status():
            raise EngineError(f"{model_uri}: cannot run its TensorRT engine here: {why}")
        if problem := _plan_problem(folder):
            raise EngineError(problem)  # names what built it and says to rebuild here, before any copy or CUDA call
        local = _local_copy(model_uri, folder, [PLAN, META], summary)
        return TensorRTEngine(local / PLAN, multiple, model_hash)
    if backend == "onnxruntime":
        local = _local_copy(model_uri, folder, sorted(files & {ONNX_FILE, ONNX_FILE + ".data"}), summary)
        return OnnxEngine(local / ONNX_FILE, device or "auto", threads, multiple, model_hash)
    return _source_checkpoint(model_uri, summary), "torch"


def _compiled_files(model_uri: str, summary: dict) -> tuple[str, set[str]]:
    """(the folder holding the compiled model's files, their names), as compile.json gives them."""
    folder = storage.join(model_uri, summary["version"]) if summary.get("version") else model_uri
    return folder, set(summary.get("files") or [ONNX_FILE])


def _plan_problem(folder: str) -> str | None:
    """Why this machine cannot run the folder's plan (another TensorRT version or GPU architecture built
    it; a plan built on an A100 does not run on an A10G), or None."""
    try:
        meta = json.loads(storage.read_text(storage.join(folder, META)))
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        check_engine_metadata(meta, current_platform(), storage.join(folder, PLAN))
    except EngineError as e:
        return str(e)
    except (storage.StorageError, ValueError) as e:
        return f"{storage.join(folder, META)} is missing or unreadable ({e})"
    return None


def _compile_summary(model_uri: str) -> dict:
    path = storage.join(model_uri, COMPILE_FILE)
    try:
        return json.loads(storage.read_text(path))
    except ValueError as e:
        raise EngineError(f"{path}: unreadable ({e})") from None


def _no_plan(model_uri: str, summary: dict) -> EngineError:
    return EngineError(f"{model_uri}: no {PLAN} was compiled ({summary.get('tensorrt', 'not built')})")


def _plan_precision(folder: str) -> str | None:
    """The precision a compiled folder's TensorRT plan was built for (its engine.json), None where that does
    not say (TensorRTEngine then refuses the plan with the reason)."""
    try:
        return json.loads(storage.read_text(storage.join(folder, META))).get("precision")
    except (OSError, ValueError, AttributeError):
        return None


def _plan_runs(folder: str, has_plan: bool, precision: str | None) -> bool:
    """Whether the folder's plan serves `precision`: None (the default) takes the plan as built; a precision
    named must be the plan's (a plan whose engine.json does not say is left to TensorRTEngine to refuse)."""
    return has_plan and precision in (None, _plan_precision(folder) or precision)


def _check_plan(model_uri: str, summary: dict, has_plan: bool, precision: str | None, local: str | None = None) -> None:
    """--engine tensorrt: a plan is there, and built for the precision asked (it cannot be changed at run time)."""
    if not has_plan:
        raise _no_plan(model_uri, summary)
    if not _plan_runs(local or model_uri, has_plan, precision):
        raise EngineError(
            f"{model_uri}: its {PLAN} was built for {_plan_precision(local or model_uri)}, not {precision}; "
            f"rebuild it with deblur compile --precision {precision}, or leave --precision out to run it as built"
        )


def _no_plan_for_checkpoint(model_uri: str) -> EngineError:
    return EngineError(f"{model_uri}: a checkpoint has no TensorRT engine; build one with deblur compile")


def _source_checkpoint(model_uri: str, summary: dict) -> str:
    source = summary.get("checkpoint")
    if not source:
        raise EngineError(
            f"{model_uri}: the torch engine needs the source checkpoint, which compile.json does not name"
        )
    return source


def _checkpoint_engine(
    model_uri: str, backend: str, device: str | None, threads: int | None, precision: str | None
) -> Engine:
    try:
        model_hash = checkpoint_hash(model_uri)
    except CheckpointError as e:
        raise EngineError(str(e)) from None
    if backend == "auto":
        cuda_ort = "CUDAExecutionProvider" in ort.get_available_providers()
        on_cpu = device == "cpu" or not cuda_available()
        backend = "onnxruntime" if (cuda_ort or on_cpu) and not _reduced(precision) else "torch"
    if backend == "tensorrt":
        raise _no_plan_for_checkpoint(model_uri)
    if backend == "onnxruntime":
        onnx_file = Path(storage.cache_dir()) / "onnx" / f"{model_hash}-v{EXPORT_VERSION}" / ONNX_FILE
        with _node_lock(onnx_file.parent):  # one export per machine, however many actors start on it at once
            if not onnx_file.is_file():
                _export(_generator(model_uri), model_hash, onnx_file.parent)
        return OnnxEngine(onnx_file, device or "auto", threads, model_hash=model_hash)  # the graph records the stride
    from .torch_engine import TorchEngine

    model = _generator(model_uri)
    return TorchEngine(model, model_uri, device, precision or "fp32", model_hash=model_hash, threads=threads)


def _generator(model_uri: str):
    from ..models.checkpoint import load_generator

    try:
        return load_generator(model_uri)
    except CheckpointError as e:
        raise EngineError(str(e)) from None


@contextlib.contextmanager
def _node_lock(folder: Path):
    """Hold `<folder>.lock` exclusively (flock: released when the process dies, so a killed actor never leaves
    the others waiting): the processes of one machine make a cached file one at a time, the later ones find it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cuda_available() -> bool:
    """`torch.cuda.is_available()`, answered without importing torch where the NVIDIA driver's library is
    absent (CUDA cannot run without it): a CPU machine's actors then never load torch for the question."""
    try:
        ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    except OSError:
        return False
    import torch

    return torch.cuda.is_available()


def _export(model, model_hash: str, folder: Path) -> None:
    """The checkpoint's ONNX export into the local cache (`folder`, named by the checkpoint's hash and
    EXPORT_VERSION), made once per checkpoint and then reused; staged and renamed, so a half-written export
    is never found. The exports of this checkpoint that an earlier EXPORT_VERSION made are removed then:
    this code never reads them again, and each holds a copy of the weights."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="export-", dir=folder.parent))
    export_onnx(model, staging / ONNX_FILE, model.multiple)
    add_metadata(staging / ONNX_FILE, multiple=model.multiple, model_hash=model_hash)
    try:
        staging.rename(folder)
    except OSError:  # another process exported it first
        shutil.rmtree(staging, ignore_errors=True)
    for old in [folder.parent / model_hash, *folder.parent.glob(f"{model_hash}-v*")]:
        version = old.name[len(model_hash) + 2 :]  # "": the name exports before EXPORT_VERSION had
        if old.is_dir() and (not version or (version.isdigit() and int(version) < EXPORT_VERSION)):
            shutil.rmtree(old, ignore_errors=True)  # a newer version's export (newer code beside) stays


def _local_copy(model_uri: str, folder: str, names: list[str], summary: dict) -> Path:
    """A compiled version's files where ONNX Runtime and TensorRT can open them: the folder itself when it is
    local; for s3:// a copy per machine in the cache, named by the compiled folder's URI and the version its
    compile.json names (a folder of the single-folder layout: by its compile.json's bytes), fetched once under
    a lock, each file moved in whole, never rewritten while another process may open it. The two newest copies
    of a compiled folder stay (a reader mid-load of the version before keeps its files); older ones go."""
    if not storage.is_remote(folder):
        return Path(folder)
    version = summary.get("version") or "single-" + hashlib.sha256(json.dumps(summary).encode()).hexdigest()[:12]
    cache = Path(storage.cache_dir()) / "compiled"
    key = hashlib.sha256(model_uri.rstrip("/").encode()).hexdigest()[:12]
    target = cache / f"{key}-{version}"
    with _node_lock(target):
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not (target / name).is_file():
                tmp = target / f".{name}.{os.getpid()}"
                try:
                    tmp.write_bytes(storage.read_bytes(storage.join(folder, name)))
                    os.replace(tmp, target / name)
                finally:
                    tmp.unlink(missing_ok=True)
    copies = sorted((p for p in cache.glob(f"{key}-*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in copies[2:]:
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target
