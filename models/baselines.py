"""Training-free deconvolution baselines, selectable by name like any model (forward(y, k) -> x).

- Eq22Init: the closed-form gradient-regularised FFT solution NRL-GDN starts from (utils.operators.eq22_init).
- Wiener: skimage.restoration.wiener (Laplacian-regularised, periodic boundaries) per sample and channel.
- RichardsonLucy: skimage.restoration.richardson_lucy per sample and channel.

The defaults were chosen on a small grid: 3 colour crops 128×128 (skimage astronaut/coffee/chelsea),
circular blur with 2 Gaussian (25×25) and 2 motion-like (19×19) kernels, σ = 2.55/255 and 7.65/255 (the
NRL-GDN test noise levels). Mean PSNR (σ=2.55 / 7.65): Wiener balance 0.003: 27.9/22.7, 0.01: 27.8/24.7
(default), 0.03: 27.2/25.7; Richardson-Lucy (edge padding) 5 iterations: 24.8/24.5, 10: 25.2/24.3
(default), 30: 24.4/22.3; Eq22Init: 23.4/18.8. They have no trainable parameters; outputs are not clipped
(the evaluation clamps to [0, 1] like for the learned models).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from utils.operators import Blur, blur_pair, check_blur_inputs, crop_extended


class _TrainingFree(nn.Module):
    input_keys = ("y", "k")
    default_loss = None  # nothing to train
    trainable = False

    def forward(self, y: torch.Tensor, k) -> torch.Tensor:
        k = check_blur_inputs(y, k)
        return self.restore(y, k)

    def restore(self, y, k):
        raise NotImplementedError


class Eq22Init(_TrainingFree):
    """x = F⁻¹[conj(K) F(ỹ) / (|K|² + reg (|Gx|² + |Gy|²))] on the replicate-padded, edge-tapered y
    (boundary 'zeros', as NRL-GDN starts; 'valid': the same solve, not cropped until the end) or on y itself
    taken as periodic (boundary 'circular')."""

    def __init__(self, reg: float = 0.002, n_tapers: int = 3, boundary: str = "zeros"):
        super().__init__()
        self.reg, self.n_tapers, self.boundary = float(reg), int(n_tapers), boundary
        blur_pair(boundary)  # one-line error for a boundary without an Eq. (22) solve

    def restore(self, y, k):
        x = Blur(k, self.boundary).eq22_solve(y, reg=self.reg, n_tapers=self.n_tapers)
        return crop_extended(x, k) if self.boundary == "valid" else x   # 'valid' solves on the extended grid


class _PerChannelNumpy(_TrainingFree):
    """Runs a float64 numpy routine on every (sample, channel) plane and returns a tensor like y."""

    def restore(self, y, k):
        planes = y.detach().cpu().double().numpy()
        kernels = k.detach().cpu().double().numpy()[:, 0]
        out = np.empty_like(planes)
        for n in range(planes.shape[0]):
            for c in range(planes.shape[1]):
                out[n, c] = self.restore_plane(planes[n, c], kernels[n])
        return torch.from_numpy(out).to(device=y.device, dtype=y.dtype)

    def restore_plane(self, plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _odd_kernel(kernel: np.ndarray) -> np.ndarray:
    """Pad even kernel sizes with a zero row/column at the end: the centre stays at index h//2 (our
    convention) while scipy.signal's 'same' mode, which centres at (h-1)//2, now agrees with it."""
    kh, kw = kernel.shape
    return np.pad(kernel, ((0, 1 - kh % 2), (0, 1 - kw % 2)))


class Wiener(_PerChannelNumpy):
    """skimage.restoration.wiener: x = F⁻¹[conj(K) Y / (|K|² + balance |L|²)], L the Laplacian;
    the FFT assumes periodic boundaries (exact for the circularly blurred test images)."""

    def __init__(self, balance: float = 0.01):
        super().__init__()
        if balance <= 0:
            raise ValueError(f"Wiener balance must be > 0, got {balance}")
        self.balance = float(balance)

    def restore_plane(self, plane, kernel):
        from skimage.restoration import wiener

        return wiener(plane, kernel, self.balance, clip=False)


class RichardsonLucy(_PerChannelNumpy):
    """skimage.restoration.richardson_lucy (start 0.5, 'same' convolutions). The plane is clipped to >= 0
    (multiplicative updates need it) and padded by the kernel size with `padding` ('edge' = replicate,
    'wrap', 'symmetric') before and cropped after: without it the zero-padded convolutions of skimage
    blow up the borders (mean PSNR 13-18 dB instead of ~25 dB on the tuning set)."""

    def __init__(self, num_iter: int = 10, padding: str = "edge"):
        super().__init__()
        if num_iter < 1:
            raise ValueError(f"RichardsonLucy num_iter must be >= 1, got {num_iter}")
        if padding not in ("edge", "wrap", "symmetric"):
            raise ValueError(f"RichardsonLucy padding must be 'edge', 'wrap' or 'symmetric', got {padding!r}")
        self.num_iter, self.padding = int(num_iter), padding

    def restore_plane(self, plane, kernel):
        from skimage.restoration import richardson_lucy

        kh, kw = kernel.shape
        padded = np.pad(np.clip(plane, 0, None), ((kh, kh), (kw, kw)), mode=self.padding)
        out = richardson_lucy(padded, _odd_kernel(kernel), num_iter=self.num_iter, clip=False)
        return out[kh:kh + plane.shape[0], kw:kw + plane.shape[1]]
