"""The PyTorch backend: eager (optionally `torch.compile`d); on a GPU channels-last with autocast, on a CPU
fp32, or bf16 where the CPU computes it in hardware (AMX / AVX512-BF16)."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn as nn

from ..images import to_model_input
from ..models.common import cpu_has_native_bf16, cuda_has_native_bf16, to_device, tune_cuda
from .engine import REDUCED_TOLERANCE, Engine, EngineError, EngineInfo, cpu_threads

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
        if precision not in DTYPES:
            raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(DTYPES)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = DTYPES[precision]
        #: on a CPU, reduced precision is a bf16 copy of the model's weights: autocast, which would cast every
        #: activation on the way in and out, took 0.90 s against the copy's 0.64 s (the shipped model, 800²,
        #: 1 thread; a scratch timing)
        self.cast_weights = self.device.type == "cpu" and precision != "fp32"
        #: NHWC: the GPU's tensor cores, and oneDNN's AMX kernels on a CPU
        self.channels_last = self.device.type == "cuda" or self.cast_weights
        if self.device.type == "cpu":
            check_cpu_precision(precision)
            torch.set_num_threads(threads or cpu_threads())
        else:
            if precision == "bf16" and not cuda_has_native_bf16(torch.cuda.get_device_capability(self.device)):
                name, (major, minor) = (
                    torch.cuda.get_device_name(self.device),
                    torch.cuda.get_device_capability(self.device),
                )
                raise EngineError(
                    f"{name} (compute capability {major}.{minor}) has no bf16 in hardware (it needs 8.0 or later); "
                    "use fp16 or fp32"
                )
            tune_cuda(fixed_shapes=False)
        model = fp32_model = model.eval().to(self.device)
        if self.cast_weights:
            model = copy.deepcopy(model).to(self.dtype)  # the caller's model stays fp32
        if self.channels_last:
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
        if precision != "fp32":
            self._check_against(fp32_model, precision)

    @torch.inference_mode()
    def _check_against(self, fp32_model: nn.Module, precision: str) -> None:
        """Reduced precision must give the fp32 model's image: on a real photo, the mean error within
        REDUCED_TOLERANCE, the bound compile.py holds TensorRT to. A model whose layers amplify rounding
        (a random-weight DeblurGAN-v2 MobileNet drifts by ~0.08) is refused instead of running subtly wrong."""
        probe = probe_photo(self.info.multiple)
        with strict_fp32():  # the reference is fp32 itself, not TF32
            expected = fp32_model(to_device(torch.from_numpy(probe), self.device)).float().cpu().numpy()
        error = float(np.abs(self._infer(probe) - expected).mean())
        if not error <= REDUCED_TOLERANCE[precision]:  # NaN included
            raise EngineError(
                f"{self.info.source or 'this model'}: {precision} changes its output by {error:.1e} on average "
                f"(more than {REDUCED_TOLERANCE[precision]:.0e}); use fp32"
            )
        self.info.extra["mean_error_vs_fp32"] = round(error, 6)

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = to_device(torch.from_numpy(batch), self.device)
        if self.cast_weights:
            return self.model(x.to(self.dtype, memory_format=torch.channels_last)).float().numpy()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            y = self.model(x)
        return y.float().cpu().numpy()


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for the duration (tune_cuda turns it on for speed); a no-op on a CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def probe_photo(multiple: int) -> np.ndarray:
    """A real photo (scikit-image's astronaut) as a 1×3×S×S model input, S ≥ 128 and a multiple of the stride."""
    import skimage.data

    side = multiple * -(-128 // multiple)
    return to_model_input(skimage.data.astronaut()[:side, 96 : 96 + side][None])


def check_cpu_precision(precision: str) -> None:
    """Refuse a precision this CPU would only emulate (slower than fp32, for a less exact image)."""
    if precision == "fp16":
        raise EngineError("fp16 inference needs a GPU; on a CPU use bf16 (with AMX or AVX512-BF16) or fp32")
    if precision == "bf16" and not cpu_has_native_bf16():
        raise EngineError("bf16 inference needs a CPU with AMX or AVX512-BF16 (this one would emulate it); use fp32")
