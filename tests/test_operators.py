"""Blur operators vs scipy.ndimage / numpy float64 re-derivations."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from utils import operators as ops

KERNEL_SHAPES = [(3, 3), (5, 5), (4, 4), (2, 6), (7, 4), (1, 5), (9, 9)]


def _data(shape=(2, 3, 17, 20), kshape=(5, 5), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    k = rng.random((shape[0], 1) + tuple(kshape)) + 0.05
    return torch.from_numpy(x), torch.from_numpy(k / k.sum(axis=(-2, -1), keepdims=True))


@pytest.mark.parametrize("kshape", KERNEL_SHAPES)
def test_conv_matches_ndimage_convolve(kshape):
    x, k = _data(kshape=kshape)
    out = ops.conv_direct(x, k)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            ref = ndimage.convolve(x[n, c].numpy(), k[n, 0].numpy(), mode="constant", cval=0.0)
            np.testing.assert_allclose(out[n, c].numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("kshape", KERNEL_SHAPES)
@pytest.mark.parametrize("path", ["direct", "fft", "zeros", "circular"])
def test_adjointness(kshape, path):
    x, k = _data(kshape=kshape, seed=1)
    y = torch.from_numpy(np.random.default_rng(2).standard_normal(x.shape))
    if path == "direct":
        ax, aty = ops.conv_direct(x, k), ops.conv_adjoint_direct(y, k)
    elif path == "fft":
        ax, aty = ops.conv_fft(x, k), ops.conv_fft(y, k, adjoint=True)
    else:       # the (A, Aᵀ) pairs the models use
        blur, adjoint = ops.blur_pair(path)
        ax, aty = blur(x, k), adjoint(y, k)
    lhs, rhs = (ax * y).sum().item(), (x * aty).sum().item()
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("kshape", KERNEL_SHAPES + [(17, 20), (16, 13)])
def test_fft_path_equals_direct_path(kshape):
    x, k = _data(kshape=kshape, seed=3)
    torch.testing.assert_close(ops.conv_fft(x, k), ops.conv_direct(x, k), atol=1e-12, rtol=0)
    torch.testing.assert_close(ops.conv_fft(x, k, adjoint=True), ops.conv_adjoint_direct(x, k), atol=1e-12, rtol=0)
    xf, kf = x.float(), k.float()
    torch.testing.assert_close(ops.conv_fft(xf, kf), ops.conv_direct(xf, kf), atol=2e-6, rtol=0)


def test_auto_dispatch_uses_both_paths_consistently():
    assert not ops.fft_is_faster(64, 64, 3, 3) and not ops.fft_is_faster(512, 512, 5, 5, planes=12)
    assert ops.fft_is_faster(512, 512, 61, 61) and ops.fft_is_faster(256, 256, 25, 25, planes=12)
    x, k = _data(shape=(1, 3, 64, 64), kshape=(41, 41), seed=4)
    torch.testing.assert_close(ops.conv(x, k), ops.conv_direct(x, k), atol=1e-12, rtol=0)
    torch.testing.assert_close(ops.conv_adjoint(x, k), ops.conv_adjoint_direct(x, k), atol=1e-12, rtol=0)


def test_fast_fft_size_is_seven_smooth_and_minimal():
    def smooth(n):
        for p in (2, 3, 5, 7):
            while n % p == 0:
                n //= p
        return n == 1
    for n in [1, 11, 131, 262, 263, 1000, 1031]:
        m = ops.fast_fft_size(n)
        assert m >= n and smooth(m) and not any(smooth(j) for j in range(n, m))


@pytest.mark.parametrize("kshape", [(5, 5), (4, 6), (7, 3)])
def test_circular_equals_ndimage_wrap(kshape):
    x, k = _data(kshape=kshape, seed=5)
    out = ops.conv_circular(x, k)
    for n in range(x.shape[0]):
        ref = ndimage.convolve(x[n, 1].numpy(), k[n, 0].numpy(), mode="wrap")
        np.testing.assert_allclose(out[n, 1].numpy(), ref, atol=1e-12)


def test_psf2otf_of_centred_delta_is_one():
    k = torch.zeros(1, 1, 5, 4, dtype=torch.float64)
    k[..., 2, 2] = 1
    np.testing.assert_allclose(ops.psf2otf(k, (12, 10)).numpy(), 1.0, atol=1e-14)
    np.testing.assert_allclose(ops.psf2otf(k, (12, 10), onesided=True).numpy(), 1.0, atol=1e-14)


# ---------------------------------------------------------------- Eq. (22), independent numpy float64
def _np_edgetaper(img, k, n_tapers):
    h, w = img.shape
    weights = []
    for profile, n in ((k.sum(axis=1), h), (k.sum(axis=0), w)):
        z = np.real(np.fft.ifft(np.abs(np.fft.fft(profile, n - 1)) ** 2))
        z = np.append(z, z[0])
        weights.append(1 - z / z.max())
    alpha = np.outer(*weights)
    for _ in range(n_tapers):
        img = alpha * img + (1 - alpha) * ndimage.convolve(img, k, mode="wrap")
    return img


def _np_eq22(y, k, reg=0.002, n_tapers=3):
    kh, kw = k.shape
    pads = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
    yp = _np_edgetaper(np.pad(y, pads, mode="edge"), k, n_tapers)
    shape = yp.shape

    def otf(f):
        grid = np.zeros(shape)
        grid[:f.shape[0], :f.shape[1]] = f
        return np.fft.fft2(np.roll(grid, (-(f.shape[0] // 2), -(f.shape[1] // 2)), axis=(0, 1)))

    K, gx, gy = otf(k), otf(np.array([[-1.0, 1.0]])), otf(np.array([[-1.0], [1.0]]))
    x = np.real(np.fft.ifft2(np.conj(K) * np.fft.fft2(yp) / (np.abs(K) ** 2 + reg * (abs(gx) ** 2 + abs(gy) ** 2))))
    return x[pads[0][0]:pads[0][0] + y.shape[0], pads[1][0]:pads[1][0] + y.shape[1]]


@pytest.mark.parametrize("kshape", [(5, 5), (9, 9), (4, 4), (3, 7), (6, 5), (1, 1)])
def test_eq22_matches_numpy_float64(kshape):
    x, k = _data(shape=(2, 3, 19, 24), kshape=kshape, seed=6)
    out = ops.eq22_init(x, k)
    assert out.shape == x.shape
    for n in range(2):
        for c in range(3):
            ref = _np_eq22(x[n, c].numpy(), k[n, 0].numpy())
            np.testing.assert_allclose(out[n, c].numpy(), ref, atol=1e-10)


def test_eq22_float32_close_to_float64_and_kernel_as_big_as_image():
    x, k = _data(shape=(1, 3, 16, 12), kshape=(16, 12), seed=7)
    torch.testing.assert_close(ops.eq22_init(x.float(), k.float()).double(), ops.eq22_init(x, k), atol=1e-4, rtol=0)


def test_edgetaper_keeps_constant_image_and_tapers_borders():
    img = torch.full((1, 1, 20, 20), 0.7, dtype=torch.float64)
    k = _data(shape=(1, 1, 20, 20), kshape=(5, 5))[1]
    torch.testing.assert_close(ops.edgetaper(img, k), img)
    alpha = ops.edgetaper_alpha(k, (20, 20))
    assert alpha[0, 0, 10, 10] > 0.99 and alpha[0, 0, 0, 0] < 1e-12


# ---------------------------------------------------------------- input validation
@pytest.mark.parametrize("make, message", [
    (lambda y: (y, torch.ones(1, 1, 20, 3) / 60), "larger than the 16×16 image"),
    (lambda y: (y, torch.full((5, 5), float("nan"))), "NaN or Inf"),
    (lambda y: (y, -torch.ones(5, 5)), "positive sum"),
    (lambda y: (y, torch.zeros(5, 5)), "positive sum"),
    (lambda y: (y[0], torch.ones(5, 5) / 25), "N×C×H×W"),
    (lambda y: (y, torch.ones(1, 1, 1, 5, 5)), "h×w, N×h×w or N×1×h×w"),
    (lambda y: (y, torch.ones(3, 1, 5, 5) / 25), "3 kernels for a batch of 2"),
])
def test_check_blur_inputs_errors(make, message):
    y = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=message) as info:
        ops.check_blur_inputs(*make(y))
    assert "\n" not in str(info.value)


def test_check_blur_inputs_accepts_kernel_ranks_and_converts_dtype():
    y = torch.rand(2, 3, 16, 16)
    k64 = torch.ones(5, 5, dtype=torch.float64) / 25
    for k in (k64, k64[None], k64[None, None], k64.expand(2, 1, 5, 5)):
        out = ops.check_blur_inputs(y, k)
        assert out.shape == (2, 1, 5, 5) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="must be an N×C×H×W tensor"):
        ops.eq22_init(torch.rand(16, 16), k64)


def test_circular_eq22_inverts_a_circular_blur_where_the_padded_one_cannot():
    """boundary='circular' solves on the periodic grid, so a noise-free circular blur is undone to the
    edges; the published replicate-pad + edgetaper solve leaves errors along the borders."""
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.random((1, 3, 40, 40)))
    k = np.zeros((7, 7))
    k[3, 3] = 0.6
    k += 0.4 * rng.random((7, 7)) / 49       # well conditioned: |K| >= 0.2 everywhere
    k = torch.from_numpy(k / k.sum())
    y = ops.conv_circular(x, k)
    circular = ops.eq22_init(y, k, reg=1e-9, boundary="circular")
    padded = ops.eq22_init(y, k, reg=1e-9)
    assert (circular - x).abs().max() < 1e-5
    assert (padded - x).abs().max() > 1e-2
    with pytest.raises(ValueError, match="boundary must be one of"):
        ops.eq22_init(y, k, boundary="mirror")
