"""VIRNet's negative ELBO for blind denoising and blind SR (loss/ELBO_simple.py of the published code).

Variational families (as published): q(z) = N(μ, ε²) against the prior N(x, ε²); q(σ²) = IG(α0−1, α0·σ̂²)
against the prior IG(α0−1, α0·ξ), with α0 = p²/2 for the window size p and ξ the prior noise variance.
Every term is a plain mean over its elements and the terms are summed with unit weights:

    KL_G  = mean((μ − x)²) / (2ε²)
    KL_IG = mean((α0−1)·[ξ/σ̂² − 1 + log(σ̂²/ξ)])
    LH    = mean(½log2π + ½(log β − ψ(α)) + ½(α/β)·E[(y − D z)²]),  α = α0−1, β = α0·σ̂²

Denoising: D = I and E[(y − z)²] = (y − μ)² + ε² exactly. SR adds KL terms on KNet's kernel parameters
and uses one reparameterised sample of the kernel and of z with D = blur then ×1/s bicubic.

Published quirks, selectable for reproducing the released SR weights (corrected ones are the defaults):
- sigma_prior="std": the SR noise prior ξ is the noise std (published) instead of its variance;
- kernel_axes="ij": the sampled SR kernel is transposed relative to the data kernels (published).
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from models.losses import LossTerms
from models.virnet_kernels import _check_axes, kernel_from_covariance, kinfo_from_kernel

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
VARIANCE_FLOOR = 1e-10


# ------------------------------------------------------------------------------------ loss terms
def kl_gauss_equal_var(mu_q: torch.Tensor, mu_p: torch.Tensor, var: float) -> torch.Tensor:
    """mean KL(N(mu_q, var) ‖ N(mu_p, var)) = mean((mu_q − mu_p)²) / (2 var)."""
    return 0.5 * ((mu_q - mu_p) ** 2 / var).mean()


def kl_inverse_gamma_equal_shape(beta_q: torch.Tensor, alpha: float, beta_p: torch.Tensor) -> torch.Tensor:
    """mean KL(IG(alpha, beta_q) ‖ IG(alpha, beta_p)) = alpha·[β_p/β_q − 1 + log β_q − log β_p]."""
    return (alpha * (beta_p / beta_q - 1) + alpha * (beta_q.log() - beta_p.log())).mean()


def expected_gauss_nll(sq_err: torch.Tensor, alpha: float, beta: torch.Tensor) -> torch.Tensor:
    """mean E_{σ²~IG(alpha, beta)}[−log N(r | 0, σ²)] given E[r²] = sq_err (E[log σ²] = log β − ψ(α),
    E[σ⁻²] = α/β)."""
    return (HALF_LOG_2PI + 0.5 * (beta.log() - _digamma(float(alpha))) + 0.5 * (alpha / beta) * sq_err).mean()


@functools.lru_cache(maxsize=None)
def _digamma(alpha: float) -> float:
    """ψ(alpha) in float64, computed once per value (a constant of the loss, not of the batch)."""
    return float(torch.special.digamma(torch.tensor(alpha, dtype=torch.float64)))


def gaussian_window(size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """size×size normalised Gaussian with OpenCV's default σ = 0.3·((size−1)/2 − 1) + 0.8."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    k2 = np.outer(g, g)
    return torch.from_numpy(k2 / k2.sum()).to(dtype=dtype, device=device)


def local_noise_variance(y: torch.Tensor, x: torch.Tensor, window: int) -> torch.Tensor:
    """ξ for real noise: Gaussian-weighted local mean of (y − x)² per channel (reflect padding),
    floored at 1e-10."""
    chn = y.shape[1]
    kernel = gaussian_window(window, y.dtype, y.device).expand(chn, 1, window, window)
    err2 = F.pad((y - x) ** 2, [window // 2] * 4, mode="reflect")
    return F.conv2d(err2, kernel, groups=chn).clamp_min(VARIANCE_FLOOR)


def _require(batch: dict, key: str, why: str) -> torch.Tensor:
    if key not in batch:
        raise KeyError(f"VIRNet loss needs batch['{key}'] ({why}); batch has {sorted(batch)}")
    return batch[key]


def _mean_output(outputs: dict) -> torch.Tensor:
    return outputs["mu"] if "mu" in outputs else outputs["x"]


def _scalars(**terms) -> Dict[str, float]:
    return LossTerms(**terms)     # read lazily: no host sync per training step


def _fp32(*tensors):
    """The ELBO multiplies errors by up to 1/(2·1e-6): evaluate it in at least float32, outside autocast."""
    return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


def _no_autocast(t: torch.Tensor):
    return torch.autocast(device_type=t.device.type, enabled=False)


# ------------------------------------------------------------------------------------- denoising
class VIRNetDenoiseLoss:
    """Negative ELBO for blind denoising.

    prior: "sigma" — ξ = batch["sigma"]² (the generator's σ-map, synthetic training);
           "residual" — ξ = Gaussian-window mean of (y − x)² (real-noise training on SIDD).
    Published defaults: eps2 = 1e-6, var_window = 7.
    """

    PRIORS = ("sigma", "residual")

    def __init__(self, eps2: float = 1e-6, var_window: int = 7, prior: str = "sigma"):
        if prior not in self.PRIORS:
            raise ValueError(f"VIRNetDenoiseLoss prior must be one of {self.PRIORS} (got {prior!r})")
        if eps2 <= 0 or var_window < 2:
            raise ValueError(f"VIRNetDenoiseLoss needs eps2 > 0 and var_window >= 2 (got {eps2}, {var_window})")
        self.eps2, self.var_window, self.prior = float(eps2), int(var_window), prior
        self.alpha0 = 0.5 * self.var_window ** 2

    def prior_variance(self, batch: dict) -> torch.Tensor:
        if self.prior == "sigma":
            sigma = _require(batch, "sigma", "the true noise std map, prior='sigma'")
            return (sigma ** 2).clamp_min(VARIANCE_FLOOR)
        x = _require(batch, "x", "the clean image for the residual prior")
        return local_noise_variance(batch["y"], x, self.var_window)

    def __call__(self, outputs: dict, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        with _no_autocast(outputs["sigma2"]):
            return self._elbo(outputs, batch)

    def _elbo(self, outputs: dict, batch: dict):
        mu, sigma2 = _fp32(_mean_output(outputs), outputs["sigma2"])
        x = _require(batch, "x", "the clean image")
        y = _require(batch, "y", "the noisy image")
        xi = self.prior_variance(batch).to(mu.dtype)
        alpha = self.alpha0 - 1
        beta = self.alpha0 * sigma2
        kl_gauss = kl_gauss_equal_var(mu, x, self.eps2)
        kl_igamma = kl_inverse_gamma_equal_shape(beta, alpha, self.alpha0 * xi)
        lh = expected_gauss_nll((y - mu) ** 2 + self.eps2, alpha, beta)
        loss = lh + kl_gauss + kl_igamma
        return loss, _scalars(loss=loss, lh=lh, kl_gauss=kl_gauss, kl_igamma=kl_igamma)


# ------------------------------------------------------------------------------------------ SISR
def blur_and_downsample(z: torch.Tensor, kernel: torch.Tensor, scale: int, downsampler: str = "bicubic"):
    """D z: per-sample convolution with N×1×k×k kernels (reflect padding k//2), then ×1/scale
    ("bicubic": MATLAB imresize with antialiasing; "direct": every scale-th pixel)."""
    n, c, h, w = z.shape
    kh, kw = kernel.shape[-2:]
    padded = F.pad(z, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    weight = kernel.flip(-2, -1).repeat_interleave(c, dim=0)          # (N·C)×1×k×k, true convolution
    blurred = F.conv2d(padded.reshape(1, n * c, *padded.shape[-2:]), weight, groups=n * c)
    blurred = blurred.reshape(n, c, *blurred.shape[-2:])
    if downsampler == "direct":
        return blurred[..., ::scale, ::scale]
    if downsampler == "bicubic":
        from utils.imresize import imresize
        return imresize(blurred, 1.0 / scale, antialiasing=True)
    raise ValueError(f"downsampler must be 'bicubic' or 'direct' (got {downsampler!r})")


class VIRNetSISRLoss:
    """Negative ELBO for blind SR (published defaults: eps2 1e-5, var_window 9, kappa0 50, r2 1e-4,
    penalty_K [0.02, 2], 21×21 kernels, bicubic downsampling).

    Batch: "x" HR, "y" LR, "sigma" noise std (N×1×1×1 or a map), "kinfo" N×3 kernel parameters
    (var_x, var_y, rho) — estimated from the moments of batch["k"] when absent — and "scale"
    (else the `scale` option).
    sigma_prior: "variance" (ξ = σ², corrected default) or "std" (ξ = σ, published).
    kernel_axes: "xy" (corrected default) or "ij" (published: kernel transposed in the likelihood).
    """

    SIGMA_PRIORS = ("variance", "std")

    def __init__(self, scale: int = None, eps2: float = 1e-5, var_window: int = 9, kappa0: float = 50.0,
                 r2: float = 1e-4, penalty_K: Sequence[float] = (0.02, 2.0), kernel_size: int = 21,
                 downsampler: str = "bicubic", sigma_prior: str = "variance", kernel_axes: str = "xy"):
        if sigma_prior not in self.SIGMA_PRIORS:
            raise ValueError(f"VIRNetSISRLoss sigma_prior must be one of {self.SIGMA_PRIORS} (got {sigma_prior!r})")
        if downsampler not in ("bicubic", "direct"):
            raise ValueError(f"VIRNetSISRLoss downsampler must be 'bicubic' or 'direct' (got {downsampler!r})")
        if len(penalty_K) != 2:
            raise ValueError(f"VIRNetSISRLoss penalty_K must be two numbers (got {penalty_K!r})")
        self.scale = scale
        self.eps2, self.r2, self.kappa0 = float(eps2), float(r2), float(kappa0)
        self.alpha0 = 0.5 * int(var_window) ** 2
        self.penalty_K = tuple(float(p) for p in penalty_K)
        self.kernel_size, self.downsampler = int(kernel_size), downsampler
        self.sigma_prior, self.kernel_axes = sigma_prior, _check_axes(kernel_axes)

    # the two Monte-Carlo draws, in the published order (kernel first, then z)
    def sample_kernel(self, kinfo: torch.Tensor) -> torch.Tensor:
        """Reparameterised kernel: var_j ~ IG(κ0−1, κ0·v̂_j), rho ~ N(ρ̂, r2) (clamped to [−1, 1])."""
        shape = torch.full_like(kinfo[:, :2], self.kappa0 - 1)
        # validate_args=False: the positivity checks would cost a host sync per step; KNet's variances
        # are positive by construction
        gamma = torch.distributions.Gamma(shape, self.kappa0 * kinfo[:, :2], validate_args=False)
        variances = 1.0 / gamma.rsample()
        rho = kinfo[:, 2:3] + math.sqrt(self.r2) * torch.randn_like(kinfo[:, 2:3])
        var1, var2 = variances[:, :1], variances[:, 1:]
        cross = var1.detach().sqrt() * var2.detach().sqrt() * rho.clamp(-1, 1)
        cov = torch.cat([var1, cross, cross, var2], dim=1).view(-1, 2, 2)
        return kernel_from_covariance(cov, self.kernel_size, self.kernel_axes)

    def sample_z(self, mu: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * math.sqrt(self.eps2)

    def _scale(self, batch: dict) -> int:
        scale = batch.get("scale", self.scale)
        if torch.is_tensor(scale):   # collate keeps it an int; a tensor here (a host sync) comes from elsewhere
            scale = scale.flatten()[0].item()
        elif isinstance(scale, (list, tuple)):
            scale = scale[0]
        if scale is None:
            raise KeyError("VIRNetSISRLoss needs batch['scale'] or the 'scale' option")
        return int(scale)

    def __call__(self, outputs: dict, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        with _no_autocast(outputs["sigma2"]):
            return self._elbo(outputs, batch)

    def _elbo(self, outputs: dict, batch: dict):
        mu, sigma2, kinfo = _fp32(_mean_output(outputs), outputs["sigma2"], outputs["kinfo"])
        x_hr = _require(batch, "x", "the HR image")
        y_lr = _require(batch, "y", "the LR image")
        sigma = _require(batch, "sigma", "the noise std").to(mu.dtype)
        kinfo_gt = batch["kinfo"] if "kinfo" in batch else kinfo_from_kernel(
            _require(batch, "k", "the blur kernel, or 'kinfo'"))
        kinfo_gt = kinfo_gt.to(kinfo).reshape(-1, 3)
        scale = self._scale(batch)

        xi = sigma if self.sigma_prior == "std" else sigma ** 2
        alpha = self.alpha0 - 1
        beta = self.alpha0 * sigma2
        kl_r = kl_gauss_equal_var(mu, x_hr, self.eps2)
        kl_s = kl_inverse_gamma_equal_shape(beta, alpha, self.alpha0 * xi)
        k0 = self.kappa0
        kl_k0 = kl_inverse_gamma_equal_shape(k0 * kinfo[:, 0], k0 - 1, k0 * kinfo_gt[:, 0])
        kl_k1 = kl_inverse_gamma_equal_shape(k0 * kinfo[:, 1], k0 - 1, k0 * kinfo_gt[:, 1])
        kl_rho = kl_gauss_equal_var(kinfo[:, 2], kinfo_gt[:, 2], self.r2) * self.penalty_K[0]
        kl_k = (kl_k0 + kl_k1 + kl_rho) / 3 * self.penalty_K[1]

        kernel = self.sample_kernel(kinfo)
        z = self.sample_z(mu)
        residual2 = (y_lr - blur_and_downsample(z, kernel, scale, self.downsampler)) ** 2
        lh = expected_gauss_nll(residual2, alpha, beta)
        loss = lh + kl_r + kl_s + kl_k
        return loss, _scalars(loss=loss, lh=lh, kl_r=kl_r, kl_s=kl_s, kl_k=kl_k, kl_k0=kl_k0, kl_k1=kl_k1,
                              kl_rho=kl_rho)
