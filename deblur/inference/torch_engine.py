"""The PyTorch backend: eager (optionally `torch.compile`d), channels-last, autocast on GPU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..models.common import to_device, tune_cuda
from .engine import Engine, EngineInfo, cpu_threads

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine(Engine):
    def __init__(
        self,
        model: nn.Module,
        source: str = "",
        device: str | None = None,
        precision: str = "fp32",
        compile: bool = False,
        model_hash: str = "",
        threads: int | None = None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            torch.set_num_threads(threads or cpu_threads())
            precision = "fp32"  # CPU autocast of convolutions is slower than fp32 and less exact
        self.dtype = PRECISIONS[precision]
        model = model.eval().to(self.device)
        if self.device.type == "cuda":
            tune_cuda(fixed_shapes=False)
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model, dynamic=True) if compile else model
        reported = "tf32" if self.device.type == "cuda" and precision == "fp32" else precision  # tune_cuda allows TF32
        self.info = EngineInfo(
            "torch",
            str(self.device),
            reported,
            int(getattr(model, "multiple", 1)),
            source,
            model_hash,
            {"compiled": bool(compile), "threads": torch.get_num_threads() if self.device.type == "cpu" else None},
        )

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = to_device(torch.from_numpy(batch), self.device)
        if self.device.type == "cuda":  # NHWC for the tensor cores
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            y = self.model(x)
        return y.float().cpu().numpy()
