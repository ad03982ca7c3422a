"""Compare our NRL-GDN variants with a checkout of the published code (github.com/kongsjsj/NRL-GDN).

    python tools/compare_nrlgdn_published.py --published /path/to/NRL-GDN [--size 61 70] [--ksize 15]

Both models get the SAME weights (the state_dict keys are identical; random weights, or --weights FILE
for an official .pth) and the same input; the script prints the max abs difference of the outputs and the
number of early-stopped steps of each. The published code needs `torch.rfft/irfft` (removed in PyTorch 1.8):
they are provided here at run time by equivalents on `torch.fft`; cv2 and pytorch_wavelets (imported but
unused by the model) are stubbed. Nothing from the checkout is copied into this project.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models import build_model, load_pretrained  # noqa: E402
from utils.operators import conv, conv_adjoint  # noqa: E402

# our name -> class name in the published models/oursnet/nrlgdn.py
PUBLISHED_CLASSES = {"NRL_GDN": "RGDNNonUniform", "NRL_GDN_Y0": "RGDNNonUniformY0", "rgdn_uniform": "RGDN"}


def _install_rfft_shim() -> None:
    """Old complex-as-last-axis API (onesided=False is all the published model uses) on torch.fft."""

    def rfft(t, signal_ndim, normalized=False, onesided=True):
        if signal_ndim != 2 or normalized or onesided:
            raise NotImplementedError("shim covers torch.rfft(t, 2, onesided=False) only")
        return torch.view_as_real(torch.fft.fft2(t))

    def irfft(t, signal_ndim, normalized=False, onesided=True, signal_sizes=None):
        if signal_ndim != 2 or normalized or onesided:
            raise NotImplementedError("shim covers torch.irfft(t, 2, onesided=False) only")
        return torch.fft.ifft2(torch.view_as_complex(t.contiguous())).real

    torch.rfft, torch.irfft = rfft, irfft


def import_published(checkout: str):
    """Import the published `models.oursnet.nrlgdn` without clobbering our own `models`/`utils`."""
    model_file = os.path.join(checkout, "models", "oursnet", "nrlgdn.py")
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"--published: {model_file} not found (expected a NRL-GDN checkout)")
    _install_rfft_shim()
    ours = {n: m for n, m in sys.modules.items() if n.split(".")[0] in ("models", "utils")}
    for name in ours:
        del sys.modules[name]
    for name in ("cv2", "pytorch_wavelets"):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.DWT = stub.IDWT = object
            sys.modules[name] = stub
    # package stub: skip the published utils/__init__ (it imports torchvision, cv2, ...)
    utils_pkg = types.ModuleType("utils")
    utils_pkg.__path__ = [os.path.join(checkout, "utils")]
    sys.modules["utils"] = utils_pkg
    sys.path.insert(0, checkout)
    try:
        return importlib.import_module("models.oursnet.nrlgdn")
    finally:
        sys.path.remove(checkout)
        for name in [n for n in sys.modules if n.split(".")[0] in ("models", "utils")]:
            del sys.modules[name]
        sys.modules.update(ours)


def make_input(size, ksize, seed, batch=1, noise=0.01):
    """Smooth random colour images blurred by random odd kernels (one per sample), plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.rand(batch, 3, h // 4 + 2, w // 4 + 2, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    k = torch.rand(batch, 1, ksize, ksize, generator=g) ** 4
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    y = conv(x, k) + noise * torch.randn(x.shape, generator=g)
    return y, k


@torch.no_grad()
def balance_weights(net, y, k, step_rms=0.02):
    """Rescale the last layer of H, R and D (bias-free ReLU nets are positively homogeneous) so that at
    x = y the data term and the regulariser have the same RMS and D's step is ~step_rms. With the
    training init the data branch is ~1e-5 of the update and a comparison would barely test it."""
    def rms(t):
        return t.pow(2).mean().sqrt().item()

    x = y
    residual = conv(x, k) - y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    net.h.main[-1].weight.mul_(rms(residual) / rms(net.h(residual)))
    if net.h_after_adjoint:
        data = net.h(conv_adjoint(residual, k))
    else:
        data = conv_adjoint(net.h(residual), k)
    net.r.m_tail.weight.mul_(rms(data) / rms(net.r(x)))
    net.d_alpha.main[-1].weight.mul_(step_rms / rms(net.d_alpha(data + net.r(x))))


def run_published(net, y, k):
    """Published forward(y, k_rotated, k): conv2d with the 180°-rotated kernel is the convolution."""
    calls = []
    handle = net.d_alpha.register_forward_hook(lambda *_: calls.append(1))  # one call per step
    try:
        out = net(y, torch.rot90(k, 2, (-1, -2)), k)
    finally:
        handle.remove()
    return out, len(calls)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", required=True, help="path to a checkout of kongsjsj/NRL-GDN")
    parser.add_argument("--variants", nargs="+", default=list(PUBLISHED_CLASSES), choices=list(PUBLISHED_CLASSES))
    parser.add_argument("--size", nargs=2, type=int, default=(61, 70), metavar=("H", "W"))
    parser.add_argument("--ksize", type=int, default=15, help="odd kernel size (the published code needs odd)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="optional official .pth for all variants")
    parser.add_argument("--init", choices=("balanced", "training"), default="balanced",
                        help="random weights: the published training init, or rescaled so every branch matters")
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = parser.parse_args(argv)
    if args.ksize % 2 == 0:
        parser.error("--ksize must be odd: the published model only supports odd kernels")
    if args.threads:
        torch.set_num_threads(args.threads)

    published = import_published(os.path.abspath(args.published))
    y, k = make_input(tuple(args.size), args.ksize, args.seed, args.batch)
    worst = 0.0
    all_ok = True
    for name in args.variants:
        torch.manual_seed(args.seed)
        ours = build_model(name, num_steps=args.num_steps).eval()
        if args.weights:
            load_pretrained(ours, args.weights)
        elif args.init == "balanced":
            balance_weights(ours, y, k)
        theirs = getattr(published, PUBLISHED_CLASSES[name])(num_steps=args.num_steps).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        with torch.no_grad():
            out_ours = ours(y, k)
            out_theirs, steps_theirs = run_published(theirs, y, k)
        diff = (out_ours - out_theirs).abs().max().item()
        ok = diff <= args.tol and ours.last_num_steps == steps_theirs
        all_ok &= ok
        worst = max(worst, diff)
        print(f"{name:13s} max|ours-published| = {diff:.3e}  (output range {out_theirs.min():.3f}..{out_theirs.max():.3f})"
              f"  steps ours/published = {ours.last_num_steps}/{steps_theirs}  {'OK' if ok else 'MISMATCH'}",
              flush=True)
    print(f"input {tuple(y.shape)}, kernel {tuple(k.shape)}, worst diff {worst:.3e}, tolerance {args.tol:g}: "
          f"{'all match' if all_ok else 'MISMATCH'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
