"""MATLAB-compatible ``imresize`` for torch tensors (differentiable) and numpy arrays.

Follows MATLAB's algorithm (imresize.m, ``contributions``): output size ``ceil(scale·in)``; output
pixel ``i`` (1-based) samples input coordinate ``u = i/s + (1 - 1/s)/2``; when shrinking with
antialiasing the kernel is stretched, ``h(x) = s·k(s·x)`` with width ``w/s``; weights are normalised
to sum 1; indices outside the image are mirrored (``symmetric``: ``[1..n, n..1]`` repeated).
Each dimension is a linear map, applied as a dense ``out×in`` matrix (H first, then W; the two
commute), so gradients flow to the input and GPU/CPU both use plain matmuls.

Layouts: torch ``N×C×H×W``, ``C×H×W`` or ``H×W`` (last two dims resized); numpy ``H×W`` or
``H×W×C`` (first two dims resized, as MATLAB), returned as numpy.
"""
from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np
import torch


def _cubic(x):
    """Keys cubic with a = -0.5 (MATLAB 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _triangle(x):
    return (1 - np.abs(x)) * (np.abs(x) <= 1)


def _box(x):
    return ((x >= -0.5) & (x < 0.5)).astype(np.float64)


def _lanczos(a: int):
    def kernel(x):
        eps = np.finfo(np.float64).eps   # MATLAB's guard against 0/0 at x = 0
        return ((np.sin(np.pi * x) * np.sin(np.pi * x / a) + eps)
                / ((np.pi ** 2 * x ** 2 / a) + eps)) * (np.abs(x) < a)
    return kernel


# name -> (kernel, kernel width), as MATLAB's imresize
KERNELS = {
    "cubic": (_cubic, 4.0), "bicubic": (_cubic, 4.0),
    "linear": (_triangle, 2.0), "bilinear": (_triangle, 2.0), "triangle": (_triangle, 2.0),
    "box": (_box, 1.0),
    "lanczos2": (_lanczos(2), 4.0), "lanczos3": (_lanczos(3), 6.0),
}


@lru_cache(maxsize=256)
def resize_matrix(in_len: int, out_len: int, scale: float, kernel: str = "cubic",
                  antialiasing: bool = True) -> np.ndarray:
    """The out_len×in_len float64 matrix of MATLAB's 1-D resize (read-only; cached)."""
    func, width = KERNELS[kernel]
    if scale < 1 and antialiasing:
        h = lambda t: scale * func(scale * t)   # noqa: E731  stretched kernel = low-pass before sampling
        width = width / scale
    else:
        h = func
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    weights = h(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), idx0.ravel()), weights.ravel())
    matrix.setflags(write=False)
    return matrix


def _pair(value, name: str):
    if isinstance(value, numbers.Real):
        return float(value), float(value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return float(value[0]), float(value[1])
    raise ValueError(f"{name} must be a number or a pair (H, W), got {value!r}")


def _out_len(in_len: int, scale: float) -> int:
    exact = scale * in_len
    nearest = round(exact)
    return int(nearest) if abs(exact - nearest) < 1e-9 else int(math.ceil(exact))


def output_size(in_hw, scale=None, output_shape=None):
    """(out_h, out_w) and (scale_h, scale_w) as MATLAB derives them from a scale or an output size."""
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of scale and output_shape")
    if scale is not None:
        scales = _pair(scale, "scale")
        if min(scales) <= 0:
            raise ValueError(f"imresize: scale must be positive, got {scale!r}")
        return tuple(_out_len(n, s) for n, s in zip(in_hw, scales)), scales
    shape = _pair(output_shape, "output_shape")
    if min(shape) < 1 or any(int(v) != v for v in shape):
        raise ValueError(f"imresize: output_shape must be two positive ints, got {output_shape!r}")
    out = (int(shape[0]), int(shape[1]))
    return out, (out[0] / in_hw[0], out[1] / in_hw[1])


def imresize(x, scale=None, output_shape=None, antialiasing: bool = True, kernel: str = "cubic"):
    """Resize the last two dims of a torch tensor (first two of a numpy array) like MATLAB's imresize.

    scale: number or (sh, sw), output size ``ceil(scale·in)``; output_shape: (H_out, W_out).
    antialiasing applies only when shrinking, as in MATLAB. Kernels: see ``KERNELS``.
    Float inputs keep their dtype; a non-float numpy array is resized in float64 (no rounding).
    """
    if kernel not in KERNELS:
        raise ValueError(f"imresize: unknown kernel {kernel!r}; choose one of {sorted(KERNELS)}")
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3):
            raise ValueError(f"imresize: numpy input must be H×W or H×W×C, got shape {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x.astype(np.float64, copy=False), (0, 1), (-2, -1))))
        out = imresize(t, scale, output_shape, antialiasing, kernel)
        return np.moveaxis(out.numpy(), (-2, -1), (0, 1)).astype(x.dtype if x.dtype.kind == "f" else np.float64)
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"imresize: expected a tensor N×C×H×W, C×H×W or H×W, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"imresize: expected a float tensor, got {x.dtype}")
    (out_h, out_w), (s_h, s_w) = output_size(tuple(x.shape[-2:]), scale, output_shape)
    in_h, in_w = x.shape[-2:]
    if (out_h, s_h) != (in_h, 1.0):
        m_h = torch.tensor(resize_matrix(in_h, out_h, s_h, kernel, antialiasing), dtype=x.dtype, device=x.device)
        x = torch.matmul(m_h, x)
    if (out_w, s_w) != (in_w, 1.0):
        m_w = torch.tensor(resize_matrix(in_w, out_w, s_w, kernel, antialiasing), dtype=x.dtype, device=x.device)
        x = torch.matmul(x, m_w.t())
    return x


def resize_to(y: torch.Tensor, size) -> torch.Tensor:
    """y at spatial `size` by MATLAB bicubic (a super-resolution input shown at the output size), else y."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return imresize(y.float(), output_shape=tuple(size))
