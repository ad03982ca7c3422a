"""Gaussian blur kernels parameterised as VIRNet's KNet sees them: kinfo = (var_1, var_2, rho).

Axis convention ("xy", the corrected default): var_1 is the variance along the image columns
(horizontal, x), var_2 along the rows (y) — the meaning of the data generator's kernel parameters
(numpy 'xy' meshgrid), hence of KNet's targets. The published loss and visualisation build the kernel
with torch's 'ij' meshgrid, which swaps the two axes (the kernel is transposed); `axes="ij"` keeps that
behaviour for reproducing the released SR weights.
"""
from __future__ import annotations

import torch

from utils.operators import compute_dtype, no_autocast

KERNEL_AXES = ("xy", "ij")


def _check_axes(axes: str) -> str:
    if axes not in KERNEL_AXES:
        raise ValueError(f"kernel axes must be one of {KERNEL_AXES} (got {axes!r})")
    return axes


def kernel_from_covariance(cov: torch.Tensor, size: int = 21, axes: str = "xy") -> torch.Tensor:
    """N×2×2 covariance matrices -> N×1×size×size kernels, centred at size//2, summing to one
    (softmax of -½ uᵀ Σ⁻¹ u over the grid, as published)."""
    _check_axes(axes)
    if cov.dim() != 3 or cov.shape[-2:] != (2, 2):
        raise ValueError(f"covariance must be N×2×2, got shape {tuple(cov.shape)}")
    # float32 outside autocast: einsum would run as a half bmm, and uᵀΣ⁻¹u (Σ⁻¹ up to 1e4) overflows float16
    with no_autocast(cov.device.type):
        return _kernel_from_covariance(cov.to(compute_dtype(cov.dtype)), size, axes)


def _kernel_from_covariance(cov: torch.Tensor, size: int, axes: str) -> torch.Tensor:
    # A batch with a singular Σ (|rho| = 1) gets the published jitter 1e-5·I on every matrix; decided on the
    # device (0·I otherwise, adding exactly nothing), so no host sync
    singular = (torch.linalg.inv_ex(cov.detach())[1] != 0).any()
    eye = torch.eye(2, dtype=cov.dtype, device=cov.device)
    inv = torch.linalg.inv_ex(cov + singular.to(cov.dtype) * 1e-5 * eye)[0]
    offsets = torch.arange(size, dtype=cov.dtype, device=cov.device) - size // 2
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    # first coordinate pairs with Σ[0, 0]: the column offset for "xy", the row offset for "ij"
    first, second = (cols, rows) if axes == "xy" else (rows, cols)
    grid = torch.stack([first.reshape(-1), second.reshape(-1)], dim=1)          # size² × 2
    quad = torch.einsum("pi,nij,pj->np", grid, inv, grid)                       # N × size²
    return torch.softmax(-0.5 * quad, dim=1).view(-1, 1, size, size)


def covariance_from_kinfo(kinfo: torch.Tensor) -> torch.Tensor:
    """N×3 (var_1, var_2, rho) -> N×2×2 covariance."""
    if kinfo.dim() != 2 or kinfo.shape[1] != 3:
        raise ValueError(f"kinfo must be N×3 (var_1, var_2, rho), got shape {tuple(kinfo.shape)}")
    var1, var2, rho = kinfo.unbind(1)
    cross = var1.sqrt() * var2.sqrt() * rho
    return torch.stack([var1, cross, cross, var2], dim=1).view(-1, 2, 2)


def kernel_from_kinfo(kinfo: torch.Tensor, size: int = 21, axes: str = "xy") -> torch.Tensor:
    """N×3 kernel parameters -> N×1×size×size Gaussian kernels."""
    return kernel_from_covariance(covariance_from_kinfo(kinfo), size, axes)


def kinfo_from_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """Second moments of N×1×h×w kernels -> N×3 (var along columns, var along rows, rho).

    Exact for untruncated Gaussians; a 21×21 window truncates wide kernels, so datasets should pass the
    generator's parameters as batch["kinfo"] when they have them.
    """
    if kernel.dim() != 4 or kernel.shape[1] != 1:
        raise ValueError(f"kernel must be N×1×h×w, got shape {tuple(kernel.shape)}")
    k = kernel[:, 0].to(torch.float64)
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    h, w = k.shape[-2:]
    rows = torch.arange(h, dtype=k.dtype, device=k.device).view(1, h, 1)
    cols = torch.arange(w, dtype=k.dtype, device=k.device).view(1, 1, w)
    mean_r = (k * rows).sum(dim=(-2, -1), keepdim=True)
    mean_c = (k * cols).sum(dim=(-2, -1), keepdim=True)
    var_c = (k * (cols - mean_c) ** 2).sum(dim=(-2, -1))
    var_r = (k * (rows - mean_r) ** 2).sum(dim=(-2, -1))
    cov = (k * (cols - mean_c) * (rows - mean_r)).sum(dim=(-2, -1))
    rho = cov / (var_c.clamp_min(1e-12) * var_r.clamp_min(1e-12)).sqrt()
    return torch.stack([var_c, var_r, rho], dim=1).to(kernel.dtype)
