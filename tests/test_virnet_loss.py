"""VIRNet ELBO terms against float64 re-derivations (numerical integration, scipy filters)."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, ndimage, special, stats

from models.virnet_kernels import kernel_from_kinfo
from models.virnet_loss import VIRNetDenoiseLoss, VIRNetSISRLoss, local_noise_variance


def kl_invgamma_numeric(a, b_q, b_p):
    """KL(IG(a, b_q) ‖ IG(a, b_p)) by integrating q·log(q/p) over σ²."""
    q, p = stats.invgamma(a, scale=b_q), stats.invgamma(a, scale=b_p)
    lo, hi = q.ppf(1e-13), q.ppf(1 - 1e-13)
    value, _ = integrate.quad(lambda s: q.pdf(s) * (q.logpdf(s) - p.logpdf(s)), lo, hi,
                              points=[q.mean()], limit=200, epsabs=1e-12, epsrel=1e-10)
    return value


def expected_nll_numeric(sq_err, a, b):
    """E_{σ²~IG(a, b)}[½log 2π + ½log σ² + sq_err/(2σ²)] by numerical integration."""
    dist = stats.invgamma(a, scale=b)
    return dist.expect(lambda s: 0.5 * math.log(2 * math.pi) + 0.5 * math.log(s) + sq_err / (2 * s),
                       lb=dist.ppf(1e-14), ub=dist.ppf(1 - 1e-14), epsabs=1e-12, epsrel=1e-10)


def _denoise_case(seed=0, chn=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 3, 2, generator=g, dtype=torch.float64)
    sigma = 0.02 + 0.1 * torch.rand(1, 1, 3, 2, generator=g, dtype=torch.float64)
    y = x + sigma * torch.randn(1, 3, 3, 2, generator=g, dtype=torch.float64)
    mu = x + 0.003 * torch.randn(1, 3, 3, 2, generator=g, dtype=torch.float64)
    sigma2 = (sigma * (1 + 0.3 * torch.rand(1, chn, 3, 2, generator=g, dtype=torch.float64))) ** 2
    return x, y, sigma, mu, sigma2


def test_denoise_elbo_terms_match_numerical_integration():
    x, y, sigma, mu, sigma2 = _denoise_case()
    loss_fn = VIRNetDenoiseLoss()                      # published: eps2 1e-6, window 7
    loss, terms = loss_fn({"mu": mu, "sigma2": sigma2}, {"x": x, "y": y, "sigma": sigma})
    a0 = 7 ** 2 / 2                                     # α0 = p²/2; posterior and prior shape α0 − 1
    s2, xi = sigma2.numpy().ravel(), (sigma ** 2).numpy().ravel()
    kl_ig = np.mean([kl_invgamma_numeric(a0 - 1, a0 * s, a0 * p) for s, p in zip(s2, xi)])
    # KL of two Gaussians with equal variance ε², general formula
    eps2 = 1e-6
    m, t = mu.numpy(), x.numpy()
    kl_g = np.mean(0.5 * (np.log(eps2 / eps2) + (eps2 + (m - t) ** 2) / eps2 - 1))
    # likelihood: σ² map (1 channel) broadcast over the 3 colour channels; E[(y − z)²] = (y − μ)² + ε²
    sq = ((y - mu) ** 2 + eps2).numpy()
    b = np.broadcast_to(a0 * sigma2.numpy(), sq.shape)
    lh = np.mean([expected_nll_numeric(e, a0 - 1, bb) for e, bb in zip(sq.ravel(), b.ravel())])
    assert terms["kl_igamma"] == pytest.approx(kl_ig, rel=1e-7)
    assert terms["kl_gauss"] == pytest.approx(kl_g, rel=1e-10)
    assert terms["lh"] == pytest.approx(lh, rel=1e-7)
    assert float(loss) == pytest.approx(kl_ig + kl_g + lh, rel=1e-9)


def test_residual_prior_is_opencv_gaussian_window_mean_of_squared_residual():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 9, 8, generator=g, dtype=torch.float64)
    y = x + 0.1 * torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64)
    t = np.arange(7) - 3.0
    w1 = np.exp(-t ** 2 / (2 * 1.4 ** 2))              # OpenCV default σ for a 7-tap window: 1.4
    window = np.outer(w1, w1) / np.outer(w1, w1).sum()
    err2 = ((y - x) ** 2).numpy()
    ref = np.stack([[ndimage.correlate(err2[n, c], window, mode="mirror") for c in range(3)] for n in range(2)])
    assert np.allclose(local_noise_variance(y, x, 7).numpy(), np.maximum(ref, 1e-10), rtol=1e-12)
    loss_fn = VIRNetDenoiseLoss(prior="residual")
    mu, sigma2 = x.clone(), torch.full((2, 3, 9, 8), 0.01, dtype=torch.float64)
    _, terms = loss_fn({"mu": mu, "sigma2": sigma2}, {"x": x, "y": y})
    a = 23.5
    expected = np.mean(a * (ref / 0.01 - 1 + np.log(0.01 / ref)))
    assert terms["kl_igamma"] == pytest.approx(expected, rel=1e-9)


def test_denoise_loss_errors_name_the_missing_key():
    x, y, sigma, mu, sigma2 = _denoise_case()
    with pytest.raises(KeyError, match="sigma"):
        VIRNetDenoiseLoss()({"mu": mu, "sigma2": sigma2}, {"x": x, "y": y})
    with pytest.raises(ValueError, match="prior"):
        VIRNetDenoiseLoss(prior="oracle")


def _sr_case(scale=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(2, 3, 8 * scale, 7 * scale, generator=g, dtype=torch.float64)
    mu = hr + 0.01 * torch.randn(hr.shape, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 8, 7, generator=g, dtype=torch.float64)
    kinfo_gt = torch.tensor([[2.0, 1.0, 0.3], [1.5, 3.0, -0.5]], dtype=torch.float64)
    kinfo = torch.tensor([[2.4, 0.9, 0.25], [1.2, 3.3, -0.4]], dtype=torch.float64)
    nlevel = torch.tensor([5.0, 10.0], dtype=torch.float64).view(2, 1, 1, 1) / 255
    sigma2 = torch.tensor([0.03, 0.05], dtype=torch.float64).view(2, 1, 1, 1) ** 2
    outputs = {"mu": mu, "sigma2": sigma2, "kinfo": kinfo}
    batch = {"x": hr, "y": y, "sigma": nlevel, "kinfo": kinfo_gt, "scale": scale}
    return outputs, batch


@pytest.mark.parametrize("sigma_prior", ["variance", "std"])
def test_sisr_kl_terms_match_hand_computation(sigma_prior):
    outputs, batch = _sr_case()
    loss_fn = VIRNetSISRLoss(sigma_prior=sigma_prior, downsampler="direct")
    _, terms = loss_fn(outputs, batch)
    a0, k0, r2 = 81 / 2, 50.0, 1e-4
    xi = batch["sigma"].numpy().ravel() ** (2 if sigma_prior == "variance" else 1)
    s2 = outputs["sigma2"].numpy().ravel()
    kl_s = np.mean([kl_invgamma_numeric(a0 - 1, a0 * s, a0 * p) for s, p in zip(s2, xi)])
    est, gt = outputs["kinfo"].numpy(), batch["kinfo"].numpy()
    kl_k0 = np.mean([kl_invgamma_numeric(k0 - 1, k0 * e, k0 * t) for e, t in zip(est[:, 0], gt[:, 0])])
    kl_k1 = np.mean([kl_invgamma_numeric(k0 - 1, k0 * e, k0 * t) for e, t in zip(est[:, 1], gt[:, 1])])
    kl_rho = np.mean((est[:, 2] - gt[:, 2]) ** 2 / (2 * r2)) * 0.02
    kl_r = np.mean((outputs["mu"].numpy() - batch["x"].numpy()) ** 2) / (2 * 1e-5)
    assert terms["kl_s"] == pytest.approx(kl_s, rel=1e-7)
    assert terms["kl_k0"] == pytest.approx(kl_k0, rel=1e-7)
    assert terms["kl_k1"] == pytest.approx(kl_k1, rel=1e-7)
    assert terms["kl_rho"] == pytest.approx(kl_rho, rel=1e-10)
    assert terms["kl_k"] == pytest.approx((kl_k0 + kl_k1 + kl_rho) / 3 * 2, rel=1e-7)
    assert terms["kl_r"] == pytest.approx(kl_r, rel=1e-10)


@pytest.mark.parametrize("scale", [2, 3])
def test_sisr_likelihood_with_fixed_draws_matches_scipy_degradation(scale):
    outputs, batch = _sr_case(scale)
    loss_fn = VIRNetSISRLoss(downsampler="direct")
    fixed_kernel = kernel_from_kinfo(torch.tensor([[3.0, 1.2, 0.4], [1.0, 2.0, 0.0]], dtype=torch.float64))
    loss_fn.sample_kernel = lambda kinfo: fixed_kernel
    loss_fn.sample_z = lambda mu: mu
    loss, terms = loss_fn(outputs, batch)
    a0 = 81 / 2
    lh = []
    for n in range(2):
        k = fixed_kernel[n, 0].numpy()
        beta = a0 * float(outputs["sigma2"][n])
        for c in range(3):
            # torch 'reflect' padding == scipy 'mirror'
            blurred = ndimage.convolve(outputs["mu"][n, c].numpy(), k, mode="mirror")[::scale, ::scale]
            r2 = (batch["y"][n, c].numpy() - blurred) ** 2
            lh.append(0.5 * math.log(2 * math.pi) + 0.5 * (math.log(beta) - special.digamma(a0 - 1))
                      + 0.5 * (a0 - 1) / beta * r2)
    assert terms["lh"] == pytest.approx(float(np.mean(lh)), rel=1e-10)
    assert float(loss) == pytest.approx(terms["lh"] + terms["kl_r"] + terms["kl_s"] + terms["kl_k"], rel=1e-12)


def test_sisr_bicubic_likelihood_uses_matlab_imresize():
    imresize = pytest.importorskip("utils.imresize").imresize
    outputs, batch = _sr_case(2)
    fixed_kernel = kernel_from_kinfo(batch["kinfo"])
    loss_fn = VIRNetSISRLoss()
    loss_fn.sample_kernel = lambda kinfo: fixed_kernel
    loss_fn.sample_z = lambda mu: mu
    _, terms = loss_fn(outputs, batch)
    a0 = 81 / 2
    lh = []
    for n in range(2):
        k = fixed_kernel[n, 0].numpy()
        beta = a0 * float(outputs["sigma2"][n])
        blurred = np.stack([ndimage.convolve(outputs["mu"][n, c].numpy(), k, mode="mirror") for c in range(3)], -1)
        r2 = (batch["y"][n].permute(1, 2, 0).numpy() - imresize(blurred, 0.5)) ** 2
        lh.append(0.5 * math.log(2 * math.pi) + 0.5 * (math.log(beta) - special.digamma(a0 - 1))
                  + 0.5 * (a0 - 1) / beta * r2)
    assert terms["lh"] == pytest.approx(float(np.mean(lh)), rel=1e-9)


def test_sisr_kernel_sample_concentrates_and_published_axes_transpose_it():
    kinfo = torch.tensor([[3.0, 1.0, 0.5]], dtype=torch.float64)
    torch.manual_seed(0)   # the draw is random: independent of the tests that ran before
    sharp = VIRNetSISRLoss(kappa0=1e8, r2=1e-14)
    assert torch.allclose(sharp.sample_kernel(kinfo), kernel_from_kinfo(kinfo), atol=1e-5)
    torch.manual_seed(0)
    xy = VIRNetSISRLoss().sample_kernel(kinfo)
    torch.manual_seed(0)
    ij = VIRNetSISRLoss(kernel_axes="ij").sample_kernel(kinfo)
    assert torch.equal(ij, xy.transpose(-2, -1))
    assert not torch.allclose(ij, xy)


def test_sisr_inverse_gamma_kernel_draws_have_the_right_mean():
    torch.manual_seed(1)
    loss_fn = VIRNetSISRLoss(r2=1e-14)
    kinfo = torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64).repeat(4000, 1)
    kernels = loss_fn.sample_kernel(kinfo)[:, 0]
    offsets = torch.arange(21, dtype=torch.float64) - 10
    var_cols = (kernels.sum(1) * offsets ** 2).sum(1)       # per-draw variance of the (untruncated) kernel
    # IG(κ0−1, κ0·v): mean κ0·v/(κ0−2) = 2.0833 for v = 2
    assert float(var_cols.mean()) == pytest.approx(50 * 2 / 48, rel=0.01)


def test_sisr_gradients_reach_every_output_and_kinfo_falls_back_to_kernel_moments():
    outputs, batch = _sr_case()
    outputs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
    loss, _ = VIRNetSISRLoss(downsampler="direct")(outputs, batch)
    loss.backward()
    for key in ("mu", "sigma2", "kinfo"):
        assert outputs[key].grad is not None and bool(outputs[key].grad.abs().sum() > 0), key
    with_k = dict(batch, k=kernel_from_kinfo(batch["kinfo"], 41))
    del with_k["kinfo"]
    torch.manual_seed(0)
    _, from_moments = VIRNetSISRLoss(downsampler="direct")({k: v.detach() for k, v in outputs.items()}, with_k)
    torch.manual_seed(0)
    _, from_kinfo = VIRNetSISRLoss(downsampler="direct")({k: v.detach() for k, v in outputs.items()}, batch)
    assert from_moments["kl_k"] == pytest.approx(from_kinfo["kl_k"], rel=1e-5)


def test_sisr_bad_options_and_missing_keys():
    with pytest.raises(ValueError, match="sigma_prior"):
        VIRNetSISRLoss(sigma_prior="precision")
    with pytest.raises(ValueError, match="downsampler"):
        VIRNetSISRLoss(downsampler="nearest")
    outputs, batch = _sr_case()
    del batch["kinfo"]
    with pytest.raises(KeyError, match="'k'"):
        VIRNetSISRLoss()(outputs, batch)
