"""Blur operators on batches: one kernel per sample, float32/64, CPU/GPU.

Under autocast, or given float16/bfloat16 images, every operator computes (and returns) float32: cuFFT
has no bfloat16 transform and takes float16 only for power-of-two sizes, and the residual y − A x of a
low-noise image is lost in 8 bits of mantissa.

Convention: `conv(x, k)` is the convolution of `scipy.ndimage.convolve` ("same" size, kernel centre at
index h//2, w//2), so `conv_circular` equals `ndimage.convolve(mode='wrap')` and `conv` with zero
padding equals `ndimage.convolve(mode='constant')`.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings

import torch
import torch.nn.functional as F

from utils.config import DataError

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the operators compute in: float32 for float16/bfloat16, else `dtype` itself."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def no_autocast(device_type: str):
    """A context that turns autocast off on `device_type` (a no-op where autocast does not exist)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def full_precision(fn):
    """Run `fn(t, *args)` with autocast off and a float16/bfloat16 first argument upcast to float32."""
    @functools.wraps(fn)
    def wrapper(t, *args, **kwargs):
        if torch.is_tensor(t):
            with no_autocast(t.device.type):
                return fn(t.to(compute_dtype(t.dtype)), *args, **kwargs)
        return fn(t, *args, **kwargs)
    return wrapper


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
    if like is not None:  # float32, never half: a 25×25 kernel in 8 mantissa bits no longer sums to 1
        k = k.to(device=like.device, dtype=compute_dtype(like.dtype))
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


@full_precision
def conv_direct(x: torch.Tensor, k: torch.Tensor, padding_mode: str = "constant") -> torch.Tensor:
    """A x: 'same' convolution, zero ('constant'), 'replicate', 'reflect' or 'circular' boundary."""
    k = kernel_batch(k, x.shape[0], x)
    pad = _same_padding(k.shape[-2], k.shape[-1])
    x = F.pad(x, pad, mode=padding_mode) if padding_mode != "constant" else F.pad(x, pad)
    return _grouped_correlate(x, torch.flip(k, dims=(-2, -1)))


@full_precision
def conv_adjoint_direct(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Aᵀ y for the zero-padded A: 'same' correlation with the mirrored padding."""
    k = kernel_batch(k, y.shape[0], y)
    left, right, top, bottom = _same_padding(k.shape[-2], k.shape[-1])
    return _grouped_correlate(F.pad(y, (right, left, bottom, top)), k)


def fast_fft_size(n: int) -> int:
    """Smallest 7-smooth integer >= n (2^a 3^b 5^c 7^d): FFTs of such sizes are several times faster
    than of sizes with a large prime factor (e.g. 262 = 2*131), and linear convolution may pad freely."""
    n = max(int(n), 1)
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _fft_shape(h: int, w: int, kh: int, kw: int):
    """FFT grid for the zero-padded linear convolution: at least (H+kh-1)×(W+kw-1), rounded up to fast sizes."""
    return fast_fft_size(h + kh - 1), fast_fft_size(w + kw - 1)


@full_precision
def conv_fft(x: torch.Tensor, k: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """A x (or Aᵀ x) with zero padding through an FFT of the linear (non-circular) convolution."""
    k = kernel_batch(k, x.shape[0], x)
    h, w = x.shape[-2:]
    kh, kw = k.shape[-2:]
    fh, fw = _fft_shape(h, w, kh, kw)
    kf = torch.fft.rfft2(k, s=(fh, fw))
    ch, cw = kh // 2, kw // 2
    if adjoint:
        # Aᵀ y = crop of the full correlation; embed y where A's 'same' window sits in the full output.
        yf = torch.fft.rfft2(F.pad(x, (cw, kw - 1 - cw, ch, kh - 1 - ch)), s=(fh, fw))
        full = torch.fft.irfft2(yf * kf.conj(), s=(fh, fw))
        return full[..., :h, :w]
    full = torch.fft.irfft2(torch.fft.rfft2(x, s=(fh, fw)) * kf, s=(fh, fw))
    return full[..., ch:ch + h, cw:cw + w]


# Cost model fitted to `python benchmarks/bench_nrlgdn.py --operators --threads 1` (2-core AVX-512 CPU,
# torch 2.13, CPU time, N∈{1,4}×3 planes, H∈{64..512}, k∈{5..49}; it picks the faster path in 35/38
# cases, the 3 misses being near-ties). The direct path is a depthwise conv that oneDNN vectorises over
# planes 16 at a time (1×3 planes cost as much as 16) with ~64 multiply-adds of per-pixel overhead.
FFT_COST_FACTOR = 18.0  # FFT cost per plane·element·log2(size), in direct multiply-add units
DIRECT_OVERHEAD_TAPS = 64
DIRECT_SIMD_PLANES = 16
FFT_MIN_KERNEL_TAPS = 36  # below 6×6 the two paths tie at best: stay direct (exact zero padding, no FFT noise)
# The CPU cost model says nothing about a GPU: on these device types both paths are timed once per process
# and problem size (a few ms, one sync) and the faster one is kept.
MEASURED_DEVICE_TYPES = {"cuda"}
_measured_choice = {}


def fft_is_faster(h: int, w: int, kh: int, kw: int, planes: int = 3, device=None) -> bool:
    """Whether the FFT path is expected to beat the direct one for `planes` (= N·C) images of H×W:
    the fitted CPU cost model, or on `device` of a type in MEASURED_DEVICE_TYPES the measured answer."""
    if kh * kw < FFT_MIN_KERNEL_TAPS:
        return False
    if device is not None and torch.device(device).type in MEASURED_DEVICE_TYPES:
        return measured_fft_is_faster(h, w, kh, kw, planes, torch.device(device))
    fh, fw = _fft_shape(h, w, kh, kw)
    lanes = math.ceil(planes / DIRECT_SIMD_PLANES) * DIRECT_SIMD_PLANES
    direct = lanes * h * w * (kh * kw + DIRECT_OVERHEAD_TAPS)
    fft = FFT_COST_FACTOR * planes * fh * fw * math.log2(fh * fw)
    return fft < direct


def _seconds(fn, device: torch.device, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of fn() on `device` (after one warm-up call)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measured_fft_is_faster(h: int, w: int, kh: int, kw: int, planes: int, device: torch.device) -> bool:
    """Time the direct and the FFT blur once for this size on `device` (float32, no autograd) and
    remember the faster; later calls with the same size cost a dictionary lookup."""
    key = (device.type, device.index, h, w, kh, kw, planes)
    if key not in _measured_choice:
        with torch.inference_mode(), no_autocast(device.type):
            x = torch.rand(planes, 1, h, w, device=device)
            k = torch.full((planes, 1, kh, kw), 1.0 / (kh * kw), device=device)
            direct = _seconds(lambda: conv_direct(x, k), device)
            fft = _seconds(lambda: conv_fft(x, k), device)
        _measured_choice[key] = fft < direct
    return _measured_choice[key]


def conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A x with zero padding; FFT path when it is cheaper (large kernels)."""
    kh, kw = (k.shape[-2], k.shape[-1])
    if fft_is_faster(x.shape[-2], x.shape[-1], kh, kw, x.shape[0] * x.shape[1], x.device):
        return conv_fft(x, k)
    return conv_direct(x, k)


def conv_adjoint(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Aᵀ y with zero padding; FFT path when it is cheaper."""
    kh, kw = (k.shape[-2], k.shape[-1])
    if fft_is_faster(y.shape[-2], y.shape[-1], kh, kw, y.shape[0] * y.shape[1], y.device):
        return conv_fft(y, k, adjoint=True)
    return conv_adjoint_direct(y, k)


@full_precision
def psf2otf(k: torch.Tensor, shape, onesided: bool = False) -> torch.Tensor:
    """OTF of kernels N×1×h×w on an H×W grid: zero-pad, shift the centre (h//2, w//2) to (0, 0), FFT.
    `onesided=True` returns the rfft2 half spectrum (last axis W//2+1)."""
    kh, kw = k.shape[-2:]
    otf = torch.zeros(k.shape[:-2] + tuple(shape), dtype=k.dtype, device=k.device)
    otf[..., :kh, :kw] = k
    otf = torch.roll(otf, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(otf) if onesided else torch.fft.fft2(otf)


def _wrap_kernels(out: torch.Tensor, k: torch.Tensor):
    """Write kernels N×h×w into the zeroed N×H×W `out` with their centre (h//2, w//2) moved to (0, 0),
    periodically (the zero-padded, circularly shifted PSF whose FFT is the OTF; no roll needed)."""
    h, w = out.shape[-2:]
    kh, kw = k.shape[-2:]
    ch, cw = kh // 2, kw // 2
    out.zero_()
    out[..., :kh - ch, :kw - cw] = k[..., ch:, cw:]
    if cw:
        out[..., :kh - ch, w - cw:] = k[..., ch:, :cw]
    if ch:
        out[..., h - ch:, :kw - cw] = k[..., :ch, cw:]
    if ch and cw:
        out[..., h - ch:, w - cw:] = k[..., :ch, :cw]


@full_precision
def conv_circular(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Circular convolution by FFT; equals `scipy.ndimage.convolve(x, k, mode='wrap')`. The kernel is
    wrapped into place instead of zero-padded and rolled, and its half spectrum is shared by the channels."""
    k = kernel_batch(k, x.shape[0], x)
    h, w = x.shape[-2:]
    if k.shape[-2] > h or k.shape[-1] > w:  # wraps more than once: direct periodic convolution
        return conv_direct(x, k, padding_mode="circular")
    psf = x.new_empty((k.shape[0], 1, h, w))
    _wrap_kernels(psf, k)
    spectrum, otf = torch.fft.rfft2(x), torch.fft.rfft2(psf)
    if torch.is_grad_enabled() and (x.requires_grad or k.requires_grad):
        spectrum = spectrum * otf
    else:  # in place: one buffer less per image
        spectrum.mul_(otf)
    return torch.fft.irfft2(spectrum, s=(h, w))


@full_precision
def conv_circular_adjoint(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Aᵀ y for the circular A of `conv_circular` (any kernel size up to the image's): conj(OTF) by FFT."""
    k = kernel_batch(k, y.shape[0], y)
    h, w = y.shape[-2:]
    otf = psf2otf(k, (h, w), onesided=True)
    return torch.fft.irfft2(torch.fft.rfft2(y) * otf.conj(), s=(h, w))


@full_precision
def conv_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Valid convolution: the (H−h+1)×(W−w+1) pixels of k ∗ x whose kernel window lies inside x, the
    blur of `data.degrade.blur(mode='valid')` (by FFT: on x's own grid no kept pixel wraps around)."""
    left, right, top, bottom = kernel_padding(*k.shape[-2:])
    h, w = x.shape[-2:]
    return conv_circular(x, k)[..., top:h - bottom, left:w - right]


@full_precision
def conv_valid_adjoint(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Aᵀ of `conv_valid`: y zero-padded to the extended (H+h−1)×(W+w−1) grid, then the circular adjoint."""
    return conv_circular_adjoint(F.pad(y, kernel_padding(*k.shape[-2:])), k)


def crop_extended(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The H×W centre of an extended (H+h−1)×(W+w−1) image: the pixels a valid blur's output sits on."""
    left, right, top, bottom = kernel_padding(*k.shape[-2:])
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def periodic_extend(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x on the extended (H+h−1)×(W+w−1) grid, wrapped around: valid(periodic_extend(x)) = circular(x)."""
    return F.pad(x, kernel_padding(*k.shape[-2:]), mode="circular")


def periodic_fold(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Adjoint of `periodic_extend`: the extended grid's border added back onto the pixels it wraps from."""
    left, right, top, bottom = kernel_padding(*k.shape[-2:])
    size = (z.shape[-2] - top - bottom, z.shape[-1] - left - right)
    return _pad_adjoint(z, (left, right, top, bottom), size, "circular")


PERIODIC_RATIO = 2.0   # circular blurs measured ≤ 2.11, valid (real-border) blurs ≥ 2.38: see looks_periodic


def _edge_ratio(z: torch.Tensor) -> torch.Tensor:
    """Jump across the top/bottom wrap over the jump between neighbouring 2-row bands inside, per sample;
    the bands are averaged over 9 pixels along the edge so that noise cancels and the blurred content stays."""
    def along(v):
        return F.avg_pool1d(v.reshape(-1, 1, v.shape[-1]), min(9, v.shape[-1]), 1).reshape(v.shape[0], -1)

    top, top2 = z[..., 0:2, :].mean(-2), z[..., 2:4, :].mean(-2)
    bottom, bottom2 = z[..., -2:, :].mean(-2), z[..., -4:-2, :].mean(-2)
    wrap = along(top - bottom).abs().mean(-1)
    inside = (along(top - top2).abs().mean(-1) + along(bottom - bottom2).abs().mean(-1)) / 2
    return wrap / (inside + 1e-4)


@full_precision
def looks_periodic(y: torch.Tensor, threshold: float = PERIODIC_RATIO) -> torch.Tensor:
    """Per sample (bool, N): whether y looks circularly blurred, i.e. each border continues smoothly into the
    opposite one. A circular blur makes the wrap as smooth as the inside; a photo's opposite borders show
    different scene content. Measured on 200×200 crops of Set12, McMaster and 100 CBSD432 images × Levin's 8
    kernels × σ ∈ {0, 2.55, 25}/255 (tests/test_boundary.py): ratio ≤ 2.11 circular, ≥ 2.38 valid; an image
    whose opposite borders agree is one the periodic model fits anyway. Images under 8 px: never periodic."""
    if min(y.shape[-2:]) < 8:
        return torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    ratio = torch.maximum(_edge_ratio(y), _edge_ratio(y.transpose(-1, -2)))
    return ratio <= threshold


# The boundaries with an FFT path and an Eq. (22) solve. 'valid' is the boundary-free model: x lives on the
# extended grid (H+h−1)×(W+w−1) and A keeps only the H×W pixels whose kernel window lies inside it, so every
# blur (periodic, real, replicate, ...) is A of some extension of the sharp image.
BOUNDARIES = ("zeros", "circular", "valid")
PADDED_BOUNDARIES = ("replicate", "reflect")  # direct only (DSDNet's published blur is 'replicate')
ADJOINTS = ("exact", "published")
METHODS = ("auto", "direct")
_PAIRS = {"zeros": (conv, conv_adjoint), "circular": (conv_circular, conv_circular_adjoint),
          "valid": (conv_valid, conv_valid_adjoint)}


def blur_pair(boundary: str):
    """(A(x, k), Aᵀ(y, k)) as functions for a boundary model: 'zeros' (zero-padded 'same' convolution, the
    published NRL-GDN), 'circular' (periodic, the blur of the synthetic test protocols and of Wiener's FFT) or
    'valid' (A: extended (H+h−1)×(W+w−1) grid -> H×W, no assumption about what lies outside the image)."""
    if boundary not in _PAIRS:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    return _PAIRS[boundary]


def kernel_padding(kh: int, kw: int):
    """(left, right, top, bottom) padding that keeps the size for a kernel centred at (kh//2, kw//2)."""
    left, top = (kw - 1) // 2, (kh - 1) // 2
    return left, kw - 1 - left, top, kh - 1 - top


def _pad_index(n: int, before: int, after: int, mode: str, device) -> torch.Tensor:
    """Source index of every padded sample along one axis ('replicate', 'circular' or 'reflect')."""
    j = torch.arange(-before, n + after, device=device)
    if mode == "replicate":
        return j.clamp(0, n - 1)
    if mode == "circular":
        return j % n
    if mode == "reflect":
        period = max(2 * n - 2, 1)
        m = j % period
        return torch.where(m < n, m, period - m)
    raise ValueError(f"no source index for padding mode '{mode}'")


def _pad_adjoint(z: torch.Tensor, pad, size, mode: str) -> torch.Tensor:
    """Adjoint of `F.pad(x, pad, mode)`: every padded sample is added back onto its source pixel (zero
    padding: a crop). No boolean masks, so no host-device sync."""
    left, right, top, bottom = pad
    h, w = size
    for dim, n, before, after in ((-2, h, top, bottom), (-1, w, left, right)):
        if mode == "zeros":
            z = z.narrow(dim, before, n)
            continue
        shape = list(z.shape)
        shape[dim] = n
        z = z.new_zeros(shape).index_add_(dim, _pad_index(n, before, after, mode, z.device), z)
    return z


@full_precision
def padded_conv_adjoint(r: torch.Tensor, k: torch.Tensor, boundary: str) -> torch.Tensor:
    """Exact Aᵀ of `conv_direct(·, k, boundary)` for any padding: full transposed convolution, then the
    adjoint of the padding (padded samples added back onto their sources)."""
    k = kernel_batch(k, r.shape[0], r)
    n, c, h, w = r.shape
    kh, kw = k.shape[-2:]
    weight = torch.flip(k, dims=(-2, -1)).repeat_interleave(c, dim=0)
    full = F.conv_transpose2d(r.reshape(1, n * c, h, w), weight, groups=n * c)
    full = full.reshape(n, c, h + kh - 1, w + kw - 1)
    return _pad_adjoint(full, kernel_padding(kh, kw), (h, w), boundary)


class Blur:
    """The blur operator A x = k ∗ x ('same' size, scipy.ndimage convention) and its adjoint, for one batch
    of kernels (h×w … N×1×h×w), in the style of deepinv's `Blur(filter, padding)`.

    boundary: 'zeros' | 'circular' (FFT or direct, whichever `fft_is_faster` expects to be faster; both
    have an Eq. (22) solve, `eq22_solve(y, Blur)`) | 'valid' (A maps the extended (H+h−1)×(W+w−1) grid to
    H×W, Aᵀ back; its Eq. (22) solve returns the extended grid) | 'replicate' | 'reflect' (direct).
    adjoint: 'exact' (the true Aᵀ, see tests/test_blur_operator.py) or 'published' (DSDNet's approximation:
    a zero-padded correlation whatever the boundary, shifted by one pixel for even kernel sizes).
    method: 'auto' or 'direct' (always the padded direct convolution; DSDNet's published operator).
    Construction costs no device work and no host-device sync."""

    def __init__(self, k, boundary: str = "zeros", adjoint: str = "exact", method: str = "auto"):
        for name, value, allowed in (("boundary", boundary, BOUNDARIES + PADDED_BOUNDARIES),
                                     ("adjoint", adjoint, ADJOINTS), ("method", method, METHODS)):
            if value not in allowed:
                raise ValueError(f"Blur {name} must be one of {allowed}, got {value!r}")
        self.k, self.boundary, self.adjoint_mode = k, boundary, adjoint
        self.direct = method == "direct" or boundary in PADDED_BOUNDARIES

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (operator notation)
        if self.direct and self.boundary == "valid":
            return crop_extended(conv_direct(x, self.k, padding_mode="constant"), self.k)
        if self.direct:
            return conv_direct(x, self.k, padding_mode="constant" if self.boundary == "zeros" else self.boundary)
        return _PAIRS[self.boundary][0](x, self.k)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        if self.adjoint_mode == "published":  # zero-padded correlation with the kernel, padded like A
            return conv_direct(y, torch.flip(self.k, dims=(-2, -1)), padding_mode="constant")
        if self.direct and self.boundary == "valid":
            return padded_conv_adjoint(F.pad(y, kernel_padding(*self.k.shape[-2:])), self.k, "zeros")
        if self.direct:
            return padded_conv_adjoint(y, self.k, self.boundary)
        return _PAIRS[self.boundary][1](y, self.k)

    __call__ = A

    def eq22_solve(self, y: torch.Tensor, reg: float = 0.002, n_tapers: int = 3) -> torch.Tensor:
        """The closed-form Eq. (22) deconvolution of y under this operator (boundary 'zeros' or 'circular';
        kernels already checked): `eq22_solve` below."""
        return eq22_solve(y, self.k, reg, n_tapers, self.boundary)

    def __repr__(self) -> str:
        return f"Blur(k={tuple(self.k.shape)}, boundary={self.boundary!r}, adjoint={self.adjoint_mode!r})"


# ----------------------------------------------------------------------------------------------
# Input checks shared by every (y, k) model
# ----------------------------------------------------------------------------------------------
SUM_TOLERANCE = 1e-3    # |sum(k) − 1| accepted (float32 kernels of the data pipeline are within 1e-6)
_warned_negative = False


def warn_negative_kernel(k, where: str) -> None:
    """Kernels with negative entries (a positive sum) are accepted; say so, once per process."""
    global _warned_negative
    if _warned_negative or not bool((k < 0).any()):
        return
    _warned_negative = True
    warnings.warn(f"{where}: blur kernel with negative entries (min {float(k.min()):.3g}); it is used as given, "
                  "though a blur kernel is normally non-negative (this is said once)", stacklevel=3)


def pad_kernel(k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero-pad a …×kh×kw kernel to h×w keeping its centre (index kh//2 -> h//2)."""
    kh, kw = k.shape[-2:]
    top, left = h // 2 - kh // 2, w // 2 - kw // 2
    return F.pad(k, (left, w - kw - left, top, h - kh - top))


def _stack_kernels(kernels, k_name: str) -> torch.Tensor:
    """A list of h×w kernels of different sizes as one N×h×w tensor, each zero-padded around its centre."""
    ks = [torch.as_tensor(k) for k in kernels]
    if not ks or any(k.dim() != 2 for k in ks):
        raise DataError(f"{k_name}: a list of kernels must hold h×w kernels, got shapes {[tuple(k.shape) for k in ks]}")
    h, w = max(k.shape[0] for k in ks), max(k.shape[1] for k in ks)
    dtype = functools.reduce(torch.promote_types, [k.dtype for k in ks])
    return torch.stack([pad_kernel(k.to(dtype), h, w) for k in ks])


def check_blur_inputs(y: torch.Tensor, k, y_name: str = "y", k_name: str = "k") -> torch.Tensor:
    """Validate an image batch N×C×H×W and its kernels; return the kernels as N×1×h×w on y's device, in y's
    dtype (float32 for a float16/bfloat16 y). `k`: a tensor (h×w, N×h×w, N×1×h×w), an array, or a list of
    h×w kernels of any sizes (zero-padded around their centres to the largest).

    One-line DataErrors (ValueErrors) for: a y that is not a tensor, wrong ranks, batch mismatch, kernels
    larger than the image, NaN/Inf entries, a sum that is not 1 (within SUM_TOLERANCE). Kernels with
    negative entries are accepted with a warning (once). The value checks cost one host-device sync (one
    per forward: models validate once and pass the checked kernels on, e.g. to `eq22_solve`)."""
    if not torch.is_tensor(y):
        raise DataError(f"{y_name}: expected a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 4:
        raise DataError(f"{y_name} must be an N×C×H×W tensor, got {tuple(y.shape)}")
    if not y.is_floating_point():
        raise DataError(f"{y_name} must be a floating-point tensor, got {y.dtype}")
    k = _stack_kernels(k, k_name) if isinstance(k, (list, tuple)) else torch.as_tensor(k)
    if k.dim() not in (2, 3, 4) or (k.dim() == 4 and k.shape[1] != 1):
        raise DataError(f"{k_name} must be h×w, N×h×w or N×1×h×w, got shape {tuple(k.shape)}")
    given = k.dtype
    try:
        k = kernel_batch(k, y.shape[0], y)
    except ValueError as err:
        raise DataError(f"{k_name}: {err}") from None
    kh, kw = k.shape[-2:]
    h, w = y.shape[-2:]
    if kh > h or kw > w:
        raise DataError(f"{k_name} of size {kh}×{kw} is larger than the {h}×{w} image {y_name}")
    if kh == 0 or kw == 0:
        raise DataError(f"{k_name} is empty (shape {tuple(k.shape)})")
    tolerance = max(SUM_TOLERANCE, 4 * torch.finfo(given).eps) if given.is_floating_point else SUM_TOLERANCE
    finite = torch.isfinite(k).flatten(1).all(dim=1)
    sums = k.sum(dim=(-2, -1)).flatten()
    off = (sums - 1).abs()
    bad, negative = torch.stack([(~finite | (sums <= 0) | (off > tolerance)).any(), (k < 0).any()]).tolist()
    if bad:                                  # the one sync above; the messages below only run on bad input
        if not bool(finite.all()):
            raise DataError(f"{k_name} contains NaN or Inf values")
        if bool((sums <= 0).any()):
            raise DataError(f"{k_name} must have a positive sum (sum 1 expected), got sums {sums.tolist()[:4]}")
        i = int(off.argmax())
        raise DataError(f"{k_name}[{i}] sums to {float(sums[i]):.6g}, not 1: a blur kernel must be normalised; "
                        f"pass k / k.sum(dim=(-2, -1), keepdim=True)")
    if negative:
        warn_negative_kernel(k, k_name)
    return k


def blur_model_inputs(model: torch.nn.Module, y, k):
    """(y, k) for a (y, k) model: `check_blur_inputs`, and y cast to the dtype of the model's weights (a
    float64 y for a float32 model computes in float32); parameter-free models keep y's dtype."""
    k = check_blur_inputs(y, k)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and y.dtype != dtype:
        y = y.to(dtype)
        k = k.to(compute_dtype(dtype))
    return y, k


# ----------------------------------------------------------------------------------------------
# Edge taper (Kruse et al. 2017) and the closed-form FFT initialisation of Eq. (22)
# ----------------------------------------------------------------------------------------------
def _autocorrelation_weight(profile: torch.Tensor, n: int) -> torch.Tensor:
    """1 - (circular autocorrelation of a kernel profile on n-1 points, closed to n points) / its max."""
    spectrum = torch.fft.rfft(profile, n=n - 1)
    z = torch.fft.irfft(spectrum.real ** 2 + spectrum.imag ** 2, n=n - 1)
    z = torch.cat([z, z[..., :1]], dim=-1)
    return 1 - z / z.amax(dim=-1, keepdim=True)


def edgetaper_alpha(k: torch.Tensor, shape) -> torch.Tensor:
    """Blending weights N×1×H×W of Kruse et al.'s edgetaper: outer product of the row and column
    autocorrelation profiles of the kernel (1 inside the image, falling to 0 at the borders)."""
    h, w = shape
    rows = _autocorrelation_weight(k.sum(dim=-1), h)  # N×1×H
    cols = _autocorrelation_weight(k.sum(dim=-2), w)  # N×1×W
    return rows[..., :, None] * cols[..., None, :]


@full_precision
def edgetaper(img: torch.Tensor, k: torch.Tensor, n_tapers: int = 3) -> torch.Tensor:
    """Kruse et al. (2017) edgetaper: blend the image with its circular blur near the borders, n times,
    so that a periodic (FFT) deconvolution sees no boundary discontinuity."""
    k = kernel_batch(k, img.shape[0], img)
    alpha = edgetaper_alpha(k, img.shape[-2:])
    otf = psf2otf(k, img.shape[-2:], onesided=True)
    for _ in range(n_tapers):
        blurred = torch.fft.irfft2(torch.fft.rfft2(img) * otf, s=img.shape[-2:])
        img = alpha * img + (1 - alpha) * blurred
    return img


def _difference_otf_power(shape, dtype, device) -> torch.Tensor:
    """|Gx|² + |Gy|² on the rfft2 grid for the forward differences Gx=[-1 1], Gy=[-1 1]ᵀ."""
    h, w = shape
    fy = torch.arange(h, dtype=dtype, device=device) * (2 * math.pi / h)
    fx = torch.arange(w // 2 + 1, dtype=dtype, device=device) * (2 * math.pi / w)
    return (2 - 2 * torch.cos(fy))[:, None] + (2 - 2 * torch.cos(fx))[None, :]


@full_precision
def eq22_init(y: torch.Tensor, k, reg: float = 0.002, n_tapers: int = 3, boundary: str = "zeros") -> torch.Tensor:
    """Closed-form gradient-regularised deconvolution, Eq. (22) of the NRL-GDN paper:

        x = crop F⁻¹[ conj(K)·F(ỹ) / (|K|² + reg·(|Gx|² + |Gy|²)) ],

    boundary 'circular': ỹ = y and no crop (y is taken as periodic, as a circular blur makes it);
    'valid': ỹ as below and no crop (the estimate on the extended grid that 'valid' operators act on).

    ỹ = y replicate-padded by the kernel's half sizes ((kw-1)//2 left, kw//2 right, (kh-1)//2 top,
    kh//2 bottom) and edge-tapered `n_tapers` times. For odd square kernels this coincides with the
    published `fft_deconv` (float rounding aside); for non-square kernels we crop rows by the vertical and
    columns by the horizontal padding (the published crop mixes the two), and even or 1-pixel kernels
    work here (the published code supports odd kernels only).
    """
    return eq22_solve(y, check_blur_inputs(y, k), reg, n_tapers, boundary)


@full_precision
def eq22_solve(y: torch.Tensor, k: torch.Tensor, reg: float = 0.002, n_tapers: int = 3,
               boundary: str = "zeros") -> torch.Tensor:
    """`eq22_init` for kernels `check_blur_inputs` already returned (N×1×h×w on y's device): no second
    validation, hence no second host-device sync in a model's forward. (`Blur.eq22_solve` is the same.)"""
    blur_pair(boundary)  # one-line error for a boundary without an Eq. (22) solve
    kh, kw = k.shape[-2:]
    top, left = ((kh - 1) // 2, (kw - 1) // 2) if boundary != "circular" else (0, 0)
    padded = y
    if boundary != "circular":
        padded = edgetaper(F.pad(y, (left, kw // 2, top, kh // 2), mode="replicate"), k, n_tapers)
    shape = padded.shape[-2:]
    otf = psf2otf(k, shape, onesided=True)
    denom = otf.real ** 2 + otf.imag ** 2 + reg * _difference_otf_power(shape, y.dtype, y.device)
    x = torch.fft.irfft2(otf.conj() * torch.fft.rfft2(padded) / denom, s=shape)
    if boundary == "valid":  # the solution on the extended grid, which 'valid' operators act on
        return x
    return x[..., top:top + y.shape[-2], left:left + y.shape[-1]]
