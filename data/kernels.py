"""Blur kernels: random generators of the three papers, 8-way augmentation, samplers.

Every generator takes a `numpy.random.Generator` and returns a float64 h×w array summing to 1, in the
`scipy.ndimage.convolve` convention (centre at index h//2, w//2). Kernel files (.mat, .npy, PNG folders)
are read by `load_kernels`; every kernel passes `validate_kernel` (finite, positive sum, normalised).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.config import DataError
from utils.registry import Registry, discover_extensions
from utils.operators import warn_negative_kernel

# ---------------------------------------------------------------------------------------------
# Motion kernels from random 3-D camera trajectories (the generator NRL-GDN, KAIR and DSDNet ship)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _trajectory_constants(n: int):
    """(2π/n, t + 1, a^t) for t = 1..n-1, a = 1 + 2π/n (read-only; the kernels depend on their exact
    rounding, since the published bin edges do)."""
    step = 2.0 * math.pi / n
    t = np.arange(1, n, dtype=np.float64)
    t1, growth = t + 1.0, (1.0 + step) ** t
    t1.flags.writeable = growth.flags.writeable = False
    return step, t1, growth


def trajectory_from_noise(v0: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Camera path (n×3) of the published random walk, computed without a per-point loop.

    v0: initial velocity (3,); noise: (n-1)×2×3 standard normals, [:, 0] rotation and [:, 1]
    translation forces of steps t = 1..n-1. The published recursion is
        r_t = r_{t-1} + (2π/n)(ε_t/(t+1) + r_{t-1}),  v_t = v_{t-1} + η_t/(t+1),
        x_t = x_{t-1} + Rz(r_t,2) Ry(r_t,1) Rx(r_t,0) v_t.
    The linear recursion for r is solved in closed form: r_t = a^t Σ_{s≤t} a^{-s} c_s, a = 1 + 2π/n.
    """
    n = noise.shape[0] + 1
    step, t1, growth = _trajectory_constants(n)
    forces = np.ascontiguousarray(noise.transpose(1, 2, 0))  # 2×3×(n-1): one row per axis
    r = growth * np.cumsum(step * forces[0] / t1 / growth, axis=1)
    v = v0[:, None] + np.cumsum(forces[1] / t1, axis=1)
    c, s = np.cos(r), np.sin(r)
    # Rx, then Ry, then Rz applied to v (same as (Rz @ Ry @ Rx) @ v).
    u0, u1, u2 = v[0], c[0] * v[1] - s[0] * v[2], s[0] * v[1] + c[0] * v[2]
    w0, w1, w2 = c[1] * u0 + s[1] * u2, u1, -s[1] * u0 + c[1] * u2
    path = np.zeros((n, 3))
    path[1:] = np.cumsum(np.stack([c[2] * w0 - s[2] * w1, s[2] * w0 + c[2] * w1, w2]), axis=1).T
    return path


def random_trajectory(rng: np.random.Generator, n_points: int = 250) -> np.ndarray:
    v0 = rng.standard_normal(3)
    return trajectory_from_noise(v0, rng.standard_normal((n_points - 1, 2, 3)))


def bin_trajectory(rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray | None:
    """Counts of trajectory points on a size×size grid, with the published bin edges
    `arange(min, max, (max-min)/size)` and half-open bins [e_{i-1}, e_i): points beyond the last
    edge are dropped (so the last row/column stays nearly empty, as published). None if empty."""
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    if r1 == r0 or c1 == c0:
        return None
    edges_r = np.arange(r0, r1, (r1 - r0) / size)
    edges_c = np.arange(c0, c1, (c1 - c0) / size)
    ir = np.searchsorted(edges_r, rows, side="right") - 1
    ic = np.searchsorted(edges_c, cols, side="right") - 1
    keep = (ir < min(len(edges_r) - 1, size)) & (ic < min(len(edges_c) - 1, size))
    out = np.bincount(ir[keep] * size + ic[keep], minlength=size * size).reshape(size, size).astype(np.float64)
    return out if out.sum() > 0 else None


def _fspecial_gaussian(size: int, std: float) -> np.ndarray:
    """MATLAB fspecial('gaussian', size, std): isotropic, tiny values cut, sum 1."""
    half = (size - 1) / 2.0
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    k = np.exp(-(x * x + y * y) / (2.0 * std * std))
    k[k < np.finfo(float).eps * k.max()] = 0
    return k / k.sum()


_SMOOTH_1D = np.exp(-0.5 * np.array([1.0, 0.0, 1.0]))
_SMOOTH_1D /= _SMOOTH_1D.sum()  # 1-D factor of fspecial('gaussian', 3, 1)


def _smooth3(k: np.ndarray) -> np.ndarray:
    """'same' zero-padded convolution with the 3×3 Gaussian (σ = 1), done separably."""
    p = np.zeros((k.shape[0] + 2, k.shape[1] + 2))
    p[1:-1, 1:-1] = k
    g0, g1 = _SMOOTH_1D[0], _SMOOTH_1D[1]
    rows = g0 * (p[:-2] + p[2:]) + g1 * p[1:-1]
    return g0 * (rows[:, :-2] + rows[:, 2:]) + g1 * rows[:, 1:-1]


def _linear_resize_matrix(n_in: int, n_out: int, first: int, count: int) -> np.ndarray:
    """Rows first..first+count-1 of the OpenCV INTER_LINEAR (half-pixel, edge-clamped) resize matrix."""
    src = (np.arange(first, first + count) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    taps = np.arange(n_in)[None, :]
    return (taps == lo[:, None]) * (1.0 - frac[:, None]) + (taps == hi[:, None]) * frac[:, None]


def _zoom_centre_crop(k: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear up-scaling of k to out_h×out_w followed by a centre crop back to k's size."""
    h, w = k.shape
    rows = _linear_resize_matrix(h, out_h, (out_h - h) // 2, h)
    cols = _linear_resize_matrix(w, out_w, (out_w - w) // 2, w)
    return rows @ k @ cols.T


def motion_kernel(rng: np.random.Generator, size: int = 25, n_points: int = 250, max_extent: int = 27,
                  zoom_prob: float = 0.25, max_zoom: int = 5) -> np.ndarray:
    """Random motion blur with the distribution of the published `blurkernel_synthesis(h=size)`.

    Extent h = round(min(5 − ln U / 0.15, max_extent)) made odd; trajectory of `n_points` binned on
    h×h, smoothed by a 3×3 Gaussian (σ=1); centre-padded to size×size (a larger one keeps its top-left
    size×size block, as published); with probability `zoom_prob` up-scaled bilinearly to
    U{size..5·size} per axis and centre-cropped; if less than 0.1 of the mass is left, an isotropic
    Gaussian with σ ~ 0.1 + 6U replaces it.
    """
    traj = random_trajectory(rng, n_points)
    k = None
    while k is None:
        extent = int(np.round(min(5.0 - math.log(1.0 - rng.random()) / 0.15, max_extent)))
        extent = extent + 1 - extent % 2
        k = bin_trajectory(traj[:, 0], traj[:, 1], extent)
    k = _smooth3(k / k.sum())
    k = k / k.sum()
    before = (size - k.shape[0]) // 2
    if before < 0:
        k = k[:size, :size]
    else:
        padded = np.zeros((size, size))
        padded[before:before + k.shape[0], before:before + k.shape[1]] = k
        k = padded
    if rng.random() < zoom_prob:
        out_w = int(rng.integers(size, max_zoom * size + 1))
        out_h = int(rng.integers(size, max_zoom * size + 1))
        k = _zoom_centre_crop(k, out_h, out_w)
    if k.sum() < 0.1:
        k = _fspecial_gaussian(size, 0.1 + 6.0 * rng.random())
    return k / k.sum()


# ---------------------------------------------------------------------------------------------
# Gaussian kernels
# ---------------------------------------------------------------------------------------------


def _rotated_cov(var1: float, var2: float, theta: float) -> np.ndarray:
    q = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return q @ np.diag([var1, var2]) @ q.T


def anisotropic_gaussian(size: int, var1: float, var2: float, theta: float, centre=None) -> np.ndarray:
    """Gaussian with covariance Q diag(var1, var2) Qᵀ, Q = rotation by theta; x along columns, y along
    rows (the `meshgrid` convention of KAIR/VIRNet); centre defaults to (size//2, size//2)."""
    return gaussian_from_cov(size, _rotated_cov(var1, var2, theta), centre)


def gaussian_from_cov(size: int, cov: np.ndarray, centre=None) -> np.ndarray:
    """size×size Gaussian exp(-½ dᵀ cov⁻¹ d), d = (col − cx, row − cy), normalised to sum 1."""
    c = np.broadcast_to(np.asarray(size // 2 if centre is None else centre, dtype=np.float64), (2,))
    inv = np.linalg.inv(cov)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - c[0], y - c[1]
    quad = inv[0, 0] * dx * dx + (inv[0, 1] + inv[1, 0]) * dx * dy + inv[1, 1] * dy * dy
    k = np.exp(-0.5 * quad)
    return k / k.sum()


def gaussian_kernel(rng: np.random.Generator, size: int = 25, var_range=(0.6, 12.0),
                    shifts: Sequence[float] = (0.0,)) -> np.ndarray:
    """Random anisotropic Gaussian: variances ~ U(var_range), angle ~ U(0, π), centre size//2 − shift
    with shift drawn from `shifts` (the published NRL-GDN recipe uses (0, .5, 1, 1.5): KAIR's
    `gen_kernel` with sf ∈ {1,2,3,4})."""
    lo, hi = var_range
    var1 = lo + rng.random() * (hi - lo)
    var2 = lo + rng.random() * (hi - lo)
    theta = rng.random() * math.pi
    shift = float(shifts[int(rng.integers(len(shifts)))]) if len(shifts) > 1 else float(shifts[0])
    return anisotropic_gaussian(size, var1, var2, theta, centre=size // 2 - shift)


def sr_gaussian_kernel(rng: np.random.Generator, scale: float, size: int = 21):
    """VIRNet SR training kernel: std λ1 ~ U(0.2, sf), λ2 ~ U(λ1, sf) (λ2 = λ1 w.p. 0.3), θ ~ U(0, π).
    Returns (kernel, kinfo) with kinfo = (Σ00, Σ11, Σ01/√(Σ00Σ11)) in HR pixels², x along columns."""
    lam1 = rng.uniform(0.2, scale)
    lam2 = rng.uniform(lam1, scale) if rng.random() < 0.7 else lam1
    theta = rng.uniform(0.0, math.pi)
    cov = _rotated_cov(lam1 ** 2, lam2 ** 2, theta)
    kinfo = np.array([cov[0, 0], cov[1, 1], cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])])
    return gaussian_from_cov(size, cov), kinfo


def isotropic_gaussian(size: int, std: float) -> np.ndarray:
    return anisotropic_gaussian(size, std * std, std * std, 0.0)


# VIRNet's SR test kernels (scripts/sisr_virnet_syn.py): std factors of the scale along the two principal
# axes and the rotation in units of π
VIRNET_SR_TEST_KERNELS = ((0.4, 0.4, 0.0), (0.6, 0.6, 0.0), (0.8, 0.8, 0.0), (0.4, 0.2, 0.0),
                          (0.6, 0.3, 0.75), (0.8, 0.4, 0.25), (0.8, 0.4, 0.5))


def virnet_sr_test_kernels(scale: float, size: int = 21):
    """The seven fixed VIRNet SR test kernels for a scale factor: [(kernel, kinfo)], where kernel i has
    variances ((a_i·scale)², (b_i·scale)²) rotated by θ_i (VIRNET_SR_TEST_KERNELS), centred, not shifted,
    and kinfo = (Σ00, Σ11, Σ01/√(Σ00Σ11)) as the SR training kernels."""
    out = []
    for a, b, turns in VIRNET_SR_TEST_KERNELS:
        cov = _rotated_cov((a * scale) ** 2, (b * scale) ** 2, turns * math.pi)
        kinfo = np.array([cov[0, 0], cov[1, 1], cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])])
        out.append((gaussian_from_cov(size, cov), kinfo))
    return out


# ---------------------------------------------------------------------------------------------
# 8-way augmentation (KAIR `augment_img` numbering) for numpy arrays and torch tensors
# ---------------------------------------------------------------------------------------------


# mode -> (transpose, flip rows, flip columns) after the transpose; equals KAIR's rot90/flipud chains
_DIHEDRAL = [(False, False, False), (True, False, False), (False, True, False), (True, False, True),
             (False, False, True), (True, True, False), (False, True, True), (True, True, True)]


def dihedral(a, mode: int, copy: bool = True):
    """Flip/rotation `mode` (0..7, KAIR `augment_img` numbering) of the last two axes of a numpy array
    or tensor. Tensors come back as at most one copy (a transposed/flipped layout, not contiguous);
    numpy arrays as a contiguous array, or as a strided view with `copy=False`."""
    mode = int(mode)
    if not 0 <= mode < 8:
        raise ValueError(f"augmentation mode must be 0..7, got {mode}")
    transpose, flip_rows, flip_cols = _DIHEDRAL[mode]
    dims = [d for d, f in ((-2, flip_rows), (-1, flip_cols)) if f]
    if isinstance(a, np.ndarray):
        out = np.swapaxes(a, -2, -1) if transpose else a
        out = np.flip(out, axis=tuple(dims)) if dims else out
        return np.ascontiguousarray(out) if copy else out
    out = a.transpose(-2, -1) if transpose else a
    return out.flip(dims) if dims else out


def augment_kernel(k, mode: int):
    return dihedral(k, mode)


# ---------------------------------------------------------------------------------------------
# Samplers: callables rng -> kernel; `sample(rng)` also returns extras (e.g. VIRNet's kinfo)
# ---------------------------------------------------------------------------------------------


class Sampler:
    """The kernel-sampler contract (extension point 'kernels', `register_kernel_sampler`): `sample(rng)`
    returns (h×w float kernel summing to 1, extras dict: e.g. {"kinfo": ...} for VIRNet's SR), drawing only
    from `rng` (a numpy Generator); every kernel of one sampler has one size, so samples batch together."""

    def sample(self, rng: np.random.Generator):
        raise NotImplementedError

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return self.sample(rng)[0]


class KernelSampler(Sampler):
    """NRL-GDN training kernels: motion with probability `motion_prob` (published 13/20), otherwise a
    random anisotropic Gaussian with a random 8-way flip/rotation."""

    def __init__(self, motion_prob: float = 13 / 20, size: int = 25, var_range=(0.6, 12.0),
                 gaussian_shifts: Sequence[float] = (0.0, 0.5, 1.0, 1.5), augment_gaussian: bool = True):
        if not 0.0 <= motion_prob <= 1.0:
            raise ValueError(f"motion_prob must be in [0, 1], got {motion_prob}")
        self.motion_prob, self.size = float(motion_prob), int(size)
        self.var_range, self.gaussian_shifts = tuple(var_range), tuple(gaussian_shifts)
        self.augment_gaussian = augment_gaussian

    def sample(self, rng: np.random.Generator):
        if rng.random() < self.motion_prob:
            return motion_kernel(rng, self.size), {}
        k = gaussian_kernel(rng, self.size, self.var_range, self.gaussian_shifts)
        if self.augment_gaussian:
            k = dihedral(k, int(rng.integers(8)))
        return k, {}

    def __repr__(self):
        return f"KernelSampler(motion_prob={self.motion_prob:.3g}, size={self.size})"


class SRKernelSampler(Sampler):
    """VIRNet SR kernels; `sample` returns (kernel, {"kinfo": (var_x, var_y, rho)})."""

    def __init__(self, scale: float, size: int = 21):
        self.scale, self.size = float(scale), int(size)

    def sample(self, rng):
        k, kinfo = sr_gaussian_kernel(rng, self.scale, self.size)
        return k, {"kinfo": kinfo}

    def __repr__(self):
        return f"SRKernelSampler(scale={self.scale:g}, size={self.size})"


class SetKernelSampler(Sampler):
    """Uniform choice from a fixed list of kernels (e.g. a kernel file), optionally augmented."""

    def __init__(self, kernels: Sequence[np.ndarray], augment: bool = False):
        if len(kernels) == 0:
            raise ValueError("SetKernelSampler needs at least one kernel")
        self.kernels = [validate_kernel(k, f"kernel {i}") for i, k in enumerate(kernels)]
        self.augment = augment

    def sample(self, rng):
        k = self.kernels[int(rng.integers(len(self.kernels)))]
        return (dihedral(k, int(rng.integers(8))) if self.augment else k.copy()), {}

    def __repr__(self):
        return f"SetKernelSampler({len(self.kernels)} kernels, augment={self.augment})"


class FixedKernelSampler(Sampler):
    """Always the same kernel, without a draw from the generator (e.g. VIRNet's SR validation kernel)."""

    def __init__(self, kernel: np.ndarray):
        self.kernel = validate_kernel(kernel, "fixed kernel")

    def sample(self, rng):
        return self.kernel.copy(), {}

    def __repr__(self):
        return f"FixedKernelSampler({self.kernel.shape[0]}×{self.kernel.shape[1]})"


def _motion(size: int = 25) -> KernelSampler:
    return KernelSampler(motion_prob=1.0, size=size)


def _gaussian(size: int = 25, var_range=(0.6, 12.0), gaussian_shifts=(0.0, 0.5, 1.0, 1.5),
              augment_gaussian: bool = True) -> KernelSampler:
    return KernelSampler(motion_prob=0.0, size=size, var_range=var_range, gaussian_shifts=gaussian_shifts,
                         augment_gaussian=augment_gaussian)


def _isotropic(size: int, std: float) -> FixedKernelSampler:
    """One fixed kernel; draws nothing."""
    return FixedKernelSampler(isotropic_gaussian(int(size), float(std)))


def _file(path: str, indices=None, augment: bool = False) -> SetKernelSampler:
    kernels = load_kernels(path)
    if indices is not None:
        kernels = [kernels[i] for i in indices]
    return SetKernelSampler(kernels, augment=bool(augment))


KERNEL_SAMPLERS = Registry("kernel sampler type", {
    "random": KernelSampler,
    "motion": _motion,
    "gaussian": _gaussian,
    "sr_gaussian": SRKernelSampler,
    "isotropic_gaussian": _isotropic,
    "file": _file,
}, discover=discover_extensions)


def register_kernel_sampler(name: str, factory) -> None:
    """Add a kernel sampler type: `factory(**spec keys)` returns a `Sampler`; its keyword arguments are the
    keys a spec {"type": name, ...} may hold (checked at load). One file under data/ that calls this is found
    by itself (docs/extending.md)."""
    KERNEL_SAMPLERS.register(name, factory)


def build_kernel_sampler(spec) -> Sampler:
    """Sampler from a config section: {"type": <a registered type, default "random">, ...}; a plain string
    is a kernel file path (type "file")."""
    if isinstance(spec, str):
        spec = {"type": "file", "path": spec}
    return KERNEL_SAMPLERS.build_spec(spec, "kernels", Sampler, default_type="random")


# ---------------------------------------------------------------------------------------------
# Kernel files as they exist in the wild
# ---------------------------------------------------------------------------------------------

KERNEL_IMAGE_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".pgm")


def validate_kernel(k, where: str) -> np.ndarray:
    """Check a kernel and return it as float64 h×w normalised to sum 1; errors name `where`; negative
    entries are accepted with one warning per process."""
    try:
        a = np.asarray(k, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: kernel is not a numeric array ({err})") from None
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a.reshape(a.shape[1:]) if a.shape[0] == 1 else a[..., 0]
    if a.ndim != 2 or a.size == 0:
        raise DataError(f"{where}: kernel must be a non-empty 2-D array (h×w), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{where}: kernel has non-finite values (NaN or inf)")
    total = a.sum()
    if total <= 0:
        raise DataError(f"{where}: kernel sums to {total:.4g}; expected a positive sum")
    warn_negative_kernel(a, where)
    return a / total


def _read_kernel_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im, dtype=np.float64) / 65535.0
            if im.mode != "L":
                im = im.convert("L")
            return np.asarray(im, dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: cannot read kernel image ({err})") from None


def _read_mat(path: Path):
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported; "
                         f"save with '-v7' or as .npy") from None
    except Exception as err:  # scipy raises several types for corrupt files
        raise DataError(f"{path}: cannot read .mat file ({err})") from None
    keys = [key for key in data if not key.startswith("__")]
    if "kernels" in data:
        key = "kernels"
    elif len(keys) == 1:
        key = keys[0]
    else:
        raise KeyError(f"{path}: no 'kernels' variable; found {keys}")
    value = data[key]
    if value.dtype == object:  # cell array: MATLAB linear (column-major) order
        return list(value.ravel(order="F"))
    if value.ndim == 3:  # h×w×N stack
        return [value[:, :, i] for i in range(value.shape[2])]
    if value.ndim == 2:
        return [value]
    raise DataError(f"{path}: variable '{key}' has shape {value.shape}; expected a cell array, h×w or h×w×N")


def load_kernels(path, names: bool = False):
    """Kernels from a .mat (cell array under 'kernels', or h×w×N), .npy (h×w or N×h×w), a kernel image
    (pixel/255) or a folder of kernel images (sorted by name). Returns float64 kernels summing to 1,
    and their names when `names=True`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"kernel file or folder not found: {path}")
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in KERNEL_IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{path}: no kernel images ({', '.join(KERNEL_IMAGE_EXTENSIONS)}) in folder")
        raw, labels = [_read_kernel_image(f) for f in files], [f.stem for f in files]
        wheres = [str(f) for f in files]
    else:
        suffix = path.suffix.lower()
        if suffix == ".mat":
            raw = _read_mat(path)
        elif suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except Exception as err:
                raise DataError(f"{path}: cannot read .npy file ({err})") from None
            if arr.ndim not in (2, 3):
                raise DataError(f"{path}: array has shape {arr.shape}; expected h×w or N×h×w")
            raw = [arr] if arr.ndim == 2 else list(arr)
        elif suffix in KERNEL_IMAGE_EXTENSIONS:
            raw = [_read_kernel_image(path)]
        else:
            raise DataError(f"{path}: unknown kernel file type '{suffix}'; "
                             f"expected .mat, .npy, a kernel image or a folder of them")
        labels = [f"{path.stem}_{i}" for i in range(len(raw))]
        wheres = [f"{path} [kernel {i}]" for i in range(len(raw))]
    kernels = [validate_kernel(k, where) for k, where in zip(raw, wheres)]
    return (kernels, labels) if names else kernels
