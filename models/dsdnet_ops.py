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
from utils.operators import Blur, kernel_batch, kernel_padding, psf2otf

PADDING_MODES = ("replicate", "circular", "reflect", "zeros")
ADJOINTS = ("published", "exact")


class BlurOperator(Blur):
    """DSDNet's K and Kᵀ: `utils.operators.Blur` always on the direct path, with the published defaults
    (replicate boundary, published approximate adjoint); `blur(x)` is K x, `blur.adjoint(r)` is Kᵀ r."""

    def __init__(self, k: torch.Tensor, padding_mode: str = "replicate", adjoint: str = "published"):
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got '{padding_mode}'")
        if adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be one of {ADJOINTS}, got '{adjoint}'")
        super().__init__(k, padding_mode, adjoint=adjoint, method="direct")

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        return self.A_adjoint(r)


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
