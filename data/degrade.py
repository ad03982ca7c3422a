"""One degradation pipeline y = noise(downsample(k ⊛ x)) for every model and protocol.

`Degradation(kernels, noise, blur, scale)` draws a kernel (a sampler callable or one fixed kernel),
blurs, optionally downsamples (MATLAB bicubic, super-resolution) and adds noise, all from one
`numpy.random.Generator`. Blur modes:
- 'circular'  periodic boundary by FFT, equal to `ndimage.convolve(mode='wrap')` (the papers' tests);
- 'replicate' / 'reflect' / 'symmetric' / 'constant'  'same' convolution with that boundary
              ('reflect' = ndimage 'mirror'; 'symmetric' = ndimage 'reflect', VIRNet's SR blur);
- 'valid'     only pixels whose kernel window lies inside x; x is cropped to the same region, so the
              blurred border carries real content from outside the returned x (realistic boundary);
- None        no blur (denoising); k is the 1×1 identity kernel.
A list of modes (e.g. ["circular", "valid"]) draws one per sample, uniformly; when it holds 'valid', the
other modes blur the same cropped region, so every sample of a batch has one size.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from data.kernels import build_kernel_sampler, validate_kernel
from data.noise import build_noise
from utils.config import DataError
from utils.operators import Blur

BLUR_MODES = ("circular", "replicate", "reflect", "symmetric", "constant", "valid", None)


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside the block. The last bit of an FFT or a matrix product depends on the
    thread count; DataLoader workers run one thread, so synthesising on one thread in the main process too
    (num_workers=0, validation, tests) makes the data bit-identical for every worker count."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def circular_blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Periodic blur of N×C×H×W images with N×1×h×w kernels, = `ndimage.convolve(mode='wrap')`: the one
    blur operator, `utils.operators.Blur` with boundary 'circular'."""
    return Blur(k, "circular").A(x)


def blur(x: torch.Tensor, k: torch.Tensor, mode: str = "circular") -> torch.Tensor:
    """Blur N×C×H×W images with N×1×h×w kernels; 'valid' returns (H−h+1)×(W−w+1)."""
    if mode == "circular":
        return circular_blur(x, k)
    kh, kw = k.shape[-2:]
    # Pad so that no output pixel of interest wraps around, then use the FFT circular blur.
    top, left = kh - 1 - kh // 2, kw - 1 - kw // 2
    bottom, right = kh // 2, kw // 2
    if mode == "valid":
        h, w = x.shape[-2:]
        if kh > h or kw > w:
            raise DataError(f"'valid' blur needs an image at least as large as the kernel {kh}×{kw}, got {h}×{w}")
        rows, cols = valid_crop(kh, kw, h, w)
        return circular_blur(x, k)[..., rows, cols]
    if mode not in ("replicate", "reflect", "symmetric", "constant"):
        raise ValueError(f"blur mode '{mode}' unknown, expected one of {list(BLUR_MODES)}")
    h, w = x.shape[-2:]
    if mode in ("reflect", "symmetric") and (max(top, bottom) >= h or max(left, right) >= w):
        raise DataError(f"'{mode}' blur needs an image larger than half the kernel, got {h}×{w}")
    if mode == "symmetric":  # half-sample symmetric: torch has no such padding, so gather indices
        rows = torch.from_numpy(np.pad(np.arange(h), (top, bottom), mode="symmetric")).to(x.device)
        cols = torch.from_numpy(np.pad(np.arange(w), (left, right), mode="symmetric")).to(x.device)
        padded = x.index_select(-2, rows).index_select(-1, cols)
    elif mode == "constant":
        padded = F.pad(x, (left, right, top, bottom))
    else:
        padded = F.pad(x, (left, right, top, bottom), mode=mode)
    return circular_blur(padded, k)[..., top:top + h, left:left + w]


def valid_crop(kh: int, kw: int, h: int, w: int):
    """(row slice, column slice) of x that a 'valid' blur with an kh×kw kernel corresponds to."""
    return slice(kh - 1 - kh // 2, h - kh // 2), slice(kw - 1 - kw // 2, w - kw // 2)


class Degradation:
    """Callable `(x C×H×W, rng) -> dict(x, y, k 1×h×w, sigma C×H'×W', noise C×H'×W' [, scale, kinfo])`.

    `noise` is the noise sample: y = (blurred, downsampled) x + noise before the optional clipping of y
    (for Gaussian noise exactly as computed; see `data.noise.Noise.add`)."""

    def __init__(self, kernels=None, noise=None, blur: str | None = "circular", scale: int = 1,
                 quantize_blur: bool = False, clip: bool = False):
        if isinstance(blur, (list, tuple)):
            if not blur or None in blur or any(m not in BLUR_MODES for m in blur):
                raise ValueError(f"a list of blur modes must be non-empty, of {list(BLUR_MODES[:-1])}, got {blur!r}")
            blur = tuple(blur) if len(blur) > 1 else blur[0]
        elif blur not in BLUR_MODES:
            raise ValueError(f"blur must be one of {list(BLUR_MODES)}, got {blur!r}")
        if blur is not None and kernels is None:
            raise ValueError(f"blur '{blur}' needs kernels (a sampler or a fixed kernel)")
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        self.blur, self.scale = blur, int(scale)
        self.quantize_blur, self.clip = bool(quantize_blur), bool(clip)
        self.noise = build_noise(noise)
        if kernels is None or callable(kernels):
            self.sampler, self.fixed = kernels, None
        else:
            self.sampler, self.fixed = None, validate_kernel(kernels, "Degradation kernel")

    def _kernel(self, rng):
        if self.blur is None:
            return np.ones((1, 1)), {}
        if self.fixed is not None:
            return self.fixed, {}
        if hasattr(self.sampler, "sample"):
            return self.sampler.sample(rng)
        return self.sampler(rng), {}

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> dict:
        with one_thread():
            return self._degrade(x, rng)

    def _degrade(self, x: torch.Tensor, rng: np.random.Generator) -> dict:
        k_np, extras = self._kernel(rng)
        k = torch.from_numpy(np.ascontiguousarray(k_np)).to(x.dtype)[None]
        if self.scale > 1:  # HR size must be a multiple of the scale (modcrop)
            h, w = x.shape[-2:]
            x = x[..., :h - h % self.scale, :w - w % self.scale]
        mode = self.blur
        if isinstance(mode, tuple):   # one mode per sample; 'valid' among them fixes the size for all
            mode = mode[int(rng.integers(len(mode)))]
            if mode != "valid" and "valid" in self.blur:
                rows, cols = valid_crop(*k.shape[-2:], *x.shape[-2:])
                x = x[..., rows, cols]
        if mode is None:
            clean = x  # noise models never modify their input in place
        else:
            clean = blur(x[None], k[None], mode)[0]
            if mode == "valid":
                rows, cols = valid_crop(*k.shape[-2:], *x.shape[-2:])
                x = x[..., rows, cols]
        if self.quantize_blur:  # the published NRL-GDN training blurs uint8 images (truncating)
            clean = (clean * 255.0).add_(1e-3).floor_().div_(255.0)
        if self.scale > 1:
            from utils.imresize import imresize

            clean = imresize(clean.clamp(0, 1)[None], 1.0 / self.scale)[0]
        y, sigma, noise = self.noise.add(clean, rng)  # the sample itself, e.g. for DSDNet's loss
        if self.clip:
            y = y.clamp(0, 1)
        out = {"x": x, "y": y, "k": k, "sigma": sigma, "noise": noise}
        if self.scale > 1:
            out["scale"] = self.scale
        if "kinfo" in extras:
            out["kinfo"] = torch.as_tensor(extras["kinfo"], dtype=x.dtype)
        return out

    def __repr__(self):
        kern = "fixed kernel" if self.fixed is not None else repr(self.sampler)
        sr = f", scale={self.scale}" if self.scale > 1 else ""
        return f"Degradation({kern}, blur={self.blur}, noise={self.noise.name}{sr})"


SPEC_KEYS = {"kernels", "noise", "blur", "scale", "quantize_blur", "clip"}


def build_degradation(spec: dict) -> Degradation:
    """From a config section, e.g. {"kernels": {"type": "random"}, "noise": {"type": "mixture", ...},
    "blur": "circular"}; kernels may be a sampler spec, a kernel file path or omitted for denoising."""
    if not isinstance(spec, dict):
        raise ValueError(f"degradation: expected a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise KeyError(f"degradation: unknown key(s) {unknown}, expected {sorted(SPEC_KEYS)}")
    blur_mode = spec.get("blur", "circular")
    kernels = spec.get("kernels")
    sampler = None if kernels is None or blur_mode is None else build_kernel_sampler(kernels)
    return Degradation(sampler, build_noise(spec.get("noise")), blur=blur_mode, scale=spec.get("scale", 1),
                       quantize_blur=spec.get("quantize_blur", False), clip=spec.get("clip", False))
