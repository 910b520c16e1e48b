"""ONNX export of a generator, and the ONNX Runtime backend (CPU, or CUDA when the provider exists).

The exported graph takes batches already padded to the model's stride (the `Engine` pads), with dynamic
batch, height and width. torch's dynamo exporter writes large weights to `<name>.onnx.data` beside the
graph; the two files always travel together, and loading checks for the data file by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from .engine import Engine, EngineError, EngineInfo, cpu_threads

OPSET = 18
INPUT, OUTPUT = "blurred", "deblurred"
#: what `export_onnx` writes; a change that makes an export from the same checkpoint differ bumps it, so the
#: local cache of exports (named by checkpoint hash and this) never serves an older graph
EXPORT_VERSION = 2

if TYPE_CHECKING:  # only exporting needs torch; running an exported graph does not
    import torch.nn as nn


def export_onnx(model: nn.Module, path: str | os.PathLike, multiple: int, opset: int = OPSET) -> list[Path]:
    """Write `path` (+ `path.data` when the exporter externalises weights); returns the files written."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    # a batch of 2: from a batch of 1 the tracer can derive guards that contradict the dynamic batch range
    # (NAFNet's channels-last layer_norm did: batch <= 2), and the export fails
    example = torch.zeros(2, 3, 2 * multiple, 2 * multiple)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dims = {
        2: multiple * torch.export.Dim("h_blocks", min=1, max=max(1, 8192 // multiple)),
        3: multiple * torch.export.Dim("w_blocks", min=1, max=max(1, 8192 // multiple)),
    }
    with torch.inference_mode(False), torch.no_grad():
        if hasattr(model, "for_inference"):  # an equivalent graph that ONNX Runtime runs faster (NAFNet)
            model = model.for_inference()
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"x": {0: batch, **dims}},
            verbose=False,
        )
        program.save(str(path), external_data=True)
    onnx.checker.check_model(str(path), full_check=False)
    return [p for p in (path, Path(f"{path}.data")) if p.exists()]


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The graph and every external-data file it names; a missing one is an EngineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: ONNX model not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends on truncated files
        raise EngineError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
    files = {path}
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                data = path.parent / entry.value
                if not data.is_file():
                    raise EngineError(
                        f"{path}: its weights file {data.name} is missing; copy {path.name} and {data.name} together"
                    )
                files.add(data)
    return sorted(files)


#: cuDNN's convolution algorithm choice: ONNX Runtime's default, EXHAUSTIVE, benchmarks every algorithm for every
#: new input shape, and photos come in many sizes (seconds on each new size); HEURISTIC asks cuDNN's heuristics
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def ort_providers(device: str = "auto", available: list[str] | None = None) -> list:
    """ONNX Runtime's providers (with options) for a device: CUDA first where it is available and allowed."""
    available = ort.get_available_providers() if available is None else available
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", dict(CUDA_OPTIONS)), "CPUExecutionProvider"]
    if device == "cuda":
        raise EngineError("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


class OnnxEngine(Engine):
    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        threads: int | None = None,
        multiple: int | None = None,
        model_hash: str = "",
    ):
        path = Path(path)
        onnx_files(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # ORT's idle threads spin for a while after each run. Alone that buys ~3 % at 256² and nothing at
        # 720p; beside a Serve replica's codecs and proxy, a Ray Data job or a second engine on the same
        # cores, the spinning takes the CPU they need (measured: +280 ms per 720p request through Serve).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ort_providers(device)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            raise EngineError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.input = self.session.get_inputs()[0].name
        on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.info = EngineInfo(
            "onnxruntime",
            "cuda" if on_gpu else "cpu",
            "fp32",
            int(multiple or meta.get("multiple", 1)),
            str(path),
            model_hash or meta.get("model_hash", ""),
            {"providers": self.session.get_providers(), "threads": opts.intra_op_num_threads},
        )

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0]


def add_metadata(path: str | os.PathLike, **values: str) -> None:
    """Record the stride and source hash inside the graph, so an .onnx file is self-describing."""
    proto = onnx.load(str(path), load_external_data=False)
    for key, value in values.items():
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))
