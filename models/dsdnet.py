"""DSDNet: unrolled ADMM with learned discriminative shrinkage (Kuo, Pan, Chien, Yang; ECCV 2022) and
its efficient follow-up DSDNet+ (TCSVT 2025). Same maths as github.com/setsunil/DSDNet, our code.

Model:  min_x Σ φ_d(G(y − Kx)) + Σ φ_p(Fx),  F, G learned 7×7 filter banks, φ learned shrinkages.
Per stage s, with scaled duals ui, uj (absent at s = 0):
    v  = shrink_p(Fx + ui),  z = shrink_d(G(y − Kx) + uj)        (branches p[s], d[s])
    x  = x + learned step on the residual of the x-subproblem     (i[s], or the shared i for DSDNet+)
    ui += Fx − v,  uj += G(y − Kx) − z                            (with Fx, G(y − Kx) of the old x)
x0 is the fixed FFT Tikhonov initialiser (models/dsdnet_ops.py). The noise level is never an input.

Variants (the released configurations): DSD_full (4 stages, 49/49 filters), DSD_light (3, 24/24),
DSDplus_p (4, 48/48), DSDplus_e (1, 16/16). Options (constructor keywords, published defaults):
  padding_mode="replicate"   boundary of K ('replicate' | 'circular' | 'reflect' | 'zeros')
  adjoint="published"        Kᵀ as published: zero-padded flipped-kernel correlation, an approximation
                             (and one pixel off for even kernel sizes); "exact": the true adjoint of K
  exact_crop=False           published FFT initialiser only supports square kernels (non-square raise a
                             ValueError); True crops each axis correctly and accepts any kernel shape
  kernel_convention="convolution"   k as in the rest of the project; "correlation" = the published
                             code's own kernel files (our kernel rotated by 180°)
  dropout_rate=0.0           Dropout2d on the filter responses (every released model used 0)
  grad_checkpointing=False   recompute each stage's x-step in backward (less memory in training)
Outputs: {"x": restored image, "stages": the outputs the published recipe supervises — every stage for
DSDNet+, the final one for DSDNet (deep_supervision=True: every stage)}; with `record_steps = True`
also "steps": every stage's output.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from models.dsdnet_blocks import CGUNet, FilterShrinkage, HypNet, KryNet, NLNet, NLNetV2
from models.dsdnet_ops import ADJOINTS, BlurOperator, PADDING_MODES, fft_init
from utils.config import DataError
from utils.operators import blur_model_inputs

KERNEL_CONVENTIONS = ("convolution", "correlation")


class _DSDBase(nn.Module):
    input_keys = ("y", "k")
    default_loss = "dsdnet"
    record_steps = False  # the engine sets it to get every stage's output under "steps"

    def _set_options(self, n_iter, in_nc, padding_mode, adjoint, exact_crop, kernel_convention, init_weight,
                     grad_checkpointing):
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got '{padding_mode}'")
        if adjoint not in ADJOINTS:
            raise ValueError(f"adjoint must be one of {ADJOINTS}, got '{adjoint}'")
        if kernel_convention not in KERNEL_CONVENTIONS:
            raise ValueError(f"kernel_convention must be one of {KERNEL_CONVENTIONS}, got '{kernel_convention}'")
        if int(n_iter) < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        self.n_iter, self.in_nc = int(n_iter), in_nc
        self.padding_mode, self.adjoint, self.exact_crop = padding_mode, adjoint, exact_crop
        self.kernel_convention, self.init_weight = kernel_convention, init_weight
        self.grad_checkpointing = bool(grad_checkpointing)

    def _x_step(self, s, *args):
        """The learned x-update of stage s (CGUNet / shared KryNet), recomputed in backward if asked."""
        raise NotImplementedError

    def _hyper(self, s, x):
        """(mp, md, mn) of stage s."""
        raise NotImplementedError

    def forward(self, y: torch.Tensor, k: torch.Tensor):
        y, k = blur_model_inputs(self, y, k)
        if y.shape[1] != self.in_nc:
            raise DataError(f"y must be N×{self.in_nc}×H×W, got shape {tuple(y.shape)}")
        if self.kernel_convention == "correlation":
            k = torch.flip(k, dims=(-2, -1))
        blur = BlurOperator(k, self.padding_mode, self.adjoint)
        x = fft_init(y, k, weight=self.init_weight, exact_crop=self.exact_crop)
        ui = uj = None  # scaled duals; absent (not zero) in the first stage, as published
        steps = []
        for s in range(self.n_iter):
            mp, md, mn = self._hyper(s, x)
            v, fx = self.p[s](x, ui)
            z, gr = self.d[s](y - blur(x), uj)
            args = (x, y, v, z, blur, mp, md, mn, ui, uj)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(self._x_step, s, *args, use_reentrant=False)
            else:
                x = self._x_step(s, *args)
            # dual ascent with the filter responses of the x *before* the update (published order)
            ui = fx - v if ui is None else ui + fx - v
            uj = gr - z if uj is None else uj + gr - z
            steps.append(x)
        out = {"x": x, "stages": self._supervised(steps)}
        if self.record_steps:
            out["steps"] = steps
        return out

    def _supervised(self, steps):
        return steps


class DSDNet(_DSDBase):
    """DSDNet (ECCV 2022): per-stage hyper-networks (hp, hd, hn), branches (p, d) and CGUNets (i)."""

    def __init__(self, n_iter=3, in_nc=3, out_nc=3, nf_p=49, nf_d=48, max_nc=4, kernel_size=7,
                 dropout_rate=0.0, padding_mode="replicate", adjoint="published", exact_crop=False,
                 kernel_convention="convolution", init_weight=0.002, deep_supervision=False,
                 grad_checkpointing=False):
        super().__init__()
        if out_nc != in_nc:
            raise ValueError(f"DSDNet restores the input's channels: out_nc ({out_nc}) must equal in_nc ({in_nc})")
        self._set_options(n_iter, in_nc, padding_mode, adjoint, exact_crop, kernel_convention, init_weight,
                          grad_checkpointing)
        self.deep_supervision = deep_supervision
        n = self.n_iter
        self.hp = nn.ModuleList([HypNet(2 * in_nc, nf_p) for _ in range(n)])
        self.hd = nn.ModuleList([HypNet(2 * in_nc, nf_d) for _ in range(n)])
        self.hn = nn.ModuleList([NLNet(in_nc) for _ in range(n)])
        self.p = nn.ModuleList([FilterShrinkage(in_nc, nf_p, kernel_size, max_nc, dropout_rate) for _ in range(n)])
        self.d = nn.ModuleList([FilterShrinkage(in_nc, nf_d, kernel_size, max_nc, dropout_rate) for _ in range(n)])
        self.i = nn.ModuleList([CGUNet(self.p[s].conv, self.d[s].conv, nf_p, nf_d) for s in range(n)])

    def _hyper(self, s, x):
        hyper_in = torch.cat((x, torch.ones_like(x)), dim=1)
        return self.hp[s](hyper_in), self.hd[s](hyper_in), self.hn[s](x)

    def _x_step(self, s, *args):
        return self.i[s](*args)

    def _supervised(self, steps):
        return steps if self.deep_supervision else steps[-1:]


class DSDNetPlus(_DSDBase):
    """DSDNet+ (TCSVT 2025): scalar sigmoid(mp), sigmoid(md), NLNetV2 weights and one shared KryNet
    whose update adds gamma[s]·residual."""

    def __init__(self, n_iter=3, in_nc=3, out_nc=3, nf_p=49, nf_d=48, max_nc=4, kernel_size=7,
                 dropout_rate=0.0, padding_mode="replicate", adjoint="published", exact_crop=False,
                 kernel_convention="convolution", init_weight=0.002, grad_checkpointing=False):
        super().__init__()
        if out_nc != in_nc:
            raise ValueError(f"DSDNet+ restores the input's channels: out_nc ({out_nc}) must equal in_nc ({in_nc})")
        self._set_options(n_iter, in_nc, padding_mode, adjoint, exact_crop, kernel_convention, init_weight,
                          grad_checkpointing)
        n = self.n_iter
        self.mp = nn.Parameter(torch.ones(n))
        self.md = nn.Parameter(torch.ones(n))
        self.gamma = nn.Parameter(torch.ones(n, 1))
        self.hn = nn.ModuleList([NLNetV2(in_nc) for _ in range(n)])
        self.p = nn.ModuleList([FilterShrinkage(in_nc, nf_p, kernel_size, max_nc, dropout_rate) for _ in range(n)])
        self.d = nn.ModuleList([FilterShrinkage(in_nc, nf_d, kernel_size, max_nc, dropout_rate) for _ in range(n)])
        self.i = KryNet(nf_p, nf_d)

    def _hyper(self, s, x):
        return torch.sigmoid(self.mp[s]), torch.sigmoid(self.md[s]), self.hn[s](x)

    def _x_step(self, s, *args):
        return self.i(self.p[s].conv, self.d[s].conv, self.gamma[s], *args)


class DSD_full(DSDNet):
    """DSDNet, 4 stages, 49 prior / 49 data filters (options/test/DSD_full.yml; 323.6 M parameters)."""

    def __init__(self, **options):
        super().__init__(**{"n_iter": 4, "nf_p": 49, "nf_d": 49, **options})


class DSD_light(DSDNet):
    """DSDNet, 3 stages, 24 / 24 filters (options/test/DSD_light.yml; 58.4 M parameters)."""

    def __init__(self, **options):
        super().__init__(**{"n_iter": 3, "nf_p": 24, "nf_d": 24, **options})


class DSDplus_p(DSDNetPlus):
    """DSDNet+, 4 stages, 48 / 48 filters (options/test/DSDplus_p.yml; 131.3 M parameters)."""

    def __init__(self, **options):
        super().__init__(**{"n_iter": 4, "nf_p": 48, "nf_d": 48, **options})


class DSDplus_e(DSDNetPlus):
    """DSDNet+, 1 stage, 16 / 16 filters (options/test/DSDplus_e.yml, trained by WEDBSD.yml; 14.6 M)."""

    def __init__(self, **options):
        super().__init__(**{"n_iter": 1, "nf_p": 16, "nf_d": 16, **options})
