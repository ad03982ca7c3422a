"""VIRNet (Yue et al., TPAMI 2024): variational blind denoising and blind super-resolution.

SNet predicts the posterior mode σ̂² of the per-pixel noise variance, KNet (SR only) the Gaussian blur
kernel's (var_1, var_2, rho), and RNet, conditioned on √σ̂² (and the kernel parameters), the posterior
mean μ of the clean image. Registered configurations (published sizes):

    VIRNet_denoise_syn   10.54 M  synthetic non-i.i.d. Gaussian denoising, 1-channel σ-map
    VIRNet_denoise_real  15.40 M  real-noise (SIDD) denoising, 3-channel σ-map
    VIRNet_sisr           5.90 M  blind SR, `scale` in {2, 3, 4}

forward(y) returns {"x": μ (clamped to [0, 1] in eval mode, as the published test scripts do),
"mu": unclamped μ, "sigma2": σ̂² (SNet's output), "sigma_map": estimated noise std, plus for SR
"kinfo" (N×3) and "kernel" (N×1×k×k)}.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.virnet_kernels import _check_axes, kernel_from_kinfo
from models.virnet_nets import AttResUNet, KernelNet, SigmaNet

SIGMA_LOG_MIN, SIGMA_LOG_MAX = math.log(1e-10), math.log(1e2)
SNET_OUTPUTS = ("variance", "std")


def _variance_from_snet(log_var: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.clamp(log_var, min=SIGMA_LOG_MIN, max=SIGMA_LOG_MAX))


def _clip_groups(groups: Dict[str, tuple]) -> Dict[str, torch.Tensor]:
    """Clip each sub-network's gradient norm separately; returns the norms before clipping (0-dim
    tensors, read only when logged: no host sync per step)."""
    norms = {}
    for name, (module, max_norm) in groups.items():
        params = [p for p in module.parameters() if p.grad is not None]
        if params and max_norm is not None and max_norm > 0:
            norms[name] = nn.utils.clip_grad_norm_(params, max_norm)
    return norms


class VIRNetDenoiser(nn.Module):
    """Blind denoiser: SNet (σ̂² map) + RNet conditioned on √σ̂²."""

    input_keys = ("y",)
    default_loss = "virnet_denoise"

    def __init__(self, in_chn: int = 3, sigma_chn: int = 1, n_feat: Sequence[int] = (96, 192, 288),
                 dep_S: int = 5, n_resblocks: int = 3, noise_cond: bool = True, extra_mode: str = "input",
                 snet_width: int = 64, clip_grad_R: float = 1e3, clip_grad_S: float = 1e2):
        super().__init__()
        self.noise_cond = bool(noise_cond)
        self.clip_grad_R, self.clip_grad_S = clip_grad_R, clip_grad_S
        self.SNet = SigmaNet(in_chn, sigma_chn, depth=dep_S, width=snet_width)
        self.RNet = AttResUNet(in_chn, extra_chn=sigma_chn if self.noise_cond else 0, out_chn=in_chn,
                               n_feat=list(n_feat), n_resblocks=n_resblocks,
                               extra_mode=extra_mode if self.noise_cond else "null")

    def forward(self, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        sigma2 = _variance_from_snet(self.SNet(y))
        sigma_map = sigma2.sqrt()
        mu = self.RNet(y, sigma_map if self.noise_cond else None)
        x = mu if self.training else mu.clamp(0.0, 1.0)
        return {"x": x, "mu": mu, "sigma2": sigma2, "sigma_map": sigma_map}

    def clip_gradients(self) -> Dict[str, torch.Tensor]:
        """Per-sub-network gradient-norm clipping (published: clip_grad_R, clip_grad_S)."""
        return _clip_groups({"grad_norm_R": (self.RNet, self.clip_grad_R),
                             "grad_norm_S": (self.SNet, self.clip_grad_S)})


class VIRNetSR(nn.Module):
    """Blind SR: SNet (one σ̂² per image), KNet (kernel parameters), RNet on the nearest-upsampled input.

    snet_output: what SNet's σ̂² means — "variance" (trained with the corrected loss, the documented
    default) or "std" (the released SR weights, trained with the noise std as prior); only the reported
    "sigma_map" depends on it. kernel_axes: "xy" (corrected) or "ij" (published, transposed) for the
    reported "kernel".
    """

    input_keys = ("y",)
    default_loss = "virnet_sisr"

    def __init__(self, scale: int = 4, in_chn: int = 3, sigma_chn: int = 1, kernel_chn: int = 3,
                 n_feat: Sequence[int] = (96, 160, 224), dep_S: int = 5, dep_K: int = 8,
                 n_resblocks: int = 2, extra_mode: str = "both", noise_cond: bool = True,
                 kernel_cond: bool = True, noise_avg: bool = True, snet_width: int = 64, knet_width: int = 64,
                 kernel_size: int = 21, kernel_axes: str = "xy", snet_output: str = "variance",
                 clip_grad_R: float = None, clip_grad_S: float = 1e2, clip_grad_K: float = None):
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer (got {scale!r})")
        if snet_output not in SNET_OUTPUTS:
            raise ValueError(f"snet_output must be one of {SNET_OUTPUTS} (got {snet_output!r})")
        self.scale = int(scale)
        self.noise_cond, self.kernel_cond, self.noise_avg = bool(noise_cond), bool(kernel_cond), bool(noise_avg)
        self.kernel_size, self.kernel_axes = int(kernel_size), _check_axes(kernel_axes)
        self.snet_output = snet_output
        # published thresholds: x2 -> 1e2 / 1e2 / 1e2, x3 and x4 -> 5e2 / 1e2 / 5e2 (R / S / K)
        default_rk = 1e2 if self.scale == 2 else 5e2
        self.clip_grad_R = default_rk if clip_grad_R is None else clip_grad_R
        self.clip_grad_S = clip_grad_S
        self.clip_grad_K = default_rk if clip_grad_K is None else clip_grad_K
        extra_chn = (kernel_chn if self.kernel_cond else 0) + (sigma_chn if self.noise_cond else 0)
        self.SNet = SigmaNet(in_chn, sigma_chn, depth=dep_S, width=snet_width, global_pool=self.noise_avg)
        self.KNet = KernelNet(in_chn, kernel_chn, width=knet_width, num_blocks=dep_K)
        self.RNet = AttResUNet(in_chn, extra_chn=extra_chn, out_chn=in_chn, n_feat=list(n_feat),
                               n_resblocks=n_resblocks, extra_mode=extra_mode if extra_chn else "null")

    def forward(self, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        sigma2 = _variance_from_snet(self.SNet(y))            # N×1×1×1 (noise_avg) or N×1×h×w
        kinfo = self.KNet(y)                                   # N×3×1×1
        y_up = F.interpolate(y, scale_factor=self.scale, mode="nearest")
        h_up, w_up = y_up.shape[-2:]
        extra = []
        if self.kernel_cond:
            extra.append(kinfo.expand(-1, -1, h_up, w_up))
        if self.noise_cond:
            cond = sigma2.sqrt()
            extra.append(cond.expand(-1, -1, h_up, w_up) if self.noise_avg
                         else F.interpolate(cond, scale_factor=self.scale, mode="nearest"))
        mu = self.RNet(y_up, torch.cat(extra, 1) if extra else None)
        x = mu if self.training else mu.clamp(0.0, 1.0)
        kinfo = kinfo.flatten(1)
        noise_std = sigma2 if self.snet_output == "std" else sigma2.sqrt()
        sigma_map = noise_std.expand(-1, -1, *y.shape[-2:]) if self.noise_avg else noise_std
        kernel = kernel_from_kinfo(kinfo, self.kernel_size, self.kernel_axes)
        return {"x": x, "mu": mu, "sigma2": sigma2, "sigma_map": sigma_map, "kinfo": kinfo, "kernel": kernel}

    def clip_gradients(self) -> Dict[str, torch.Tensor]:
        """Per-sub-network gradient-norm clipping (published: clip_grad_R, clip_grad_S, clip_grad_K)."""
        return _clip_groups({"grad_norm_R": (self.RNet, self.clip_grad_R),
                             "grad_norm_S": (self.SNet, self.clip_grad_S),
                             "grad_norm_K": (self.KNet, self.clip_grad_K)})


class VIRNet_denoise_syn(VIRNetDenoiser):
    """Synthetic non-i.i.d. Gaussian denoising (published: 10,539,332 parameters)."""

    def __init__(self, **options):
        options = {"sigma_chn": 1, "n_feat": (96, 192, 288), "dep_S": 5, "n_resblocks": 3,
                   "extra_mode": "input", "clip_grad_R": 1e3, "clip_grad_S": 1e2, **options}
        super().__init__(**options)


class VIRNet_denoise_real(VIRNetDenoiser):
    """Real-noise denoising, trained on SIDD (published: 15,403,974 parameters)."""

    def __init__(self, **options):
        options = {"sigma_chn": 3, "n_feat": (96, 160, 224, 288), "dep_S": 8, "n_resblocks": 3,
                   "extra_mode": "input", "clip_grad_R": 5e2, "clip_grad_S": 1e2, **options}
        super().__init__(**options)


class VIRNet_sisr(VIRNetSR):
    """Blind SR ×2/×3/×4 with kernel and noise estimation (published: 5,903,063 parameters)."""

    def __init__(self, **options):
        options = {"sigma_chn": 1, "kernel_chn": 3, "n_feat": (96, 160, 224), "dep_S": 5, "dep_K": 8,
                   "n_resblocks": 2, "extra_mode": "both", "noise_avg": True, **options}
        super().__init__(**options)
