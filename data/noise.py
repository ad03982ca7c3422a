"""Noise models: small objects `noise(img, rng) -> (noisy, sigma_map)`; `noise.add(img, rng)` also
returns the noise sample (noisy, sigma_map, noise): for the Gaussian models the drawn σ·z with
noisy = img + noise exactly as computed, for Poisson–Gaussian z − img before the clipping, for impulse
and JPEG noisy − img.

`img` is a C×H×W tensor in [0, 1]; `rng` a `numpy.random.Generator` (the only source of randomness).
`sigma_map` is a C×H×W tensor of the noise standard deviation on the [0, 1] scale. For Gaussian models
it is the exact σ; for the others it is the per-pixel RMS of (noisy − clean) under the model given the
clean value (Poisson–Gaussian: √(y/χ + σ²) before clipping; impulse: √(pc·E[(v − y)²]); JPEG: the
measured RMS error as a constant map). Specs give σ on the 0–255 scale, as the published configs do.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import torch

from data.sigma_maps import MAP_KINDS, sigma_map
from utils.registry import Registry, discover_extensions


_ONE_BITS = np.uint32(0x3F800000)  # float32 1.0: OR-ed with 23 random mantissa bits gives U[1, 2)


def gaussian(shape, rng: np.random.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """scale · N(0, 1) samples by Box–Muller from the raw 64-bit output of `rng` (a pure function of the
    Generator state). About as fast as torch.randn with a seeded generator, but it works in place in the
    buffer of random bits (less memory traffic) and folds the scale into the radius.

    Each 32-bit half of a word becomes f ∈ [1, 2) with 23 random mantissa bits (exact); u = 2 − f ∈ (0, 1]
    sets the radius √(−2 ln u) (|z| < 5.65) and the other half the angle 2π(f − 1.5); cos and sin give
    two normals. Kept rather than torch.randn seeded from `rng`: the shipped results depend on these
    draws (with torch.randn README Table 4 reads 26.47 / 0.7733 for the compact model, not 26.46 / 0.7737)."""
    n = math.prod(shape)
    half = (n + 1) // 2
    bits = rng.bit_generator.random_raw(half).view(np.uint32)
    bits >>= 9
    bits |= _ONE_BITS
    values = torch.from_numpy(bits.view(np.float32))
    if dtype == torch.float64:
        values = values.double()
    radius, angle = values[:half], values[half:]
    radius.neg_().add_(2.0).log_().mul_(-2.0 * scale * scale).sqrt_()
    angle.sub_(1.5).mul_(2.0 * math.pi)
    sin = torch.sin(angle)
    angle.cos_().mul_(radius)  # r cos θ
    radius.mul_(sin)  # r sin θ
    return values[:n].view(tuple(shape)).to(dtype)


def _range(value, what: str):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a pair [low, high], got {value!r}") from None
    if not 0 <= lo <= hi:
        raise ValueError(f"{what} must satisfy 0 <= low <= high, got {value!r}")
    return lo, hi


def _fmt(v: float) -> str:
    return f"{v:g}"


class Noise:
    """The noise contract (extension point 'noise', `register_noise`). A subclass implements one of
    - `corrupt(img, rng) -> (noisy, sigma_map)`: any model; the noise sample is taken as noisy − img;
    - `add(img, rng) -> (noisy, sigma_map, noise)`: additive models that return their exact sample.
    img is C×H×W in [0, 1]; sigma_map C×H×W on the [0, 1] scale; every random draw comes from `rng`
    (a numpy Generator), so a sample is a pure function of (seed, epoch, index). `name` labels reports."""
    name = "noise"

    def __call__(self, img: torch.Tensor, rng: np.random.Generator):
        noisy, sigma, _ = self.add(img, rng)
        return noisy, sigma

    def add(self, img: torch.Tensor, rng: np.random.Generator):
        """(noisy, sigma_map, noise sample); here noise = noisy − img."""
        noisy, sigma = self.corrupt(img, rng)
        return noisy, sigma, noisy - img

    def corrupt(self, img: torch.Tensor, rng: np.random.Generator):
        raise NotImplementedError

    def __repr__(self):
        return self.name


class NoNoise(Noise):
    name = "none"

    def add(self, img, rng):
        return img.clone(), torch.zeros_like(img), torch.zeros_like(img)


class UniformNoise(Noise):
    """AWGN with a fixed σ or σ ~ U(sigma_range) per sample (0–255 scale)."""

    def __init__(self, sigma: float | None = None, sigma_range: Sequence[float] | None = None):
        if (sigma is None) == (sigma_range is None):
            raise ValueError("uniform noise needs exactly one of 'sigma' or 'sigma_range'")
        if sigma is not None and float(sigma) < 0:
            raise ValueError(f"uniform noise 'sigma' must be >= 0, got {sigma}")
        self.sigma = None if sigma is None else float(sigma)
        self.sigma_range = None if sigma_range is None else _range(sigma_range, "uniform noise 'sigma_range'")
        self.name = (f"awgn(sigma={_fmt(self.sigma)})" if sigma is not None else
                     f"awgn(sigma~U[{_fmt(self.sigma_range[0])},{_fmt(self.sigma_range[1])}])")

    def add(self, img, rng):
        sigma = self.sigma if self.sigma is not None else rng.uniform(*self.sigma_range)
        sigma = sigma / 255.0
        noise = gaussian(img.shape, rng, img.dtype, sigma)
        return img + noise, torch.full_like(img, sigma), noise


REGION_LAYOUTS = {"one": 1, "four": 4, "top_bottom": 2, "left_right": 2}


class RegionNoise(Noise):
    """Piecewise-constant AWGN (NRL-GDN): 'one' σ, 'four' quadrants, 'top_bottom', 'left_right'; each
    σ ~ U(sigma_range)/255. The split is at H//2 and W//2, as published."""

    def __init__(self, layout: str = "four", sigma_range: Sequence[float] = (0.0, 12.75)):
        if layout not in REGION_LAYOUTS:
            raise ValueError(f"regions noise 'layout' is '{layout}', expected one of {list(REGION_LAYOUTS)}")
        self.layout, self.sigma_range = layout, _range(sigma_range, "regions noise 'sigma_range'")
        self.name = f"regions({layout}, sigma~U[{_fmt(self.sigma_range[0])},{_fmt(self.sigma_range[1])}])"

    def quadrant_sigmas(self, rng) -> list:
        s = list(rng.uniform(*self.sigma_range, size=REGION_LAYOUTS[self.layout]) / 255.0)
        return {"one": lambda: s * 4, "four": lambda: s, "top_bottom": lambda: [s[0], s[0], s[1], s[1]],
                "left_right": lambda: [s[0], s[1], s[0], s[1]]}[self.layout]()

    def add(self, img, rng):
        h, w = img.shape[-2:]
        h1, w1 = h // 2, w // 2
        s = self.quadrant_sigmas(rng)
        if len(set(s)) == 1:  # σ folded into the sampler: no extra pass over the image
            noise = gaussian(img.shape, rng, img.dtype, s[0])
            return img + noise, torch.full((1, h, w), s[0], dtype=img.dtype).expand_as(img), noise
        noise = gaussian(img.shape, rng, img.dtype)
        sigma = torch.empty((1, h, w), dtype=img.dtype)
        for value, rows, cols in ((s[0], slice(0, h1), slice(0, w1)), (s[1], slice(0, h1), slice(w1, w)),
                                  (s[2], slice(h1, h), slice(0, w1)), (s[3], slice(h1, h), slice(w1, w))):
            sigma[..., rows, cols] = value
            noise[..., rows, cols] *= value
        return img + noise, sigma.expand_as(img), noise


class SigmaMapNoise(Noise):
    """AWGN with a spatial σ-map ('peaks', 'gauss', 'gauss_mix', 'bumps') scaled to range/255; the
    map is shared by the channels and the noise is independent per channel."""

    def __init__(self, map: str = "peaks", range: Sequence[float] = (5.0, 25.0), base: int = 256,
                 interpolation: str = "bilinear"):
        if map not in MAP_KINDS:
            raise ValueError(f"sigma_map noise 'map' is '{map}', expected one of {list(MAP_KINDS)}")
        self.map, self.range = map, _range(range, "sigma_map noise 'range'")
        self.base, self.interpolation = int(base), interpolation
        self.name = f"sigma_map({map}, [{_fmt(self.range[0])},{_fmt(self.range[1])}])"

    def add(self, img, rng):
        lo, hi = self.range
        m = sigma_map(self.map, img.shape, rng, lo / 255.0, hi / 255.0, self.base, self.interpolation)
        sigma = torch.from_numpy(m).to(img.dtype).expand_as(img)
        noise = gaussian(img.shape, rng, img.dtype).mul_(sigma)
        return img + noise, sigma, noise


class PoissonGaussianNoise(Noise):
    """z = Poisson(χ·y)/χ + N(0, σ²), clipped to [0, 1] (Foi et al.; NRL-GDN test protocol)."""

    def __init__(self, peak: float = 128.0, sigma: float = 0.0, clip: bool = True):
        if float(peak) <= 0 or float(sigma) < 0:
            raise ValueError(f"poisson_gaussian noise needs 'peak' > 0 and 'sigma' >= 0, got {peak}, {sigma}")
        self.peak, self.sigma, self.clip = float(peak), float(sigma), bool(clip)
        self.name = f"poisson_gaussian(peak={_fmt(self.peak)}, sigma={_fmt(self.sigma)})"

    def add(self, img, rng):
        """The noise sample is taken before the clipping: z − img."""
        y = np.clip(img.detach().cpu().numpy().astype(np.float64), 0, None)
        z = rng.poisson(self.peak * y) / self.peak
        s = self.sigma / 255.0
        if s > 0:
            z = z + s * rng.standard_normal(z.shape)
        noise = torch.from_numpy(z).to(img.dtype) - img
        if self.clip:
            z = np.clip(z, 0.0, 1.0)
        sigma = np.sqrt(y / self.peak + s * s)
        return torch.from_numpy(z).to(img.dtype), torch.from_numpy(sigma).to(img.dtype), noise


IMPULSE_KINDS = ("random_valued", "salt_pepper")


class ImpulseNoise(Noise):
    """A fraction pc of the pixel positions (all channels) replaced: pc/2 'low' and pc/2 'high' draws of
    one uniform per pixel, as published. salt_pepper: low → 0, high → 1; random_valued: both → U(0, 1)
    per channel. `fraction` may be a list, one entry drawn per sample (NRL-GDN training uses 0.01..0.1)."""

    def __init__(self, fraction=0.1, kind: str = "random_valued"):
        if kind not in IMPULSE_KINDS:
            raise ValueError(f"impulse noise 'kind' is '{kind}', expected one of {list(IMPULSE_KINDS)}")
        choices = [float(f) for f in (fraction if isinstance(fraction, (list, tuple)) else [fraction])]
        if not choices or any(not 0 <= f <= 1 for f in choices):
            raise ValueError(f"impulse noise 'fraction' must be in [0, 1] (or a list of such), got {fraction!r}")
        self.fractions, self.kind = choices, kind
        self.name = f"impulse({kind}, pc={'|'.join(_fmt(f) for f in choices)})"

    def corrupt(self, img, rng):
        pc = self.fractions[int(rng.integers(len(self.fractions)))] if len(self.fractions) > 1 else self.fractions[0]
        u = rng.random(img.shape[-2:])
        low = torch.from_numpy(u <= pc / 2)
        high = torch.from_numpy(u >= 1 - pc / 2)
        z = img.clone()
        if self.kind == "salt_pepper":
            z[..., low] = 0.0
            z[..., high] = 1.0
            var = pc / 2 * (img ** 2 + (1 - img) ** 2)
        else:
            hit = low | high
            values = rng.random((img.shape[0], int(hit.sum())), dtype=np.float32)
            z[:, hit] = torch.from_numpy(values).to(img.dtype)
            var = pc * ((img - 0.5) ** 2 + 1.0 / 12.0)
        return z, var.sqrt()


class JpegNoise(Noise):
    """JPEG compression (Pillow, 4:2:0 chroma as OpenCV's default) at a quality or U{q1..q2}."""

    def __init__(self, quality=30):
        qs = list(quality) if isinstance(quality, (list, tuple)) else [quality, quality]
        if len(qs) != 2 or not all(1 <= int(q) <= 100 for q in qs) or int(qs[0]) > int(qs[1]):
            raise ValueError(f"jpeg noise 'quality' must be 1..100 or a range [q1, q2], got {quality!r}")
        self.quality = (int(qs[0]), int(qs[1]))
        q = self.quality
        self.name = f"jpeg(q={q[0]})" if q[0] == q[1] else f"jpeg(q~U{{{q[0]}..{q[1]}}})"

    def corrupt(self, img, rng):
        from PIL import Image

        q = int(rng.integers(self.quality[0], self.quality[1] + 1))
        if img.shape[0] not in (1, 3):
            raise ValueError(f"jpeg noise needs 1 or 3 channels, got {img.shape[0]}")
        u8 = (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        pil = Image.fromarray(u8[..., 0] if img.shape[0] == 1 else u8)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=q)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
        out = torch.from_numpy(out.reshape(u8.shape)).permute(2, 0, 1).to(img.dtype).contiguous()
        rms = float(((out - img) ** 2).mean().sqrt())
        return out, torch.full_like(img, rms)


class MixtureNoise(Noise):
    """One component per sample, chosen with probability ∝ weight (e.g. NRL-GDN: 2×'one', 1×'four')."""

    def __init__(self, components: Sequence):
        if not components:
            raise ValueError("mixture noise needs at least one component")
        self.weights = np.array([float(w) for w, _ in components])
        if (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError(f"mixture noise weights must be >= 0 with a positive sum, got {self.weights.tolist()}")
        self.probs = self.weights / self.weights.sum()
        self.components = [n for _, n in components]
        self.name = "mixture(" + ", ".join(f"{_fmt(w)}x{n.name}" for w, n in zip(self.weights, self.components)) + ")"

    def add(self, img, rng):
        i = min(int(np.searchsorted(np.cumsum(self.probs), rng.random(), side="right")), len(self.components) - 1)
        return self.components[i].add(img, rng)


NOISE = Registry("noise type", {
    "none": NoNoise,
    "uniform": UniformNoise,
    "regions": RegionNoise,
    "sigma_map": SigmaMapNoise,
    "poisson_gaussian": PoissonGaussianNoise,
    "impulse": ImpulseNoise,
    "jpeg": JpegNoise,
    "mixture": MixtureNoise,
}, discover=discover_extensions)


def register_noise(name: str, factory) -> None:
    """Add a noise type: `factory(**spec keys)` returns a `Noise`; its keyword arguments are the keys a spec
    {"type": name, ...} may hold (the config checks them at load). One file under data/ that calls this is
    found by itself (docs/extending.md)."""
    NOISE.register(name, factory)


def build_noise(spec, where: str = "noise") -> Noise:
    """Noise object from a config dict (see module doc); a Noise passes through, a number is AWGN σ."""
    if isinstance(spec, Noise):
        return spec
    if spec is None:
        return NoNoise()
    if isinstance(spec, (int, float)):
        return UniformNoise(sigma=float(spec))
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a dict with a 'type', got {type(spec).__name__}")
    if spec.get("type") != "mixture":
        return NOISE.build_spec(spec, where, Noise)
    components = []      # a mixture's components are specs themselves
    for i, comp in enumerate(spec.get("components") or []):
        if not isinstance(comp, dict) or set(comp) - {"weight", "noise"} or "noise" not in comp:
            raise KeyError(f"{where}.components[{i}]: expected keys 'weight' and 'noise', got {comp!r}")
        components.append((comp.get("weight", 1.0), build_noise(comp["noise"], f"{where}.components[{i}].noise")))
    return NOISE.build_spec({**spec, "components": components}, where, Noise)
