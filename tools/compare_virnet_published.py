"""Compare our VIRNet with the published code (github.com/zsyOAOA/VIRNet) on the same random weights.

    python tools/compare_virnet_published.py --published /path/to/VIRNet [--size 45 37] [--seed 0]

For each published configuration (denoising-syn, denoising-real, SR ×2/×3/×4) the published network
is built and randomly initialised, its state dict is loaded strictly into ours, and both run on the
same input; the script prints the max abs differences of the image mean, the σ-map, the kernel
parameters and the 21×21 kernel estimate, then of the ELBO terms (same RNG seed for the Monte-Carlo
draws of the SR loss). Exit status 1 when a network output differs by more than --tol.

The published code is imported from the given checkout and never copied. Modules it imports but the
comparison does not need (thop, lpips; cv2 when not installed) are stubbed at run time.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import types

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED_PACKAGES = ("utils", "networks", "loss", "ResizeRight", "datasets")


def _stub_module(name: str, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _install_stubs() -> list:
    notes = []
    _stub_module("thop", profile=lambda *a, **k: (0, 0))
    _stub_module("lpips", LPIPS=None)
    try:
        import cv2  # noqa: F401
    except ImportError:
        def get_gaussian_kernel(ksize, sigma):  # OpenCV's formula for sigma > 0 (float64 column)
            t = np.arange(ksize) - (ksize - 1) / 2
            g = np.exp(-t ** 2 / (2 * sigma ** 2))
            return (g / g.sum())[:, None]
        _stub_module("cv2", getGaussianKernel=get_gaussian_kernel)
        notes.append("cv2 not installed: getGaussianKernel stubbed (the real-noise prior check is then "
                     "not independent)")
    import scipy.interpolate as interp
    if not hasattr(interp, "interp2d"):
        interp.interp2d = None  # removed in new SciPy; only the unused shift_pixel needs it
    return notes


def _is_package_module(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PUBLISHED_PACKAGES)


def import_published(path: str):
    """Import the published modules from `path` without clobbering our own `utils` package."""
    if not os.path.isfile(os.path.join(path, "networks", "VIRNet.py")):
        raise FileNotFoundError(f"--published {path}: networks/VIRNet.py not found (expected a VIRNet checkout)")
    notes = _install_stubs()
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_package_module(k)}
    sys.path.insert(0, path)
    try:
        import importlib
        mods = {name: importlib.import_module(name) for name in
                ("networks.VIRNet", "loss.ELBO_simple", "utils.util_sisr", "utils.util_denoising",
                 "ResizeRight.resize_right")}
    finally:
        sys.path.remove(path)
        for k in [k for k in sys.modules if _is_package_module(k)]:
            sys.modules.pop(k)
        sys.modules.update(ours)
    return mods, notes


def _perturb_biases(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Published init leaves SNet biases at zero; random biases exercise every path."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max())


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare_denoiser(pub, name: str, options: dict, hw, seed: int, results: dict) -> None:
    from models import build_model
    from models.virnet_loss import VIRNetDenoiseLoss

    torch.manual_seed(seed)
    ref = pub["networks.VIRNet"].VIRAttResUNet(3, **options)
    _perturb_biases(ref, torch.Generator().manual_seed(seed + 1))
    ours = build_model(name)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval(), ours.eval()
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.rand(2, 3, *hw, generator=gen)
    sigma_true = 0.02 + 0.2 * torch.rand(2, 1, *hw, generator=gen)
    y = x + sigma_true * torch.randn(2, 3, *hw, generator=gen)
    with torch.no_grad():
        mu_ref, var_ref = ref(y)
        out = ours(y)
    tag = name
    results[f"{tag} image mean (mu)"] = _maxdiff(out["mu"], mu_ref)
    results[f"{tag} x = clamp(mu)"] = _maxdiff(out["x"], mu_ref.clamp(0, 1))
    results[f"{tag} sigma2 (SNet variance)"] = _maxdiff(out["sigma2"], var_ref)
    results[f"{tag} sigma_map (std)"] = _maxdiff(out["sigma_map"], var_ref.sqrt())

    # ELBO on the same outputs; published alpha0 is a float32 tensor
    elbo = pub["loss.ELBO_simple"].elbo_denoising_simple
    alpha0 = 0.5 * torch.tensor([7 ** 2], dtype=torch.float32)
    if options["sigma_chn"] == 1:
        xi_ref, loss_fn, batch = sigma_true ** 2, VIRNetDenoiseLoss(), {"x": x, "y": y, "sigma": sigma_true}
    else:
        xi_ref = pub["utils.util_denoising"].noise_estimate_fun(y, x, 7)
        loss_fn, batch = VIRNetDenoiseLoss(prior="residual"), {"x": x, "y": y}
        results[f"{tag} residual prior xi"] = _maxdiff(loss_fn.prior_variance(batch), xi_ref)
    # outputs scaled near x so that no term dominates the others by orders of magnitude
    mu_near = x + 0.01 * (mu_ref - mu_ref.mean())
    loss_ref, lh, klg, klig = elbo(mu_near, var_ref, y, x, 1e-6, alpha0, alpha0 * xi_ref)
    loss, terms = loss_fn({"mu": mu_near, "sigma2": var_ref}, batch)
    for key, value in (("loss", loss_ref), ("lh", lh), ("kl_gauss", klg), ("kl_igamma", klig)):
        results[f"{tag} ELBO {key} (rel)"] = _rel(terms[key], float(value))


def compare_sr(pub, scale: int, hw, seed: int, results: dict) -> None:
    from models import build_model
    from models.virnet_loss import VIRNetSISRLoss

    torch.manual_seed(seed)
    ref = pub["networks.VIRNet"].VIRAttResUNetSR(3, sigma_chn=1, kernel_chn=3, n_feat=[96, 160, 224], dep_S=5,
                                                 dep_K=8, noise_cond=True, kernel_cond=True, n_resblocks=2,
                                                 extra_mode="Both", noise_avg=True)
    _perturb_biases(ref, torch.Generator().manual_seed(seed + 1))
    ours = build_model("VIRNet_sisr", scale=scale, kernel_axes="ij", snet_output="std")
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours_xy = build_model("VIRNet_sisr", scale=scale)
    ours_xy.load_state_dict(ref.state_dict(), strict=True)
    for net in (ref, ours, ours_xy):
        net.eval()
    gen = torch.Generator().manual_seed(seed + 2)
    y = torch.rand(2, 3, *hw, generator=gen)
    with torch.no_grad():
        mu_ref, kinfo_ref, sigma_ref = ref(y, scale)
        out, out_xy = ours(y), ours_xy(y)
    kernel_ref = pub["utils.util_sisr"].kinfo2sigma(kinfo_ref, k_size=21, sf=scale, shift=False)
    tag = f"VIRNet_sisr x{scale}"
    results[f"{tag} image mean (mu)"] = _maxdiff(out["mu"], mu_ref)
    results[f"{tag} x = clamp(mu)"] = _maxdiff(out["x"], mu_ref.clamp(0, 1))
    results[f"{tag} sigma2 (SNet output)"] = _maxdiff(out["sigma2"], sigma_ref)
    results[f"{tag} sigma_map (published: SNet output is the std)"] = _maxdiff(
        out["sigma_map"], sigma_ref.expand(-1, -1, *hw))
    results[f"{tag} kinfo"] = _maxdiff(out["kinfo"], kinfo_ref)
    results[f"{tag} kernel, axes=ij vs kinfo2sigma"] = _maxdiff(out["kernel"], kernel_ref)
    results[f"{tag} kernel, axes=xy vs kinfo2sigma transposed"] = _maxdiff(
        out_xy["kernel"], kernel_ref.transpose(-2, -1))

    # bicubic x1/s: published ResizeRight vs our MATLAB imresize (they treat the image border differently)
    from utils.imresize import imresize
    hr_probe = torch.rand(2, 3, hw[0] * scale, hw[1] * scale, generator=gen, dtype=torch.float64)
    down_ref = pub["ResizeRight.resize_right"].resize(hr_probe, scale_factors=1 / scale)
    down_ours = imresize(hr_probe, 1.0 / scale)
    results[f"{tag} note: bicubic down, ResizeRight vs imresize, all pixels"] = _maxdiff(down_ours, down_ref)
    results[f"{tag} note: bicubic down, ResizeRight vs imresize, 2-px border excluded"] = _maxdiff(
        down_ours[..., 2:-2, 2:-2], down_ref[..., 2:-2, 2:-2])

    # SR ELBO with the published quirks switched on, same seed for the MC draws
    lgen = torch.Generator().manual_seed(seed + 3)
    hr = torch.rand(2, 3, hw[0] * scale, hw[1] * scale, generator=lgen)
    mu_near = hr + 0.01 * (mu_ref - mu_ref.mean())
    kinfo_gt = torch.tensor([[2.0, 1.0, 0.3], [1.5, 3.0, -0.5]])
    nlevel = torch.tensor([5.0, 10.0]).view(2, 1, 1, 1) / 255
    kinfo_est = torch.cat([kinfo_gt[:, :2] * 1.2, kinfo_gt[:, 2:] * 0.8], 1)
    alpha0 = 0.5 * torch.tensor([9 ** 2], dtype=torch.float32)
    for down in ("Direct", "Bicubic"):
        torch.manual_seed(seed + 4)
        loss_ref, det = pub["loss.ELBO_simple"].elbo_sisr(
            mu=mu_near, sigma_est=sigma_ref, kinfo_est=kinfo_est, im_hr=hr, im_lr=y, sigma_prior=nlevel,
            alpha0=alpha0, kinfo_gt=kinfo_gt, kappa0=50, r2=1e-4, eps2=1e-5, sf=scale, k_size=21,
            penalty_K=[0.02, 2], shift=False, downsampler=down)
        loss_fn = VIRNetSISRLoss(scale=scale, downsampler=down.lower(), sigma_prior="std", kernel_axes="ij")
        torch.manual_seed(seed + 4)
        loss, terms = loss_fn({"mu": mu_near, "sigma2": sigma_ref, "kinfo": kinfo_est},
                              {"x": hr, "y": y, "sigma": nlevel, "kinfo": kinfo_gt})
        names = ("lh", "kl_r", "kl_s", "kl_k", "kl_k0", "kl_k1", "kl_rho")
        results[f"{tag} ELBO[{down}] loss (rel)"] = _rel(terms["loss"], float(loss_ref))
        for key, value in zip(names, det[:7]):
            results[f"{tag} ELBO[{down}] {key} (rel)"] = _rel(terms[key], float(value))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--published", required=True, help="checkout of github.com/zsyOAOA/VIRNet")
    parser.add_argument("--size", type=int, nargs=2, default=(45, 37), help="denoising input H W")
    parser.add_argument("--sr-size", type=int, nargs=2, default=(19, 14), help="SR (LR) input H W")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        pub, notes = import_published(os.path.abspath(args.published))
    except (FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print("note:", note)

    results = {}
    compare_denoiser(pub, "VIRNet_denoise_syn", dict(sigma_chn=1, n_feat=[96, 192, 288], dep_S=5, n_resblocks=3,
                                                    noise_cond=True, extra_mode="Input"),
                     args.size, args.seed, results)
    compare_denoiser(pub, "VIRNet_denoise_real", dict(sigma_chn=3, n_feat=[96, 160, 224, 288], dep_S=8,
                                                     n_resblocks=3, noise_cond=True, extra_mode="Input"),
                     args.size, args.seed, results)
    for scale in (2, 3, 4):
        compare_sr(pub, scale, args.sr_size, args.seed, results)

    worst = 0.0
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3e}")
        if "(rel)" not in key and "note:" not in key:
            worst = max(worst, value)
    print(f"max abs diff over network outputs: {worst:.3e} (tolerance {args.tol:g})")
    return 0 if worst <= args.tol and all(math.isfinite(v) for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
