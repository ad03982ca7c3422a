"""Kernel generators, augmentation, samplers and kernel-file loaders (data/kernels.py)."""
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image

import data.kernels as K
from data.default_data import KERNEL_FILE, default_kernels, generate_default_kernels

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
KERNEL_DIR = SHARED / "data" / "kernels"
needs_shared = pytest.mark.skipif(not KERNEL_DIR.is_dir(), reason="../shared/data/kernels not available")


# ---------------------------------------------------------------- motion kernels

def _loop_trajectory(v0, noise):
    """The published random walk, one point at a time (independent re-derivation)."""
    n = noise.shape[0] + 1
    x, v, r = np.zeros((3, n)), np.zeros((3, n)), np.zeros((3, n))
    v[:, 0] = v0
    step = 2 * math.pi / n
    for t in range(1, n):
        r[:, t] = r[:, t - 1] + step * (noise[t - 1, 0] / (t + 1) + r[:, t - 1])
        v[:, t] = v[:, t - 1] + noise[t - 1, 1] / (t + 1)
        a, b, c = r[:, t]
        rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        x[:, t] = x[:, t - 1] + rz @ ry @ rx @ v[:, t]
    return x.T


def test_vectorised_trajectory_equals_published_recursion():
    rng = np.random.default_rng(3)
    for n in (250, 40):
        v0, noise = rng.standard_normal(3), rng.standard_normal((n - 1, 2, 3))
        ours = K.trajectory_from_noise(v0, noise)
        ref = _loop_trajectory(v0, noise)
        assert np.abs(ours - ref).max() <= 1e-9 * max(1.0, np.abs(ref).max())


def test_binning_equals_published_double_loop():
    rng = np.random.default_rng(4)
    for size in (5, 13, 27):
        rows, cols = rng.standard_normal(250).cumsum(), rng.standard_normal(250).cumsum()
        ref = np.zeros((size, size))
        er = np.arange(rows.min(), rows.max(), (rows.max() - rows.min()) / size)
        ec = np.arange(cols.min(), cols.max(), (cols.max() - cols.min()) / size)
        for i in range(1, er.size):
            for j in range(1, ec.size):
                ref[i - 1, j - 1] = np.sum((rows >= er[i - 1]) & (rows < er[i]) & (cols >= ec[j - 1]) & (cols < ec[j]))
        assert np.array_equal(K.bin_trajectory(rows, cols, size), ref)


def test_zoom_is_bilinear_upscale_then_centre_crop():
    k = np.random.default_rng(0).random((25, 25))
    up = F.interpolate(torch.from_numpy(k)[None, None], size=(61, 103), mode="bilinear", align_corners=False)[0, 0]
    ref = up[18:43, 39:64].numpy()
    assert np.allclose(K._zoom_centre_crop(k, 61, 103), ref, atol=1e-12)


def test_motion_kernels_are_valid_and_seeded():
    rng = np.random.default_rng(0)
    ks = [K.motion_kernel(rng, 25) for _ in range(40)]
    for k in ks:
        assert k.shape == (25, 25) and np.isfinite(k).all() and (k >= 0).all()
        assert abs(k.sum() - 1) < 1e-12
    # a typical motion blur has a sparse support; the mean count of non-negligible taps is well below 625
    assert 20 < np.mean([(k > 1e-3).sum() for k in ks]) < 300
    a = K.motion_kernel(np.random.default_rng(11), 19)
    b = K.motion_kernel(np.random.default_rng(11), 19)
    assert a.shape == (19, 19) and a.tobytes() == b.tobytes()
    assert not np.array_equal(a, K.motion_kernel(np.random.default_rng(12), 19))


# ---------------------------------------------------------------- Gaussian kernels

def _moments(k):
    rows, cols = np.mgrid[0:k.shape[0], 0:k.shape[1]]
    mc, mr = (k * cols).sum(), (k * rows).sum()
    cov = np.array([[(k * (cols - mc) ** 2).sum(), (k * (cols - mc) * (rows - mr)).sum()],
                    [(k * (cols - mc) * (rows - mr)).sum(), (k * (rows - mr) ** 2).sum()]])
    return mc, mr, cov


@pytest.mark.parametrize("var1,var2,theta", [(4.0, 1.0, 0.0), (6.0, 0.8, 0.7), (2.0, 2.0, 2.0)])
def test_anisotropic_gaussian_has_requested_covariance(var1, var2, theta):
    k = K.anisotropic_gaussian(31, var1, var2, theta)
    q = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    mc, mr, cov = _moments(k)
    # sampled Gaussians have moments equal to the continuous ones up to ~1e-6 for σ >~ 0.9
    assert abs(k.sum() - 1) < 1e-12 and abs(mc - 15) < 1e-9 and abs(mr - 15) < 1e-9
    assert np.allclose(cov, q @ np.diag([var1, var2]) @ q.T, atol=1e-4)


def test_gaussian_kernel_draws_variances_in_range_and_shifts_centre():
    rng = np.random.default_rng(1)
    for _ in range(20):
        k = K.gaussian_kernel(rng, 41, var_range=(0.9, 6.0))
        _, _, cov = _moments(k)
        eig = np.linalg.eigvalsh(cov)
        assert 0.9 - 1e-3 <= eig[0] and eig[1] <= 6.0 + 1e-3
    k = K.gaussian_kernel(np.random.default_rng(2), 25, shifts=(1.5,))
    mc, mr, _ = _moments(k)
    assert abs(mc - 10.5) < 1e-3 and abs(mr - 10.5) < 1e-3


def test_sr_gaussian_kinfo_matches_kernel_moments():
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(30):
        k, kinfo = K.sr_gaussian_kernel(rng, scale=2, size=21)
        assert abs(k.sum() - 1) < 1e-12 and -1 <= kinfo[2] <= 1 and (kinfo[:2] <= 4 + 1e-9).all()
        off = kinfo[2] * math.sqrt(kinfo[0] * kinfo[1])
        if np.linalg.eigvalsh([[kinfo[0], off], [off, kinfo[1]]])[0] < 0.8:
            continue  # a sampled Gaussian narrower than ~1 px has moments below the continuous ones
        _, _, cov = _moments(k)
        assert np.allclose([cov[0, 0], cov[1, 1], cov[0, 1]], [kinfo[0], kinfo[1], off], atol=1e-4)
        checked += 1
    assert checked >= 3


def test_virnet_sr_test_kernels_are_the_published_seven():
    """Re-derived as scripts/sisr_virnet_syn.py builds them: Σ = U diag(λ1, λ2) Uᵀ, 'xy' meshgrid, softmax."""
    scale = 3
    kernels = K.virnet_sr_test_kernels(scale)
    assert len(kernels) == 7
    published = [((0.4 * scale) ** 2, (0.4 * scale) ** 2, 0), ((0.6 * scale) ** 2, (0.6 * scale) ** 2, 0),
                 ((0.8 * scale) ** 2, (0.8 * scale) ** 2, 0), ((0.4 * scale) ** 2, (0.2 * scale) ** 2, 0),
                 ((0.6 * scale) ** 2, (0.3 * scale) ** 2, 0.75 * np.pi),
                 ((0.8 * scale) ** 2, (0.4 * scale) ** 2, 0.25 * np.pi),
                 ((0.8 * scale) ** 2, (0.4 * scale) ** 2, 0.50 * np.pi)]
    xs, ys = np.meshgrid(range(21), range(21))
    for (k, kinfo), (l1, l2, theta) in zip(kernels, published):
        u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        sigma = u @ np.diag([l1, l2]) @ u.T
        d = np.stack([xs - 10, ys - 10], -1).reshape(-1, 2)
        logits = -0.5 * np.einsum("pi,ij,pj->p", d, np.linalg.inv(sigma), d)
        expected = np.exp(logits - logits.max())
        np.testing.assert_allclose(k, (expected / expected.sum()).reshape(21, 21), atol=1e-12)
        np.testing.assert_allclose(kinfo, [sigma[0, 0], sigma[1, 1], sigma[0, 1] / np.sqrt(sigma[0, 0] * sigma[1, 1])],
                                   atol=1e-12)
    np.testing.assert_allclose(kernels[6][1], [(0.4 * scale) ** 2, (0.8 * scale) ** 2, 0], atol=1e-12)  # θ = π/2 swaps


# ---------------------------------------------------------------- augmentation and samplers

def test_dihedral_modes_follow_kair_numbering_for_numpy_and_torch():
    a = np.arange(12.0).reshape(3, 4)
    kair = [a, np.flipud(np.rot90(a)), np.flipud(a), np.rot90(a, 3), np.flipud(np.rot90(a, 2)),
            np.rot90(a), np.rot90(a, 2), np.flipud(np.rot90(a, 3))]
    t = torch.from_numpy(np.stack([a, a + 100]))  # 2×3×4: augment the last two axes
    for mode, ref in enumerate(kair):
        assert np.array_equal(K.augment_kernel(a, mode), ref)
        out = K.dihedral(t, mode)
        assert np.array_equal(out[0].numpy(), ref) and np.array_equal(out[1].numpy(), ref + 100)
    assert len({K.dihedral(a, m).tobytes() for m in range(8)}) == 8
    with pytest.raises(ValueError, match="0..7"):
        K.dihedral(a, 8)


def test_sampler_motion_fraction(monkeypatch):
    calls = []
    real = K.motion_kernel
    monkeypatch.setattr(K, "motion_kernel", lambda rng, size: calls.append(1) or real(rng, size))
    sampler = K.KernelSampler()  # published: motion with probability 13/20
    rng = np.random.default_rng(0)
    ks = [sampler(rng) for _ in range(400)]
    assert abs(len(calls) / 400 - 13 / 20) < 0.07  # > 2.9 binomial standard deviations
    assert all(k.shape == (25, 25) and abs(k.sum() - 1) < 1e-12 for k in ks)


def test_build_kernel_sampler_specs_and_errors(tmp_path):
    assert K.build_kernel_sampler({"type": "gaussian", "size": 15})(np.random.default_rng(0)).shape == (15, 15)
    k, info = K.build_kernel_sampler({"type": "sr_gaussian", "scale": 3}).sample(np.random.default_rng(0))
    assert k.shape == (21, 21) and info["kinfo"].shape == (3,)
    np.save(tmp_path / "two.npy", np.stack([np.eye(3), np.ones((3, 3))]))
    s = K.build_kernel_sampler(str(tmp_path / "two.npy"))
    drawn = {s(np.random.default_rng(i)).tobytes() for i in range(20)}
    assert drawn == {(np.eye(3) / 3).tobytes(), (np.ones((3, 3)) / 9).tobytes()}
    with pytest.raises(KeyError, match=r"kernels.type.*'spline'.*motion"):
        K.build_kernel_sampler({"type": "spline"})
    with pytest.raises(KeyError, match=r"'sigma'.*'motion'"):
        K.build_kernel_sampler({"type": "motion", "sigma": 3})


# ---------------------------------------------------------------- loaders

def test_load_formats(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 5)), rng.random((7, 3))
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = a, b
    scipy.io.savemat(tmp_path / "cells.mat", {"kernels": cells})
    scipy.io.savemat(tmp_path / "stack.mat", {"kernels": np.stack([a, 2 * a, 3 * a], axis=2)})
    scipy.io.savemat(tmp_path / "other.mat", {"psf": b})
    np.save(tmp_path / "one.npy", a)
    np.save(tmp_path / "many.npy", np.stack([a, a.T]))
    folder = tmp_path / "pngs"
    folder.mkdir()
    u8 = (rng.random((2, 9, 9)) * 255).astype(np.uint8)
    Image.fromarray(u8[1]).save(folder / "b.png")
    Image.fromarray(u8[0]).save(folder / "a.png")
    (folder / "notes.txt").write_text("ignored")

    def same(got, refs):
        return len(got) == len(refs) and all(np.allclose(g, r / r.sum(), atol=1e-12) for g, r in zip(got, refs))

    assert same(K.load_kernels(tmp_path / "cells.mat"), [a, b])
    assert same(K.load_kernels(tmp_path / "stack.mat"), [a, a, a])
    assert same(K.load_kernels(tmp_path / "other.mat"), [b])
    assert same(K.load_kernels(tmp_path / "one.npy"), [a])
    assert same(K.load_kernels(tmp_path / "many.npy"), [a, a.T])
    ks, names = K.load_kernels(folder, names=True)
    assert names == ["a", "b"] and same(ks, [u8[0] / 255.0, u8[1] / 255.0])
    assert all(k.dtype == np.float64 for k in ks)


def _one_line_error(exc, pattern, fn, *args):
    with pytest.raises(exc, match=pattern) as info:
        fn(*args)
    assert "\n" not in str(info.value)


def test_load_errors_name_the_file(tmp_path):
    bad = np.ones((2, 3, 3))
    bad[1, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "neg.npy", -np.ones((3, 3)))
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    np.save(tmp_path / "rank4.npy", np.ones((1, 2, 3, 3)))
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.ones((3, 3)), "b": np.ones((3, 3))})
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    (tmp_path / "k.txt").write_text("1 2 3")
    empty = tmp_path / "empty"
    empty.mkdir()
    load = K.load_kernels
    _one_line_error(ValueError, r"nan\.npy \[kernel 1\]: kernel has non-finite", load, tmp_path / "nan.npy")
    _one_line_error(ValueError, r"neg\.npy \[kernel 0\]: kernel sums to -9", load, tmp_path / "neg.npy")
    _one_line_error(ValueError, r"zero\.npy.*sums to 0", load, tmp_path / "zero.npy")
    _one_line_error(ValueError, r"rank4\.npy: array has shape \(1, 2, 3, 3\)", load, tmp_path / "rank4.npy")
    _one_line_error(KeyError, r"two\.mat: no 'kernels' variable; found \['a', 'b'\]", load, tmp_path / "two.mat")
    _one_line_error(ValueError, r"junk\.mat: cannot read \.mat", load, tmp_path / "junk.mat")
    _one_line_error(FileNotFoundError, "missing.mat", load, tmp_path / "missing.mat")
    _one_line_error(ValueError, r"k\.txt: unknown kernel file type", load, tmp_path / "k.txt")
    _one_line_error(ValueError, "no kernel images", load, empty)
    (empty / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _one_line_error(ValueError, r"broken\.png: cannot read kernel image", load, empty)
    _one_line_error(ValueError, "somewhere: kernel must be a non-empty 2-D", K.validate_kernel, np.ones((2, 3, 3)), "somewhere")


@needs_shared
def test_shared_kernel_files():
    levin = K.load_kernels(KERNEL_DIR / "levin8.mat")
    assert [k.shape[0] for k in levin] == [19, 17, 15, 27, 13, 21, 23, 23]
    raw19 = scipy.io.loadmat(KERNEL_DIR / "kernels_19.mat")["kernels"].ravel()
    k19 = K.load_kernels(KERNEL_DIR / "kernels_19.mat")
    assert len(k19) == 19 and raw19[-1].sum() > 3  # the last 7 are stored unnormalised
    for got, raw in zip(k19, raw19):
        assert abs(got.sum() - 1) < 1e-12 and np.allclose(got, raw / raw.astype(np.float64).sum(), atol=1e-12)
    raw8 = scipy.io.loadmat(KERNEL_DIR / "sisr_kernels_8.mat")["kernels"]
    k8 = K.load_kernels(KERNEL_DIR / "sisr_kernels_8.mat")
    assert len(k8) == 8 and all(np.allclose(k8[i], raw8[:, :, i] / raw8[:, :, i].sum()) for i in range(8))
    folder = KERNEL_DIR / "real" / "set23"
    ks, names = K.load_kernels(folder, names=True)
    pngs = sorted(folder.glob("*.png"))
    assert names == [p.stem for p in pngs]
    first = np.asarray(Image.open(pngs[0]).convert("L"), dtype=np.float64) / 255
    assert np.allclose(ks[0], first / first.sum(), atol=1e-12)


def test_default_kernels_file_is_reproducible():
    ks = default_kernels()
    assert KERNEL_FILE.is_file() and KERNEL_FILE.stat().st_size < 64_000
    assert len(ks) == 6 and all(k.shape == (25, 25) and abs(k.sum() - 1) < 1e-9 for k in ks)
    assert np.allclose(np.stack(ks), generate_default_kernels(), atol=1e-7)


def test_trajectory_smoothing_is_the_published_3x3_gaussian():
    from scipy.signal import convolve2d

    k = np.random.default_rng(8).random((7, 9))
    x, y = np.mgrid[-1:2, -1:2]
    g = np.exp(-(x ** 2 + y ** 2) / 2.0)
    assert np.allclose(K._smooth3(k), convolve2d(k, g / g.sum(), "same"), atol=1e-14)
