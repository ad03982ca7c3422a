"""NRL-GDN family (Kong et al., JVCI 2025): one learned gradient-descent update unit, unrolled.

    NRL_GDN, NRL_GDN_Y0:  x⁺ = x + D( Aᵀ H(A x − y) + R(x) )
    rgdn_uniform:         x⁺ = x + D( H(Aᵀ(A x − y)) + R(x) )       ("RGDN + DRUNet")

A x is the zero-padded 'same' convolution with the blur kernel k (scipy.ndimage.convolve convention) and
Aᵀ its exact adjoint (for odd kernels the correlation the published code applies). H and D are the RGDN
CNN block, R is DRUNet; the weights are shared by all steps. x⁰ is the Eq. (22) FFT solution (NRL_GDN) or
y (the other two). Parameter names match the official checkpoints key for key.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.drunet import DRUNet
from utils.config import DataError
from utils.operators import (BOUNDARIES, Blur, blur_model_inputs, blur_pair, crop_extended, kernel_padding,
                             looks_periodic, no_autocast, periodic_extend, periodic_fold)

MODEL_BOUNDARIES = BOUNDARIES + ("auto",)


class RGDNBlock(nn.Module):
    """RGDN CNN block (Gong et al. 2020), used for H and D: 5×5 convs, no bias, ReLU in between:
    3 convs (in_nc→c→c→c) then 4 stride-1 transposed convs (c→c→c→c→in_nc).

    `forward` evaluates each stride-1 ConvTranspose as the equivalent Conv (same parameter, transposed
    and flipped at run time) in channels_last layout; `self.main(x)` is the plain formulation."""

    def __init__(self, in_nc: int = 3, channels: int = 64):
        super().__init__()
        c = channels
        layers = [nn.Conv2d(in_nc, c, 5, 1, 2, bias=False), nn.ReLU(inplace=True)]
        for _ in range(2):
            layers += [nn.Conv2d(c, c, 5, 1, 2, bias=False), nn.ReLU(inplace=True)]
        for _ in range(3):
            layers += [nn.ConvTranspose2d(c, c, 5, 1, 2, bias=False), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(c, in_nc, 5, 1, 2, bias=False))
        self.main = nn.Sequential(*layers)

    def receptive_radius(self) -> int:
        """Pixels an output depends on, on each side: 2 per 5×5 layer."""
        convs = (nn.Conv2d, nn.ConvTranspose2d)
        return sum(layer.kernel_size[0] // 2 for layer in self.main if isinstance(layer, convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.main:
            if isinstance(layer, nn.ConvTranspose2d):
                # stride-1 transposed conv == conv with in/out swapped and the taps rotated by 180°
                weight = layer.weight.transpose(0, 1).flip(-2, -1)
                x = F.conv2d(x, weight, padding=layer.kernel_size[0] - 1 - layer.padding[0])
            else:
                x = layer(x)
        return x


def _published_init_(module: nn.Module) -> None:
    """Training initialisation of the published code: Xavier-normal for every nn.Conv2d; transposed
    convolutions keep PyTorch's default."""
    for m in module.modules():
        if type(m) is nn.Conv2d:
            nn.init.xavier_normal_(m.weight)


class _EarlyStop:
    """The published stopping rule: e_t = ||A x^t − y||_F / 2 over the batch,
    rel_t = (|e_t − e_{t−1}| + 1e-10) / (e_{t−1} + 1e-10), rel_0 = 0; stop after step t ≥ 5 (0-based)
    when rel_{t−1} − rel_t < threshold. Evaluated in the tensors' dtype, as published.

    The batch is the local one: each DataParallel replica / DDP process stops on its own share (as the
    published DataParallel code does). `synchronise=True` all-reduces ||A x^t − y||² over the DDP
    processes first, so every process takes the steps one process would take on the whole batch."""

    def __init__(self, threshold: float, synchronise: bool = False):
        self.threshold = threshold
        self.synchronise = synchronise
        self.prev_error = None
        self.prev_rel = 0.0

    def _error(self, residual: torch.Tensor) -> torch.Tensor:
        if not self.synchronise:
            return torch.linalg.vector_norm(residual) / 2
        squared = torch.linalg.vector_norm(residual) ** 2
        torch.distributed.all_reduce(squared)
        return squared.sqrt() / 2

    @torch.no_grad()
    def should_stop(self, step: int, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, blur) -> bool:
        with no_autocast(x.device.type):   # a bf16 norm would round the relative change (~1e-3) away
            error = self._error(blur(x, k) - y)
        if step == 0:
            self.prev_error = error
            return False
        rel = (torch.abs(error - self.prev_error) + 1e-10) / (self.prev_error + 1e-10)
        stop = step > 4 and bool((self.prev_rel - rel) < self.threshold)   # the rule's host sync, from t = 5 on
        self.prev_error, self.prev_rel = error, rel
        return stop


class NRLGDNUnrolled(nn.Module):
    """Shared implementation of the three variants (subclasses set `init_mode`, `h_after_adjoint`).

    Options (keywords): num_steps (40), early_stop (True: published rule, in training too; False: fixed
    steps), stop_epsilon (published switch: the rule runs only when finite), stop_threshold (1e-3),
    grad_checkpointing (recompute each step in backward: memory flat in the number of steps),
    r_channels / r_blocks (DRUNet widths / ResBlocks per scale), hd_channels (H and D width), in_nc,
    channels_last (CNN layout), record_steps (return {"x", "steps"}), boundary ('zeros': the published
    zero-padded A and replicate-padded, edge-tapered Eq. (22); 'circular': periodic A, Aᵀ and Eq. (22), for
    circularly blurred inputs such as the synthetic test protocols; 'valid': the iterate lives on the
    extended (H+h−1)×(W+w−1) grid and A keeps the H×W pixels whose kernel window lies inside it, so no
    assumption is made about what lies beyond the photo's border; the output is the H×W centre; 'auto':
    'valid', except that a sample whose borders wrap around smoothly (`utils.operators.looks_periodic`: a
    circular blur) keeps its iterate periodic on the extended grid, which makes A its circular blur). The
    boundary adds no parameters: one set of weights runs with any of them.
    """

    input_keys = ("y", "k")
    default_loss = "nrlgdn_l1"
    init_mode = "eq22"
    h_after_adjoint = False
    default_stop_epsilon = 1e-3

    def __init__(self, num_steps: int = 40, early_stop: bool = True, stop_epsilon: float | None = None,
                 stop_threshold: float = 1e-3, grad_checkpointing: bool = False,
                 r_channels: Sequence[int] = (64, 128, 256, 512), r_blocks: int = 4, hd_channels: int = 64,
                 in_nc: int = 3, channels_last: bool = True, record_steps: bool = False, boundary: str = "zeros"):
        super().__init__()
        if boundary not in MODEL_BOUNDARIES:
            raise ValueError(f"boundary must be one of {MODEL_BOUNDARIES}, got {boundary!r}")
        self.boundary = boundary
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = int(num_steps)
        self.early_stop = bool(early_stop)
        self.stop_epsilon = self.default_stop_epsilon if stop_epsilon is None else float(stop_epsilon)
        self.stop_threshold = float(stop_threshold)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.channels_last = bool(channels_last)
        self.record_steps = bool(record_steps)
        self.in_nc = int(in_nc)
        self.last_num_steps = 0
        self.early_stop_sync = False   # set by the training engine (train_options.early_stop_sync) under DDP
        self._cnn_runner = None        # set by models.tiling while it runs the CNN blocks tile by tile
        self.r = DRUNet(in_nc=in_nc, out_nc=in_nc, nc=r_channels, nb=r_blocks)
        self.h = RGDNBlock(in_nc, hd_channels)
        self.d_alpha = RGDNBlock(in_nc, hd_channels)
        _published_init_(self)
        if self.channels_last:  # parameters stored NHWC once (same keys/shapes), not converted per call
            self.to(memory_format=torch.channels_last)

    # -- pieces -------------------------------------------------------------------------------
    def _cnn(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return block(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return block(x)

    def cnn(self, block: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """Apply one of the model's CNN blocks to z. Variants call their blocks through this, so that
        `models.tiling` (which installs a tile-by-tile runner with `tiled_cnns`) tiles them too."""
        if self._cnn_runner is None:
            return self._cnn(block, z)
        return self._cnn_runner(block, functools.partial(self._cnn, block), z)

    @contextlib.contextmanager
    def tiled_cnns(self, run_cnn):
        """Inside the block, `cnn(block, z)` calls `run_cnn(block, fn, z)` (fn = the block on a tensor)."""
        previous, self._cnn_runner = self._cnn_runner, run_cnn
        try:
            yield
        finally:
            self._cnn_runner = previous

    @property
    def operator_boundary(self) -> str:
        """The boundary of A and Aᵀ: 'auto' runs the 'valid' operators (periodic samples stay periodic)."""
        return "valid" if self.boundary == "auto" else self.boundary

    def periodic_samples(self, y: torch.Tensor):
        """N×1×1×1 bool mask of the samples boundary 'auto' treats as circularly blurred; None otherwise."""
        return looks_periodic(y)[:, None, None, None] if self.boundary == "auto" else None

    def _keep_periodic(self, z: torch.Tensor, k: torch.Tensor, periodic, fold: bool = False) -> torch.Tensor:
        """z (extended grid) with the periodic samples made periodic again: their centre wrapped around, or
        with `fold` their border first added back where it wraps from (Aᵀ of the circular blur)."""
        if periodic is None:
            return z
        centre = periodic_fold(z, k) if fold else crop_extended(z, k)
        return torch.where(periodic, periodic_extend(centre, k), z)

    def initial_estimate(self, y: torch.Tensor, k: torch.Tensor, periodic=None) -> torch.Tensor:
        """x⁰ for kernels forward() has already validated, on the grid the iterate lives on (the extended
        grid for 'valid' and 'auto'). models.tiling calls it one channel at a time on large images, passing
        the `periodic_samples` mask of the whole image."""
        if self.boundary == "auto":
            periodic = self.periodic_samples(y) if periodic is None else periodic
            if self.init_mode == "eq22":
                wrapped, valid = Blur(k, "circular").eq22_solve(y), Blur(k, "valid").eq22_solve(y)
            else:
                wrapped, valid = y, F.pad(y, kernel_padding(*k.shape[-2:]), mode="replicate")
            return torch.where(periodic, periodic_extend(wrapped, k), valid)
        if self.init_mode == "eq22":
            return Blur(k, self.boundary).eq22_solve(y)
        if self.boundary == "valid":
            return F.pad(y, kernel_padding(*k.shape[-2:]), mode="replicate")
        return y

    def update(self, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor, t: int) -> torch.Tensor:
        """One NRL-GDN update unit x^t -> x^{t+1}; t = 0, 1, ... is the step index (unused here: the
        weights are shared by all steps). A variant with per-step parameters overrides this and indexes
        them with t, which grad_checkpointing passes again when it recomputes the step. CNN blocks run
        through `self.cnn`, which models.tiling makes tile by tile."""
        cnn = self.cnn
        blur, periodic = Blur(k, self.operator_boundary), self.periodic_samples(y)
        # nested calls, no named intermediates: each full-size temporary is freed as soon as it is used
        if self.h_after_adjoint:
            data_term = cnn(self.h, self._keep_periodic(blur.A_adjoint(blur.A(x) - y), k, periodic, fold=True))
        else:
            data_term = self._keep_periodic(blur.A_adjoint(cnn(self.h, blur.A(x) - y)), k, periodic, fold=True)
        return self._keep_periodic(x + cnn(self.d_alpha, data_term + cnn(self.r, x)), k, periodic)

    def tile_context(self, block: nn.Module):
        """Context a tile of `block`'s input needs at a cut: H and D their exact receptive radius; DRUNet a
        third of its (148 px for the compact model: at 49 px from a cut its output differs by ≤ 3e-4, beyond
        80 px by float rounding only). A variant's own block: the radius of its stride-1 convolutions
        chained (an upper bound), or None (run it whole) when it has strided layers."""
        if isinstance(block, DRUNet):
            return math.ceil(block.receptive_radius() / 3)
        if hasattr(block, "receptive_radius"):
            return block.receptive_radius()
        convs = [m for m in block.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if any(max(m.stride) > 1 for m in convs):
            return None
        return sum(max(d * (size // 2) for d, size in zip(m.dilation, m.kernel_size)) for m in convs)

    def early_stop_active(self) -> bool:
        return self.early_stop and math.isfinite(self.stop_epsilon)

    def stop_monitor(self):
        """The early-stop rule for one forward pass (`should_stop(t, x, y, k, blur)`), or None when off."""
        synchronise = (self.early_stop_sync and self.training and torch.distributed.is_available()
                       and torch.distributed.is_initialized())
        return _EarlyStop(self.stop_threshold, synchronise) if self.early_stop_active() else None

    # -- forward ------------------------------------------------------------------------------
    def checked_inputs(self, y, k):
        """(y, k) after the input rule every (y, k) model follows, and the channel check."""
        y, k = blur_model_inputs(self, y, k)
        if y.shape[1] != self.in_nc:
            raise DataError(f"{type(self).__name__} expects y with {self.in_nc} channels "
                             f"(N×{self.in_nc}×H×W), got {tuple(y.shape)}")
        return y.contiguous(), k

    def forward(self, y: torch.Tensor, k: torch.Tensor):
        y, k = self.checked_inputs(y, k)
        return self.unroll(self.initial_estimate(y, k), y, k)

    def to_image(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The restored image (y's grid) from an iterate: its H×W centre on the extended grid, else x."""
        return crop_extended(x, k) if self.operator_boundary == "valid" else x

    def unroll(self, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor):
        """The unrolled steps from x⁰ = x with the early-stop rule; returns the restored image(s)."""
        monitor = self.stop_monitor()
        use_checkpoint = self.grad_checkpointing and torch.is_grad_enabled()
        steps = []
        for t in range(self.num_steps):
            if use_checkpoint:
                x = checkpoint(self.update, x, y, k, t, use_reentrant=False)
            else:
                x = self.update(x, y, k, t)
            if self.record_steps:
                steps.append(self.to_image(x, k))
            if monitor is not None and monitor.should_stop(t, x, y, k, blur_pair(self.operator_boundary)[0]):
                break
        self.last_num_steps = t + 1
        x = self.to_image(x, k)
        if self.record_steps:
            return {"x": x, "steps": steps}
        return x


class NRL_GDN(NRLGDNUnrolled):
    """NRL-GDN: x⁰ from Eq. (22), H applied before the adjoint blur."""

    init_mode = "eq22"
    h_after_adjoint = False
    default_stop_epsilon = 1e-3


class NRL_GDN_Y0(NRLGDNUnrolled):
    """NRL-GDN with x⁰ = y."""

    init_mode = "y"
    h_after_adjoint = False
    default_stop_epsilon = 1e-3


class rgdn_uniform(NRLGDNUnrolled):  # noqa: N801 (published model name)
    """RGDN + DRUNet: x⁰ = y, H applied after the adjoint blur."""

    init_mode = "y"
    h_after_adjoint = True
    default_stop_epsilon = 1e-6
