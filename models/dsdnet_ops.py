"""Blur operators and the FFT initialiser of DSDNet (Kuo et al., ECCV 2022 / TCSVT 2025).

Kernels follow the project convention: `y = conv(x, k)` with the kernel centre at (h//2, w//2), the
`scipy.ndimage.convolve` convention. The published code blurs by *correlation* with its kernel; its
kernel is therefore our kernel rotated by 180°, and with that rotation every operator below equals the
published one (checked by tools/compare_dsdnet_published.py).

Published quirks reproduced by default (and the corrected behaviour offered as an option):
- Kᵀ is approximated by a zero-padded correlation with the kernel (`adjoint="published"`), while K uses
  replicate padding; for even kernel sizes it is also shifted by one pixel. `adjoint="exact"` gives the
  true adjoint of K for every padding mode.
- The FFT initialiser crops height with the width padding and vice versa, so the published network only
  works with square kernels; by default we refuse non-square kernels with a clear error
  (`exact_crop=True` crops each axis with its own padding and accepts any kernel shape).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.config import DataError
from utils.operators import compute_dtype, conv_direct, kernel_batch, no_autocast, psf2otf

PADDING_MODES = ("replicate", "circular", "reflect", "zeros")
ADJOINTS = ("published", "exact")


def kernel_padding(kh: int, kw: int):
    """(left, right, top, bottom) padding that keeps the size for a kernel centred at (kh//2, kw//2)."""
    left, top = (kw - 1) // 2, (kh - 1) // 2
    return left, kw - 1 - left, top, kh - 1 - top


def _torch_pad_mode(padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got '{padding_mode}'")
    return "constant" if padding_mode == "zeros" else padding_mode


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
        if mode in ("zeros", "constant"):
            z = z.narrow(dim, before, n)
            continue
        shape = list(z.shape)
        shape[dim] = n
        z = z.new_zeros(shape).index_add_(dim, _pad_index(n, before, after, mode, z.device), z)
    return z


class BlurOperator:
    """K (blur with boundary `padding_mode`) and Kᵀ for one batch of kernels N×1×h×w."""

    def __init__(self, k: torch.Tensor, padding_mode: str = "replicate", adjoint: str = "published"):
        if adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be one of {ADJOINTS}, got '{adjoint}'")
        self.k = k
        self.padding_mode = padding_mode
        self.torch_mode = _torch_pad_mode(padding_mode)
        self.adjoint_kind = adjoint

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return conv_direct(x, self.k, padding_mode=self.torch_mode)

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        if self.adjoint_kind == "published":
            # zero-padded correlation with the kernel, padded like K (off by one for even sizes)
            return conv_direct(r, torch.flip(self.k, dims=(-2, -1)), padding_mode="constant")
        with no_autocast(r.device.type):  # float32 like conv_direct (utils.operators)
            return self._exact_adjoint(r.to(compute_dtype(r.dtype)))

    def _exact_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        n, c, h, w = r.shape
        kh, kw = self.k.shape[-2:]
        weight = torch.flip(self.k, dims=(-2, -1)).repeat_interleave(c, dim=0)
        full = F.conv_transpose2d(r.reshape(1, n * c, h, w), weight, groups=n * c)
        full = full.reshape(n, c, h + kh - 1, w + kw - 1)
        return _pad_adjoint(full, kernel_padding(kh, kw), (h, w), self.padding_mode)


def edgetaper_weights(k: torch.Tensor, shape) -> torch.Tensor:
    """Kruse et al. (2017) edgetaper blend weights N×1×H×W: 1 − normalised autocorrelation of the
    kernel's projections, computed on a period of H−1 (W−1) and closed by repeating the first sample."""
    profiles = []
    for axis, size in ((-1, shape[-2]), (-2, shape[-1])):
        projection = k[:, 0].sum(dim=axis)
        spectrum = torch.fft.fft(projection, n=size - 1)
        autocorr = torch.fft.ifft(spectrum.abs().square()).real
        autocorr = torch.cat([autocorr, autocorr[:, :1]], dim=1)
        profiles.append(1 - autocorr / autocorr.amax(dim=1, keepdim=True))
    return (profiles[0][:, :, None] * profiles[1][:, None, :])[:, None]


def _circular_blur(img: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Circular convolution, computed as the published code does (circular pre-pad, FFT on the padded
    grid, crop) so that float32 round-off matches; equals `conv_circular(img, k)` mathematically."""
    left, right, top, bottom = pad = kernel_padding(*k.shape[-2:])
    padded = F.pad(img, pad, mode="circular")
    blurred = torch.fft.ifft2(torch.fft.fft2(padded) * psf2otf(k, padded.shape[-2:])).real
    return blurred[..., top:top + img.shape[-2], left:left + img.shape[-1]]


def edgetaper(img: torch.Tensor, k: torch.Tensor, n_tapers: int = 3) -> torch.Tensor:
    """Blend the image towards its circular blur near the borders (reduces FFT ringing)."""
    alpha = edgetaper_weights(k, img.shape)
    for _ in range(n_tapers):
        img = alpha * img + (1 - alpha) * _circular_blur(img, k)
    return img


def _difference_otf(shape, vertical: bool, dtype, device) -> torch.Tensor:
    d = torch.tensor([[-1.0], [1.0]] if vertical else [[-1.0, 1.0]], dtype=dtype, device=device)
    return psf2otf(d, shape)


def tikhonov_deconv_circular(y: torch.Tensor, k: torch.Tensor, weight: float = 0.002) -> torch.Tensor:
    """argmin_x ‖k ⊛ x − y‖² + weight(‖Gx x‖² + ‖Gy x‖²) with circular boundaries, solved by FFT;
    Gx = [−1, 1], Gy = [−1, 1]ᵀ."""
    shape = y.shape[-2:]
    otf = psf2otf(k, shape)
    gx, gy = (_difference_otf(shape, v, y.dtype, y.device) for v in (False, True))
    denom = otf.abs().pow(2) + weight * (gx.abs().pow(2) + gy.abs().pow(2))
    return torch.fft.ifft2(otf.conj() * torch.fft.fft2(y) / denom).real


def fft_init(y: torch.Tensor, k: torch.Tensor, weight: float = 0.002, n_tapers: int = 3,
             exact_crop: bool = False) -> torch.Tensor:
    """DSDNet's x0: replicate pad, edgetaper, Tikhonov-regularised FFT deconvolution, crop (fp32+)."""
    k = kernel_batch(k, y.shape[0], y)
    kh, kw = k.shape[-2:]
    if not exact_crop and kh != kw:
        raise DataError(f"DSDNet's published FFT initialiser assumes square kernels, got {kh}×{kw}; "
                         "pad the kernel to a square or build the model with exact_crop=True")
    dtype = y.dtype
    if dtype in (torch.float16, torch.bfloat16):
        y, k = y.float(), k.float()  # the division by |K|² + λ|G|² needs fp32
    left, right, top, bottom = pad = kernel_padding(kh, kw)
    padded = edgetaper(F.pad(y, pad, mode="replicate"), k, n_tapers)
    x = tikhonov_deconv_circular(padded, k, weight)
    h, w = y.shape[-2:]
    if exact_crop:
        x = x[..., top:top + h, left:left + w]
    else:  # published crop: rows with the width pads, columns with the height pads (equal when square)
        x = x[..., left:left + h, top:top + w]
    return x.to(dtype)
