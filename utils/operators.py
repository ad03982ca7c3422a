"""Blur operators on batches: one kernel per sample, float32/64, CPU/GPU.

Convention: `conv(x, k)` is the convolution of `scipy.ndimage.convolve` ("same" size, kernel centre at
index h//2, w//2), so `conv_circular` equals `ndimage.convolve(mode='wrap')` and `conv` with zero
padding equals `ndimage.convolve(mode='constant')`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kernel_batch(k: torch.Tensor, n: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Return kernels as N×1×h×w (accepts h×w, 1×h×w, N×h×w, N×1×h×w); checks rank and batch size."""
    if not torch.is_tensor(k):
        k = torch.as_tensor(k)
    if k.dim() == 2:
        k = k[None, None]
    elif k.dim() == 3:
        k = k[:, None]
    elif k.dim() != 4 or k.shape[1] != 1:
        raise ValueError(f"kernel must be h×w, N×h×w or N×1×h×w, got shape {tuple(k.shape)}")
    if k.shape[0] == 1 and n > 1:
        k = k.expand(n, -1, -1, -1)
    if k.shape[0] != n:
        raise ValueError(f"got {k.shape[0]} kernels for a batch of {n} images")
    if like is not None:
        k = k.to(device=like.device, dtype=like.dtype)
    return k


def _same_padding(kh: int, kw: int):
    """(left, right, top, bottom) zero padding that makes correlation with the flipped kernel a
    'same' convolution centred at (kh//2, kw//2)."""
    top, left = kh - 1 - kh // 2, kw - 1 - kw // 2
    return left, kw - 1 - left, top, kh - 1 - top


def _grouped_correlate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Valid correlation of every channel of sample i with kernel i (x already padded)."""
    n, c, h, w = x.shape
    weight = k.repeat_interleave(c, dim=0) if c > 1 else k
    out = F.conv2d(x.reshape(1, n * c, h, w), weight, groups=n * c)
    return out.reshape(n, c, out.shape[-2], out.shape[-1])


def conv_direct(x: torch.Tensor, k: torch.Tensor, padding_mode: str = "constant") -> torch.Tensor:
    """A x: 'same' convolution, zero ('constant'), 'replicate', 'reflect' or 'circular' boundary."""
    k = kernel_batch(k, x.shape[0], x)
    pad = _same_padding(k.shape[-2], k.shape[-1])
    x = F.pad(x, pad, mode=padding_mode) if padding_mode != "constant" else F.pad(x, pad)
    return _grouped_correlate(x, torch.flip(k, dims=(-2, -1)))


def conv_adjoint_direct(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Aᵀ y for the zero-padded A: 'same' correlation with the mirrored padding."""
    k = kernel_batch(k, y.shape[0], y)
    left, right, top, bottom = _same_padding(k.shape[-2], k.shape[-1])
    return _grouped_correlate(F.pad(y, (right, left, bottom, top)), k)


def _fft_shape(h: int, w: int, kh: int, kw: int):
    return h + kh - 1, w + kw - 1


def conv_fft(x: torch.Tensor, k: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """A x (or Aᵀ x) with zero padding through an FFT of the linear (non-circular) convolution."""
    k = kernel_batch(k, x.shape[0], x)
    h, w = x.shape[-2:]
    kh, kw = k.shape[-2:]
    fh, fw = _fft_shape(h, w, kh, kw)
    kf = torch.fft.rfft2(k, s=(fh, fw))
    if adjoint:
        # Aᵀ y = crop of the full correlation; embed y where A's 'same' window sits in the full output.
        ch, cw = kh // 2, kw // 2
        yf = torch.fft.rfft2(F.pad(x, (cw, kw - 1 - cw, ch, kh - 1 - ch)), s=(fh, fw))
        full = torch.fft.irfft2(yf * kf.conj(), s=(fh, fw))
        return full[..., :h, :w]
    full = torch.fft.irfft2(torch.fft.rfft2(x, s=(fh, fw)) * kf, s=(fh, fw))
    ch, cw = kh // 2, kw // 2
    return full[..., ch:ch + h, cw:cw + w]


def fft_is_faster(h: int, w: int, kh: int, kw: int) -> bool:
    """Cost model for choosing the FFT path: direct ~ H·W·kh·kw, FFT ~ a few passes of N log N."""
    fh, fw = _fft_shape(h, w, kh, kw)
    direct = h * w * kh * kw
    fft = 12.0 * fh * fw * math.log2(fh * fw)
    return fft < direct


def conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A x with zero padding; FFT path when it is cheaper (large kernels)."""
    kh, kw = (k.shape[-2], k.shape[-1])
    if fft_is_faster(x.shape[-2], x.shape[-1], kh, kw):
        return conv_fft(x, k)
    return conv_direct(x, k)


def conv_adjoint(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Aᵀ y with zero padding; FFT path when it is cheaper."""
    kh, kw = (k.shape[-2], k.shape[-1])
    if fft_is_faster(y.shape[-2], y.shape[-1], kh, kw):
        return conv_fft(y, k, adjoint=True)
    return conv_adjoint_direct(y, k)


def psf2otf(k: torch.Tensor, shape) -> torch.Tensor:
    """OTF of kernels N×1×h×w on an H×W grid: zero-pad, shift the centre (h//2, w//2) to (0, 0), FFT."""
    kh, kw = k.shape[-2:]
    otf = torch.zeros(k.shape[:-2] + tuple(shape), dtype=k.dtype, device=k.device)
    otf[..., :kh, :kw] = k
    otf = torch.roll(otf, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.fft2(otf)


def conv_circular(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Circular convolution by FFT; equals `scipy.ndimage.convolve(x, k, mode='wrap')`."""
    k = kernel_batch(k, x.shape[0], x)
    h, w = x.shape[-2:]
    if k.shape[-2] > h or k.shape[-1] > w:
        return conv_direct(x, k, padding_mode="circular")
    otf = psf2otf(k, (h, w))
    return torch.fft.ifft2(torch.fft.fft2(x) * otf).real
