"""utils.imresize against an independent float64 re-derivation of MATLAB's imresize, known MATLAB
bicubic coefficients, Pillow's bicubic (same kernel, different border rule) and exact properties."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from utils.imresize import imresize


def _keys_cubic(t):
    t = abs(t)
    if t <= 1:
        return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
    if t <= 2:
        return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2
    return 0.0


def _triangle(t):
    return max(0.0, 1 - abs(t))


def _reference_1d(signal, scale, kernel=_keys_cubic, support=2.0, antialiasing=True):
    """MATLAB imresize along one axis, pixel by pixel in plain Python (1-based coordinates as in MATLAB)."""
    n = len(signal)
    out_len = math.ceil(round(scale * n, 9))
    stretch = scale if (scale < 1 and antialiasing) else 1.0
    out = []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)          # input position of output pixel i
        half = support / stretch
        taps = range(math.floor(u - half), math.floor(u - half) + math.ceil(2 * half) + 2)
        weights = [stretch * kernel(stretch * (u - j)) for j in taps]
        total = sum(weights)
        value = 0.0
        for j, wgt in zip(taps, weights):
            k = (j - 1) % (2 * n)                       # mirror: 1..n, n..1, 1..n, ...
            k = k if k < n else 2 * n - 1 - k
            value += wgt / total * signal[k]
        out.append(value)
    return np.array(out)


def _reference_2d(img, scale, **kw):
    rows = np.stack([_reference_1d(r, scale, **kw) for r in img.T]).T          # along H
    return np.stack([_reference_1d(r, scale, **kw) for r in rows])              # along W


@pytest.mark.parametrize("shape, scale", [((12, 16), 1 / 2), ((12, 15), 1 / 3), ((16, 12), 1 / 4),
                                          ((7, 9), 2.0), ((10, 11), 0.75), ((9, 8), 1 / 3)])
def test_matches_independent_matlab_rederivation(shape, scale):
    img = np.random.default_rng(0).random(shape)
    expected = _reference_2d(img, scale)
    out = imresize(torch.from_numpy(img)[None, None], scale)[0, 0].numpy()
    assert out.shape == expected.shape == (math.ceil(round(shape[0] * scale, 9)), math.ceil(round(shape[1] * scale, 9)))
    np.testing.assert_allclose(out, expected, atol=1e-12)
    out32 = imresize(torch.from_numpy(img).float(), scale).numpy()           # H×W, float32
    np.testing.assert_allclose(out32, expected, atol=2e-6)


def test_bilinear_and_no_antialiasing_match_rederivation():
    img = np.random.default_rng(1).random((10, 12))
    out = imresize(torch.from_numpy(img), 0.5, kernel="bilinear").numpy()
    np.testing.assert_allclose(out, _reference_2d(img, 0.5, kernel=_triangle, support=1.0), atol=1e-12)
    out = imresize(torch.from_numpy(img), 0.5, antialiasing=False).numpy()
    np.testing.assert_allclose(out, _reference_2d(img, 0.5, antialiasing=False), atol=1e-12)


def test_known_matlab_bicubic_coefficients():
    # Keys a=-0.5 at quarter offsets: cubic(1/4)=111/128, cubic(3/4)=29/128, cubic(5/4)=-9/128, cubic(7/4)=-3/128.
    # MATLAB ×2 up: interleaved [-3 -9 29 111 111 29 -9 -3]/128; ×2 down with antialiasing: the kernel
    # stretched ×2 and halved, i.e. taps [-3 -9 29 111 111 29 -9 -3]/256, one output every 2 inputs.
    delta = torch.zeros(1, 1, 1, 32, dtype=torch.float64)
    delta[..., 16] = 1.0
    up = imresize(delta, output_shape=(1, 64))[0, 0, 0]
    np.testing.assert_array_equal(up[29:37].numpy() * 128, [-3, -9, 29, 111, 111, 29, -9, -3])
    assert up[:29].abs().max() == 0 and up[37:].abs().max() == 0
    down = imresize(delta, output_shape=(1, 16))[0, 0, 0]
    # output o samples input position 2o + 0.5 (0-based): input 16 sits at offsets 3.5, 1.5, -0.5, -2.5
    np.testing.assert_array_equal(down[6:10].numpy() * 256, [-3, 29, 111, -9])
    assert down[:6].abs().max() == 0 and down[10:].abs().max() == 0


@pytest.mark.parametrize("kernel", ["cubic", "linear", "box", "lanczos2", "lanczos3"])
@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 0.5, 0.7, 2.0, 3.0])
def test_constant_image_stays_constant(kernel, scale):
    img = torch.full((2, 3, 13, 17), 0.37, dtype=torch.float64)
    out = imresize(img, scale, kernel=kernel)
    assert torch.allclose(out, torch.full_like(out, 0.37), atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2.0, 3.0])
def test_linear_ramp_stays_linear_away_from_borders(scale):
    n = 48
    ramp = 0.25 + 0.01 * torch.arange(n, dtype=torch.float64)            # value = 0.25 + 0.01·index
    img = ramp[None, :].repeat(5, 1)
    out = imresize(img, scale, output_shape=None)[0]
    centres = (np.arange(len(out)) + 0.5) / scale - 0.5                  # 0-based input positions
    reach = 2 / min(scale, 1) + 1                                         # taps never touch the mirror
    inside = (centres - reach >= 0) & (centres + reach <= n - 1)
    assert inside.sum() >= 6
    np.testing.assert_allclose(out.numpy()[inside], 0.25 + 0.01 * centres[inside], atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_symmetric_boundary_equals_resizing_a_mirror_padded_image(scale):
    img = np.random.default_rng(3).random((16, 16))
    pad = 16   # a multiple of 1/scale keeps the output grid aligned; wide enough for every tap
    padded = np.pad(img, pad, mode="symmetric")
    big = imresize(torch.from_numpy(padded), scale).numpy()
    p = int(pad * scale)
    np.testing.assert_allclose(imresize(torch.from_numpy(img), scale).numpy(), big[p:-p, p:-p], atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2.0])
def test_interior_agrees_with_pillow_bicubic(scale):
    img = np.random.default_rng(4).random((36, 48)).astype(np.float32)
    out = imresize(torch.from_numpy(img).double(), scale).numpy()
    pil = np.asarray(Image.fromarray(img).resize(out.shape[::-1], Image.BICUBIC))
    m = 3 if scale < 1 else 5          # Pillow renormalises at the border instead of mirroring
    np.testing.assert_allclose(out[m:-m, m:-m], pil[m:-m, m:-m], atol=2e-6)


def test_box_downscale_by_two_is_block_mean():
    img = torch.rand(1, 2, 8, 10, dtype=torch.float64)
    expected = img.reshape(1, 2, 4, 2, 5, 2).mean(dim=(3, 5))
    assert torch.allclose(imresize(img, 0.5, kernel="box"), expected, atol=1e-12)


def test_layouts_sizes_dtype_and_gradients():
    x = torch.rand(2, 3, 10, 14, dtype=torch.float64)
    out = imresize(x, 1 / 3)
    assert out.shape == (2, 3, 4, 5)                                      # ceil(10/3), ceil(14/3)
    assert torch.equal(imresize(x[1], 1 / 3), out[1])
    hwc = x[0].permute(1, 2, 0).numpy().astype(np.float32)
    out_np = imresize(hwc, 1 / 3)
    assert out_np.dtype == np.float32 and out_np.shape == (4, 5, 3)
    np.testing.assert_allclose(out_np, out[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert imresize(x, output_shape=(5, 21)).shape == (2, 3, 5, 21)
    assert imresize(x, (0.5, 2.0)).shape == (2, 3, 5, 28)
    assert imresize(x.float(), 0.5).dtype == torch.float32
    assert torch.equal(imresize(x, 1.0), x)
    small = torch.rand(1, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, 0.5), (small,))
    assert torch.autograd.gradcheck(lambda t: imresize(t, 2.0), (small,))


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of scale and output_shape"),
    (dict(scale=0.5, output_shape=(4, 4)), "exactly one of scale and output_shape"),
    (dict(scale=-2), "scale must be positive"),
    (dict(output_shape=(4, 2.5)), "output_shape must be two positive ints"),
    (dict(scale=0.5, kernel="gauss"), "unknown kernel 'gauss'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        imresize(torch.rand(1, 1, 8, 8), **kwargs)


def test_integer_tensor_rejected():
    with pytest.raises(ValueError, match="float tensor"):
        imresize(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 0.5)
