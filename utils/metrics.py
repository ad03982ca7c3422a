"""PSNR / SSIM computed the way the deblurring and SR papers do.

* PSNR: ``10·log10(data_range² / MSE)`` in float64 over all pixels and channels of one image
  (``skimage.metrics.peak_signal_noise_ratio`` on [0, 1] floats, as NRL-GDN; on uint8 levels as
  KAIR/DPIR/DSDNet/VIRNet when ``quantize=True``).
* SSIM: MATLAB ``ssim_index`` as ported by KAIR/DPIR (``calculate_ssim``): values scaled to 0–255,
  11×11 Gaussian window σ = 1.5, K = (0.01, 0.03), 'valid' filtering (5-pixel margin dropped), mean of
  the map; for colour the mean over channels.  Equals ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)`` per channel.

Layouts (decided by type, never guessed from the shape):
* torch tensors are channel-first: ``C×H×W``, ``1×C×H×W`` or ``H×W`` (recommended: float in [0, 1]);
  ``evaluate_batch`` takes ``N×C×H×W``.
* numpy arrays are channel-last, as in skimage/KAIR: ``H×W×C`` or ``H×W``.
The functions do not clamp; ``evaluate_pair`` clamps the restored image to [0, 1] as every paper's
test script does before scoring.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from utils.config import DataError

COLOR_MODES = ("rgb", "luma", "ycbcr_y")
_LUMA = (0.299, 0.587, 0.114)              # NRL-GDN `is_gray_scale`, ITU-R BT.601 luma
_YCBCR_Y = (65.481, 128.553, 24.966)       # MATLAB rgb2ycbcr, Y row, for RGB in [0, 1]


def _to_chw(img, name: str) -> torch.Tensor:
    """One image as a float64 C×H×W tensor (see the layout rules in the module docstring)."""
    if isinstance(img, np.ndarray):
        arr = np.asarray(img, dtype=np.float64)
        if arr.ndim == 2:
            return torch.from_numpy(arr)[None]
        if arr.ndim == 3:
            if arr.shape[2] not in (1, 3) and arr.shape[0] in (1, 3):
                raise ValueError(f"{name}: numpy arrays are read as H×W×C, got shape {arr.shape}; "
                                 "pass a torch tensor for C×H×W")
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        raise ValueError(f"{name}: numpy image must be H×W or H×W×C, got shape {arr.shape}")
    if not torch.is_tensor(img):
        raise ValueError(f"{name}: expected a torch tensor or numpy array, got {type(img).__name__}")
    t = img.detach().to(torch.float64)
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        return t[None]
    if t.dim() == 3:
        return t
    raise ValueError(f"{name}: tensor image must be C×H×W, 1×C×H×W or H×W, got shape {tuple(img.shape)} "
                     "(use evaluate_batch for N×C×H×W)")


def _pair(x, gt, border: int):
    a, b = _to_chw(x, "x"), _to_chw(gt, "gt")
    if a.shape != b.shape:
        raise ValueError(f"x and gt must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)} (as C×H×W)")
    b = b.to(a.device)
    return _crop(a, border), _crop(b, border)


def _crop(t: torch.Tensor, border: int) -> torch.Tensor:
    if not isinstance(border, (int, np.integer)) or border < 0:
        raise DataError(f"border must be a non-negative int, got {border!r}")
    h, w = t.shape[-2:]
    if 2 * border >= min(h, w):
        raise DataError(f"border={border} leaves nothing of a {h}×{w} image")
    return t[..., border:h - border, border:w - border] if border else t


def psnr(x, gt, data_range: float = 1.0, border: int = 0) -> float:
    """PSNR in dB of one image against its ground truth (float64; ``inf`` when they are equal)."""
    a, b = _pair(x, gt, border)
    mse = torch.mean((a - b) ** 2).item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range ** 2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _valid_filter_1d(t: torch.Tensor, g, dim: int) -> torch.Tensor:
    """'valid' correlation of t with the 1-D window g along `dim`, as a sum of shifted slices
    (float64 conv2d has no fast CPU kernel; this is several times faster)."""
    size, n = len(g), t.shape[dim] - len(g) + 1
    out = t.narrow(dim, 0, n) * g[0]
    for i in range(1, size):
        out.add_(t.narrow(dim, i, n), alpha=float(g[i]))
    return out


def _ssim_per_channel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM map of each channel of two C×H×W float64 images on 0–255.

    The 11×11 Gaussian window is the outer product of two 1-D windows, so the 'valid' filtering is
    a row pass then a column pass (22 instead of 121 multiply-adds per pixel)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_1d().tolist()  # Python floats: no device->host copy per tap when the images are on a GPU
    maps = torch.stack([a, b, a * a, b * b, a * b])             # 5×C×H×W
    mu_a, mu_b, e_aa, e_bb, e_ab = _valid_filter_1d(_valid_filter_1d(maps, g, -1), g, -2)
    var_a, var_b, cov = e_aa - mu_a ** 2, e_bb - mu_b ** 2, e_ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(dim=(-2, -1))


def ssim(x, gt, border: int = 0, data_range: float = 1.0) -> float:
    """MATLAB/KAIR-style SSIM of one image (inputs on [0, data_range], scored on 0–255)."""
    a, b = _pair(x, gt, border)
    if min(a.shape[-2:]) < 11:
        raise DataError(f"SSIM needs images of at least 11×11 after the border crop, got {tuple(a.shape[-2:])}")
    scale = 255.0 / data_range
    return _ssim_per_channel(a * scale, b * scale).mean().item()


def _weighted_channels(img, weights, offset: float, name: str):
    """offset + Σ weights[c]·img[c], keeping the channel axis (dim -3 for torch, last axis for numpy)."""
    if isinstance(img, np.ndarray):
        if img.ndim < 3 or img.shape[-1] != 3:
            raise ValueError(f"{name}: numpy image must be H×W×3 (channel last), got shape {img.shape}")
        return offset + np.tensordot(img.astype(np.float64, copy=False), np.asarray(weights), axes=([-1], [0]))[..., None]
    if not torch.is_tensor(img) or img.dim() < 3 or img.shape[-3] != 3:
        shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
        raise ValueError(f"{name}: tensor image must be 3×H×W or N×3×H×W, got {shape}")
    r, g, b = img.unbind(dim=-3)
    return (offset + weights[0] * r + weights[1] * g + weights[2] * b).unsqueeze(-3)


def rgb_to_luma(img):
    """Y = 0.299R + 0.587G + 0.114B (same scale as the input); keeps a channel axis of size 1."""
    return _weighted_channels(img, _LUMA, 0.0, "rgb_to_luma")


def rgb_to_ycbcr_y(img):
    """MATLAB ``rgb2ycbcr`` luma for RGB in [0, 1]: (16 + 65.481R + 128.553G + 24.966B)/255 ∈ [16/255, 235/255]."""
    return _weighted_channels(img, tuple(w / 255.0 for w in _YCBCR_Y), 16.0 / 255.0, "rgb_to_ycbcr_y")


def _to_uint8_levels(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.clamp(0.0, 1.0) * 255.0) / 255.0


def evaluate_pair(x, gt, color: str = "rgb", border: int = 0, quantize: bool = False,
                  clamp: bool = True) -> dict:
    """{'psnr', 'ssim'} of one restored image ``x`` against ``gt`` (both on [0, 1]).

    color: 'rgb' (all channels; gray images as they are), 'luma' (0.299/0.587/0.114, NRL-GDN
    ``is_gray_scale``) or 'ycbcr_y' (MATLAB rgb2ycbcr Y, SR papers). One-channel images are taken
    as already being Y (as KAIR/BasicSR do).  clamp: clip ``x`` to [0, 1] first.
    quantize: emulate the uint8 pipeline (KAIR/DPIR, DSDNet, VIRNet): both images are rounded to
    1/255 levels, and so is the converted Y, as MATLAB's rgb2ycbcr/rgb2gray do on uint8.
    """
    if color not in COLOR_MODES:
        raise ValueError(f"color must be one of {COLOR_MODES}, got {color!r}")
    a, b = _to_chw(x, "x"), _to_chw(gt, "gt")
    if a.shape != b.shape:
        raise ValueError(f"x and gt must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)} (as C×H×W)")
    b = b.to(a.device)
    if clamp:
        a = a.clamp(0.0, 1.0)
    if quantize:
        a, b = _to_uint8_levels(a), _to_uint8_levels(b)
    if color != "rgb" and a.shape[0] == 3:
        convert = rgb_to_luma if color == "luma" else rgb_to_ycbcr_y
        a, b = convert(a), convert(b)
        if quantize:
            a, b = torch.round(a * 255.0) / 255.0, torch.round(b * 255.0) / 255.0
    elif color != "rgb" and a.shape[0] != 1:
        raise ValueError(f"color={color!r} needs 3-channel (or 1-channel) images, got {a.shape[0]} channels")
    return {"psnr": psnr(a, b, 1.0, border), "ssim": ssim(a, b, border)}


def evaluate_batch(x: torch.Tensor, gt: torch.Tensor, **options) -> list:
    """``evaluate_pair`` for every sample of N×C×H×W tensors; one dict per image (average them yourself)."""
    if not (torch.is_tensor(x) and torch.is_tensor(gt)) or x.dim() != 4 or x.shape != gt.shape:
        raise ValueError(f"evaluate_batch needs two N×C×H×W tensors of one shape, got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(gt, 'shape', ()))}")
    return [evaluate_pair(x[i], gt[i], **options) for i in range(x.shape[0])]
