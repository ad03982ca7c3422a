"""Compare our DSDNet models with a user-supplied checkout of the published code (setsunil/DSDNet).

    python tools/compare_dsdnet_published.py --published /path/to/DSDNet [--branch-kind main|master]

`main` holds basicsr/models/archs/DSDNet_arch.py (DSDNet + DSDNet_plus, TCSVT 2025), `master`
holds src/models/archs/DSDNet_arch.py (DSDNet only, ECCV 2022). The published module is loaded from its
file (nothing is copied); `einops`, if missing, is replaced by a two-pattern stand-in. For every variant
the SAME random weights go into both networks (published state_dict -> ours, strict), constant-initialised
parameters are perturbed so that they matter, and the outputs on random blurred inputs (batches of 2
with odd and with even square kernels) are compared. The published code blurs by correlation, so our
models get the kernel rotated by 180° (and, as a second check, the unrotated one with
kernel_convention='correlation'). --dtype float64 runs both in double precision.
The loss (and, for DSDplus_e, its gradients) is compared with the published L1FFTLoss + degradation loss.
Prints max abs differences; exits 1 if any exceeds --tol.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.dsdnet import DSD_full, DSD_light, DSDplus_e, DSDplus_p  # noqa: E402
from models.dsdnet_loss import DSDNetLoss  # noqa: E402
from models.dsdnet_ops import BlurOperator, fft_init  # noqa: E402

VARIANTS = {  # name: (our class, published class, published constructor options)
    "DSD_full": (DSD_full, "DSDNet", dict(n_iter=4, nf_p=49, nf_d=49)),
    "DSD_light": (DSD_light, "DSDNet", dict(n_iter=3, nf_p=24, nf_d=24)),
    "DSDplus_p": (DSDplus_p, "DSDNet_plus", dict(n_iter=4, nf_p=48, nf_d=48)),
    "DSDplus_e": (DSDplus_e, "DSDNet_plus", dict(n_iter=1, nf_p=16, nf_d=16)),
}


def _einops_stand_in():
    module = types.ModuleType("einops")

    def rearrange(x, pattern, **sizes):
        if pattern == "b c h w -> b (h w) c":
            return x.flatten(2).transpose(1, 2)
        if pattern == "b (h w) c -> b c h w":
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], sizes["h"], sizes["w"])
        raise NotImplementedError(pattern)

    module.rearrange = rearrange
    return module


def _load_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_published(root, kind):
    """(architecture module, L1FFTLoss class or None) from the checkout, without its package imports."""
    if kind == "main":
        try:
            import einops  # noqa: F401
        except ImportError:
            sys.modules["einops"] = _einops_stand_in()
        arch = _load_file("published_dsdnet_arch", os.path.join(root, "basicsr/models/archs/DSDNet_arch.py"))
        saved = {k: sys.modules.get(k) for k in ("basicsr", "basicsr.models", "basicsr.models.losses",
                                                 "basicsr.models.losses.loss_util")}
        try:
            for k in list(saved)[:3]:
                sys.modules[k] = types.ModuleType(k)
            sys.modules["basicsr.models.losses.loss_util"] = _load_file(
                "basicsr.models.losses.loss_util", os.path.join(root, "basicsr/models/losses/loss_util.py"))
            losses = _load_file("published_dsdnet_losses", os.path.join(root, "basicsr/models/losses/losses.py"))
        finally:
            for k, v in saved.items():
                sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
        return arch, losses.L1FFTLoss
    # master: the arch file does `import models.archs.arch_util`, which would collide with our `models`
    names = ("models", "models.archs", "models.archs.arch_util")
    saved = {k: sys.modules.get(k) for k in names}
    try:
        util = _load_file("published_dsdnet_arch_util", os.path.join(root, "src/models/archs/arch_util.py"))
        pkg, sub = types.ModuleType("models"), types.ModuleType("models.archs")
        pkg.archs, sub.arch_util = sub, util
        sys.modules.update({"models": pkg, "models.archs": sub, "models.archs.arch_util": util})
        arch = _load_file("published_dsdnet_arch", os.path.join(root, "src/models/archs/DSDNet_arch.py"))
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
    return arch, None


def make_inputs(seed, size, kernel_size, batch=2):
    """Smooth random images, `batch` random square kernels (published layout N×h×w), noise σ = 0.01."""
    g = torch.Generator().manual_seed(seed)
    k_pub = torch.rand(batch, kernel_size, kernel_size, generator=g) ** 4
    k_pub = k_pub / k_pub.sum(dim=(1, 2), keepdim=True)
    gt = torch.nn.functional.avg_pool2d(torch.rand(batch, 3, size[0] + 4, size[1] + 4, generator=g), 5, 1)
    noise = 0.01 * torch.randn(batch, 3, *size, generator=g)
    return gt, k_pub, noise


def perturb_constants(model, seed):
    """Parameters initialised to a constant (mp, md, gamma, LayerNorm) get random values. DSDNet+'s
    Richardson weight gamma is drawn small: with untrained filter banks gamma ~ 1 makes the iterates
    diverge (|x| ~ 1e4 after 4 stages), and absolute differences would no longer mean much."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "gamma":
                p.copy_(0.05 * torch.rand(p.shape, generator=g))
            elif p.numel() > 0 and bool((p == p.flatten()[0]).all()):
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def max_diff(a, b):
    return float((a.detach() - b.detach()).abs().max())


def build_pair(name, arch, kind, seed):
    """The published network with random weights and ours loaded strictly from its state_dict."""
    ours_cls, pub_cls, opts = VARIANTS[name]
    torch.manual_seed(seed)
    extra = dict(drop_p=0.0) if kind == "master" else dict(dropout_rate=0.0)
    published = getattr(arch, pub_cls)(in_nc=3, out_nc=3, max_nc=4, kernel_size=7,
                                       padding_mode="replicate", **opts, **extra)
    perturb_constants(published, seed + 1)
    ours = ours_cls()
    ours.load_state_dict(published.state_dict(), strict=True)
    return published, ours


def compare_outputs(published, ours, arch, l1fft_cls, kind, gt, k_pub, noise, check_grads):
    report = {}
    lq = arch.bconv(gt, k_pub, "replicate") + noise  # published blur (correlation, replicate padding)
    k_ours = torch.flip(k_pub, dims=(-2, -1))[:, None]
    published.train(check_grads)
    ours.train(check_grads)
    published.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(check_grads):
        pub_out = published(lq, k_pub, torch.ones_like(lq)) if kind == "master" else published(lq, k_pub)
        our_out = ours(lq, k_ours)
    pub_stages = pub_out if isinstance(pub_out, list) else [pub_out]
    report["x"] = max_diff(pub_stages[-1], our_out["x"])
    for s, (a, b) in enumerate(zip(pub_stages, our_out["stages"])):
        report[f"stage{s}"] = max_diff(a, b)
    with torch.no_grad():
        ours.kernel_convention = "correlation"
        report["x(correlation k)"] = max_diff(pub_stages[-1], ours(lq, k_pub)["x"])
        ours.kernel_convention = "convolution"
    if l1fft_cls is not None:
        cri = l1fft_cls(loss_weight=1.0, reduction="mean")
        pub_loss = sum(cri(p, gt) for p in pub_stages)
        pub_loss = pub_loss + 0.01 * cri(arch.bconv(pub_stages[-1], k_pub, "replicate") + noise, lq)
        our_loss, _ = DSDNetLoss()(our_out, {"x": gt, "y": lq, "k": k_ours, "noise": noise})
        report["loss"] = abs(float(pub_loss.detach()) - float(our_loss.detach()))
        if check_grads:
            pub_loss.backward()
            our_loss.backward()
            pub_grads = dict(published.named_parameters())
            report["grads"] = max(max_diff(pub_grads[n].grad, p.grad) for n, p in ours.named_parameters())
    # context: how far the network moves x away from its FFT initialiser (not a difference)
    update = max_diff(our_out["x"], fft_init(lq, k_ours))
    return report, update


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", required=True, help="checkout of github.com/setsunil/DSDNet")
    parser.add_argument("--branch-kind", choices=("main", "master"), default=None,
                        help="which branch the checkout holds (default: detected from its files)")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    parser.add_argument("--size", nargs=2, type=int, default=(45, 56), metavar=("H", "W"))
    parser.add_argument("--kernel-sizes", nargs="+", type=int, default=(15, 16),
                        help="one test batch per size (odd and even sizes exercise different paddings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="float64 separates real differences from float32 round-off growth")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(getattr(torch, args.dtype))
    kind = args.branch_kind
    main_file = os.path.join(args.published, "basicsr/models/archs/DSDNet_arch.py")
    master_file = os.path.join(args.published, "src/models/archs/DSDNet_arch.py")
    if kind is None:
        kind = "main" if os.path.isfile(main_file) else "master" if os.path.isfile(master_file) else None
    expected = main_file if kind == "main" else master_file
    if kind is None or not os.path.isfile(expected):
        raise FileNotFoundError(f"--published {args.published}: no {expected if kind else 'DSDNet_arch.py'} "
                                "(expected a checkout of setsunil/DSDNet, branch main or master)")
    arch, l1fft_cls = load_published(args.published, kind)
    variants = args.variants or (list(VARIANTS) if kind == "main" else ["DSD_full", "DSD_light"])
    inputs = [make_inputs(args.seed + i, args.size, ks) for i, ks in enumerate(args.kernel_sizes)]
    print(f"published {kind} at {args.published}; {args.dtype}; y 2×3×{args.size[0]}×{args.size[1]}, "
          f"kernel sizes {list(args.kernel_sizes)} (one batch of 2 per size)")
    worst = 0.0
    for gt, k_pub, noise in inputs:
        lq = arch.bconv(gt, k_pub, "replicate") + noise
        k_ours = torch.flip(k_pub, dims=(-2, -1))[:, None]
        blur = BlurOperator(k_ours, "replicate")
        init_pub = arch.fft_deconv(lq, k_pub) if kind == "main" else arch.model_init(lq, k_pub, 1)
        ops = {"fft_init": max_diff(init_pub, fft_init(lq, k_ours)),
               "K": max_diff(arch.bconv(gt, k_pub, "replicate"), blur(gt)),
               "K^T": max_diff(arch.bconv(gt, torch.flip(k_pub, [1, 2]), "zeros"), blur.adjoint(gt))}
        print(f"  kernel {k_pub.shape[-1]}: " + ", ".join(f"{k} {v:.2e}" for k, v in ops.items()))
        worst = max([worst, *ops.values()])
    for name in variants:
        published, ours = build_pair(name, arch, kind, args.seed)
        for gt, k_pub, noise in inputs:
            check_grads = name == "DSDplus_e"
            report, update = compare_outputs(published, ours, arch, l1fft_cls, kind, gt, k_pub, noise, check_grads)
            print(f"{name} kernel {k_pub.shape[-1]}: " + ", ".join(f"{k} {v:.2e}" for k, v in report.items())
                  + f"  (max|x - x0| = {update:.2e})")
            worst = max([worst, *report.values()])
        del published, ours
    print(f"worst max|diff| = {worst:.3e} (tolerance {args.tol:g})")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
