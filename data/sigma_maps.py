"""Spatially varying noise-level (σ) maps of the NRL-GDN and VIRNet protocols.

`sigma_map(kind, shape, rng, lo, hi)` returns an H×W float64 map with values in [lo, hi]:
- 'peaks'     MATLAB peaks on [−3, 3]² (deterministic),
- 'gauss'     the published "gauss" test map, sin(X) + cos(Y) with X ∈ [1, 10] along columns and
              Y ∈ [1, 20] along rows (deterministic; VIRNet calls it `sincos_kernel`),
- 'gauss_mix' a mixture of isotropic Gaussians, one per 32×32 cell of the base grid (random),
- 'bumps'     VIRNet's training map: one Gaussian bump at a random centre and scale between two
              random levels (random, drawn directly at the image size).
The first three are built on a base×base grid (256 as published), min-max scaled to [lo, hi] and then
resized to the image (bilinear = OpenCV's default `cv2.resize`; 'nearest' = INTER_NEAREST_EXACT).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from utils.config import DataError

MAP_KINDS = ("peaks", "gauss", "gauss_mix", "bumps")


def peaks(n: int = 256) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(-3, 3, n), np.linspace(-3, 3, n))
    return (3 * (1 - x) ** 2 * np.exp(-x ** 2 - (y + 1) ** 2)
            - 10 * (x / 5 - x ** 3 - y ** 5) * np.exp(-x ** 2 - y ** 2)
            - np.exp(-(x + 1) ** 2 - y ** 2) / 3)


def sincos(n: int = 256) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(1, 10, n), np.linspace(1, 20, n))
    return np.sin(x) + np.cos(y)


def gauss_mix(h: int, w: int, rng: np.random.Generator, cell: int = 32) -> np.ndarray:
    """Σ_k N(centre_k, scale_k² I)/K with one centre per cell and scale ~ U(cell/2, cell).
    Draw order (column centres, row centres, scales) follows the published generator, so the same
    Generator state reproduces VIRNet's `generate_gauss_kernel_mix` map."""
    kh, kw = h // cell, w // cell
    if kh == 0 or kw == 0:
        raise DataError(f"gauss_mix map needs at least {cell}×{cell} pixels, got {h}×{w}")
    cx = (rng.uniform(0, cell, size=(kh, kw)) + np.arange(kw)[None, :] * cell).ravel()
    cy = (rng.uniform(0, cell, size=(kh, kw)) + np.arange(kh)[:, None] * cell).ravel()
    scale = rng.uniform(cell / 2, cell, size=kh * kw)
    # Separable per component: exp(-(x-cx)²/2s²) · exp(-(y-cy)²/2s²), summed with a matrix product.
    gx = np.exp(-(np.arange(w)[None, :] - cx[:, None]) ** 2 / (2 * scale[:, None] ** 2))
    gy = np.exp(-(np.arange(h)[None, :] - cy[:, None]) ** 2 / (2 * scale[:, None] ** 2))
    weight = 1.0 / (2 * math.pi * scale ** 2)
    return (gy.T * weight[None, :]) @ gx / (kh * kw)


def bumps(h: int, w: int, rng: np.random.Generator, lo: float, hi: float, gap: float | None = None) -> np.ndarray:
    """VIRNet/NRL-GDN `generate_sigma_map`: a Gaussian bump (centre ~ U over the image, scale ~
    U(P/4, 3P/4), P = (h+w)/2) rescaled between two levels a, b ~ U(lo, hi − gap), with gap added to
    the higher one. VIRNet's training maps are lo=0, hi=80/255, gap=5/255 (default gap = (hi−lo)/16)."""
    gap = (hi - lo) / 16 if gap is None else gap
    size = (h + w) / 2
    c_row, c_col = rng.uniform(0, h), rng.uniform(0, w)
    scale = rng.uniform(size / 4, size * 3 / 4)
    a, b = rng.uniform(lo, hi - gap), rng.uniform(lo, hi - gap)
    down, up = min(a, b), max(a, b) + gap
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    bump = np.exp(-((rows - c_row) ** 2 + (cols - c_col) ** 2) / (2 * scale ** 2))
    return down + _unit(bump) * (up - down)


def _unit(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def rescale(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Min-max scaling to [lo, hi]."""
    return lo + _unit(m) * (hi - lo)


def resize_map(m: np.ndarray, shape, interpolation: str = "bilinear") -> np.ndarray:
    """Resize an H×W map (bilinear: half-pixel, no antialiasing, like cv2.resize INTER_LINEAR)."""
    h, w = int(shape[0]), int(shape[1])
    if m.shape == (h, w):
        return m
    modes = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
    if interpolation not in modes:
        raise ValueError(f"interpolation '{interpolation}' unknown, expected one of {sorted(modes)}")
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64))[None, None]
    kwargs = {} if interpolation == "nearest" else {"align_corners": False}
    out = F.interpolate(t, size=(h, w), mode=modes[interpolation], **kwargs)[0, 0].numpy()
    return np.clip(out, m.min(), m.max()) if interpolation == "bicubic" else out


def sigma_map(kind: str, shape, rng: np.random.Generator | None, lo: float, hi: float,
              base: int = 256, interpolation: str = "bilinear") -> np.ndarray:
    """H×W σ-map of `kind` with values in [lo, hi] (same units as lo/hi)."""
    h, w = int(shape[-2]), int(shape[-1])
    if lo > hi:
        raise ValueError(f"sigma map range must have lo <= hi, got [{lo}, {hi}]")
    if kind == "peaks":
        m = peaks(base)
    elif kind == "gauss":
        m = sincos(base)
    elif kind == "gauss_mix":
        m = gauss_mix(base, base, _need_rng(rng, kind))
    elif kind == "bumps":
        return bumps(h, w, _need_rng(rng, kind), lo, hi)
    else:
        raise ValueError(f"sigma map kind '{kind}' unknown, expected one of {list(MAP_KINDS)}")
    return resize_map(rescale(m, lo, hi), (h, w), interpolation)


def _need_rng(rng, kind):
    if rng is None:
        raise ValueError(f"sigma map '{kind}' is random and needs a numpy Generator")
    return rng
