"""Precision modes for inference and training: "fp32" (exact, the default), "bf16", "fp16", "auto".

"bf16" / "fp16" run the model under `torch.autocast`, so only the learned convolutions compute in 16 bits.
Everything else stays float32: the blur operators with their FFTs and the Eq. (22) initialisation
(`utils.operators` turns autocast off and upcasts), NRL-GDN's iterate x (x + D(...) promotes to float32)
and its early-stop test, and the losses (the engine computes them outside autocast). "fp16" needs a CUDA
GPU. "auto" measures instead of guessing: a short probe times one bf16 and one fp32 convolution on the
device at hand (cached per process) and picks bf16 when it is at least AUTO_MIN_SPEEDUP× faster — on a CPU
without native bf16 (AVX2 only) bf16 is many times slower and "auto" stays fp32.

    net = with_precision(net, "bf16")      # a module that runs net(y, k) so and returns float32 outputs
    with autocast_for("auto", device):     # the same mode as a context (the training loop uses this)
        out = net(y, k)
"""
from __future__ import annotations

import contextlib
import functools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.wrappers import ModelWrapper
from utils.operators import LOW_PRECISION, no_autocast

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
AUTO_MIN_SPEEDUP = 1.2      # below this the probe's timing noise could flip the choice
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")   # x86 (AVX-512 BF16, AMX) and aarch64 flags


def check_precision(precision: str, key: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{key} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def native_bf16(device="cpu") -> bool:
    """Whether the device computes bfloat16 in hardware (CPU: AVX-512 BF16 / AMX / Arm BF16 flags)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = {word for line in f if line.lower().startswith(("flags", "features")) for word in line.split()}
    except OSError:      # no /proc (macOS, Windows): unknown, the probe still decides "auto"
        return False
    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)


def _time_conv(x: torch.Tensor, weight: torch.Tensor, dtype, repeats: int = 3) -> float:
    """Best time of `repeats` 3×3 convolutions under autocast to `dtype` (None: float32), after a warm-up."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    best = float("inf")
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for i in range(repeats + 1):     # the first call creates the kernels (oneDNN primitives, cuDNN plans)
            sync()
            start = time.perf_counter()
            F.conv2d(x, weight, padding=1)
            sync()
            best = min(best, time.perf_counter() - start) if i else best
    return best


@functools.lru_cache(maxsize=None)
def _probe(device: str) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 32, 96, 96, generator=g).to(device, memory_format=torch.channels_last)
    weight = torch.rand(32, 32, 3, 3, generator=g).to(device, memory_format=torch.channels_last)
    return _time_conv(x, weight, None) / _time_conv(x, weight, torch.bfloat16)


def probe_bf16_speedup(device="cpu") -> float:
    """fp32 time / bf16 time of a 32→32 3×3 convolution on 96×96 (about 10 ms on a CPU; cached per device)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return 0.0
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(str(device))


def resolve_precision(precision: str, device="cpu") -> str:
    """The concrete mode ("fp32", "bf16" or "fp16") that `precision` means on `device`."""
    check_precision(precision)
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' runs on a CUDA GPU only (device {device}); use 'bf16' or 'auto'")
    if precision != "auto":
        return precision
    return "bf16" if probe_bf16_speedup(device) >= AUTO_MIN_SPEEDUP else "fp32"


def autocast_for(precision: str, device="cpu"):
    """A context running a model in `precision` on `device` (fp32: autocast off, even inside another)."""
    device = torch.device(device)
    mode = resolve_precision(precision, device)
    if mode == "fp32":
        return no_autocast(device.type)
    return torch.autocast(device.type, dtype=_DTYPES[mode])


def _restore_dtype(out, dtype):
    """Outputs computed in 16 bits returned in the input's dtype, through dicts, lists and tuples."""
    if torch.is_tensor(out):
        return out.to(dtype) if out.dtype in LOW_PRECISION and dtype not in LOW_PRECISION else out
    if isinstance(out, dict):
        return {key: _restore_dtype(value, dtype) for key, value in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_restore_dtype(value, dtype) for value in out)
    return out


class WithPrecision(ModelWrapper):
    """`module(*inputs)` under `autocast_for(precision, <device of the first input>)`; outputs come back in
    the first input's dtype (float32 for float32 images)."""

    def __init__(self, module: nn.Module, precision: str):
        super().__init__(module)
        self.precision = check_precision(precision)

    def forward(self, *inputs):
        first = inputs[0]
        with autocast_for(self.precision, first.device):
            out = self.module(*inputs)
        return _restore_dtype(out, first.dtype)

    def extra_repr(self) -> str:
        return f"precision={self.precision!r}"


def with_precision(net: nn.Module, precision: str) -> nn.Module:
    """`net` running in `precision` ("fp32": net itself, unwrapped; "bf16", "fp16", "auto": a WithPrecision)."""
    check_precision(precision)
    if isinstance(net, WithPrecision):
        net = net.module
    return net if precision == "fp32" else WithPrecision(net, precision)


def precision_context(net: nn.Module, device="cpu"):
    """The context of the first WithPrecision around `net` (through any ModelWrappers), else a no-op: for
    code that calls a wrapped model's parts directly (models.tiling steps NRL-GDN's `update`)."""
    while isinstance(net, ModelWrapper):
        if isinstance(net, WithPrecision):
            return autocast_for(net.precision, device)
        net = net.module
    return contextlib.nullcontext()
