"""utils.metrics against scikit-image, MATLAB formulas and hand-computed values."""
import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils.metrics import evaluate_batch, evaluate_pair, psnr, rgb_to_luma, rgb_to_ycbcr_y, ssim


def _pair(c=3, h=24, w=30, noise=0.08, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.random((c, h, w))
    x = np.clip(gt + noise * rng.standard_normal(gt.shape), 0, 1)
    return torch.from_numpy(x), torch.from_numpy(gt)


def _sk_ssim_255(a, b, channel_axis=None):
    """KAIR/DPIR calculate_ssim as skimage computes it: per channel on 0–255, channel mean."""
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=channel_axis)


def test_psnr_matches_skimage_and_layouts_agree():
    x, gt = _pair()
    ref = peak_signal_noise_ratio(gt.numpy(), x.numpy(), data_range=1.0)
    assert psnr(x, gt) == pytest.approx(ref, abs=1e-10)
    # numpy is channel-last; the same image as H×W×C gives the same value, and 1×C×H×W too
    assert psnr(x.permute(1, 2, 0).numpy(), gt.permute(1, 2, 0).numpy()) == pytest.approx(ref, abs=1e-10)
    assert psnr(x[None].float(), gt[None].float()) == pytest.approx(ref, abs=1e-4)


def test_psnr_hand_computed_offsets():
    gt = torch.full((3, 16, 16), 0.4, dtype=torch.float64)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)         # MSE 0.01 -> 20 dB
    gt255 = np.full((16, 16), 100.0)
    assert psnr(gt255 + 5, gt255, data_range=255) == pytest.approx(20 * math.log10(51), abs=1e-9)
    assert psnr(gt, gt) == math.inf


def test_psnr_border_crops_every_side():
    gt = torch.zeros(1, 20, 20)
    x = gt.clone()
    x[:, :3] = x[:, -3:] = x[:, :, :3] = x[:, :, -3:] = 1.0   # errors only in a 3-pixel frame
    assert psnr(x, gt, border=3) == math.inf
    assert psnr(x, gt, border=2) < 10
    xn, gn = _pair(seed=1)
    ref = peak_signal_noise_ratio(gn[:, 4:-4, 4:-4].numpy(), xn[:, 4:-4, 4:-4].numpy(), data_range=1)
    assert psnr(xn, gn, border=4) == pytest.approx(ref, abs=1e-10)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("border", [0, 3])
def test_ssim_matches_skimage_gaussian_window(channels, border):
    x, gt = _pair(c=channels, h=32, w=27, noise=0.15, seed=channels)
    b = slice(border, -border or None)
    a, g = (x[:, b, b] * 255).numpy(), (gt[:, b, b] * 255).numpy()
    ref = np.mean([_sk_ssim_255(a[c], g[c]) for c in range(channels)])
    assert ssim(x, gt, border=border) == pytest.approx(ref, abs=1e-10)
    if channels == 3:   # skimage's own colour mode is the same channel mean
        ref_c = _sk_ssim_255(a.transpose(1, 2, 0), g.transpose(1, 2, 0), channel_axis=2)
        assert ssim(x, gt, border=border) == pytest.approx(ref_c, abs=1e-10)


def test_separable_ssim_equals_the_full_11x11_window_to_1e_12():
    """The two 1-D passes give the 2-D Gaussian-window SSIM (direct float64 re-derivation with
    scipy's 2-D correlation and the MATLAB formula) on a non-square image with large contrasts."""
    from scipy import ndimage

    x, gt = _pair(c=3, h=61, w=47, noise=0.3, seed=11)
    r = np.arange(11) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for c in range(3):
        a, b = x[c].numpy() * 255, gt[c].numpy() * 255
        f = lambda m: ndimage.correlate(m, window, mode="constant")[5:-5, 5:-5]
        mu_a, mu_b = f(a), f(b)
        var_a, var_b, cov = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
        values.append(np.mean((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                              / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))))
    assert abs(ssim(x, gt) - np.mean(values)) < 1e-12
    sk = np.mean([_sk_ssim_255(x[c].numpy() * 255, gt[c].numpy() * 255) for c in range(3)])
    assert abs(ssim(x, gt) - sk) < 1e-12


def test_ssim_hand_computed_constant_images():
    # flat images: variances and covariance vanish, SSIM = (2ab + C1)/(a² + b² + C1) on 0–255
    a, b = 100.0, 120.0
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(torch.full((1, 16, 16), a / 255, dtype=torch.float64), torch.full((1, 16, 16), b / 255, dtype=torch.float64)) == pytest.approx(expected, abs=1e-12)
    x, _ = _pair()
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x * 255, x * 255, data_range=255) == pytest.approx(1.0, abs=1e-12)


def test_colour_conversions_known_values_and_skimage():
    prim = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1, 1], [0, 0, 0]], dtype=torch.float64).T[:, None, :]  # 3×1×5
    assert rgb_to_luma(prim).flatten().tolist() == pytest.approx([0.299, 0.587, 0.114, 1.0, 0.0], abs=1e-12)
    y = rgb_to_ycbcr_y(prim).flatten() * 255
    assert y.tolist() == pytest.approx([16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0], abs=1e-9)
    img = np.random.default_rng(2).random((8, 9, 3))
    ours = rgb_to_ycbcr_y(img)
    assert ours.shape == (8, 9, 1)                      # numpy keeps a channel-last axis
    np.testing.assert_allclose(ours[..., 0] * 255, rgb2ycbcr(img)[..., 0], atol=1e-9)
    batch = torch.rand(2, 3, 5, 6)
    assert rgb_to_luma(batch).shape == (2, 1, 5, 6)
    with pytest.raises(ValueError, match="3×H×W"):
        rgb_to_luma(torch.rand(1, 5, 6))


def test_evaluate_pair_colour_modes_equal_direct_computation():
    x, gt = _pair(h=20, w=20)
    rgb = evaluate_pair(x, gt)
    assert rgb == {"psnr": pytest.approx(psnr(x, gt)), "ssim": pytest.approx(ssim(x, gt))}
    luma = evaluate_pair(x, gt, color="luma", border=2)
    lx = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).numpy()[2:-2, 2:-2]
    lg = (0.299 * gt[0] + 0.587 * gt[1] + 0.114 * gt[2]).numpy()[2:-2, 2:-2]
    assert luma["psnr"] == pytest.approx(peak_signal_noise_ratio(lg, lx, data_range=1), abs=1e-10)
    assert luma["ssim"] == pytest.approx(_sk_ssim_255(lx * 255, lg * 255), abs=1e-10)
    gray = evaluate_pair(x[:1], gt[:1], color="luma")    # a gray image is its own luma
    assert gray == evaluate_pair(x[:1], gt[:1])


def test_quantize_is_the_uint8_matlab_protocol():
    x, gt = _pair(h=24, w=24, seed=5)
    xu = np.round(np.clip(x.numpy(), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    gu = np.round(gt.numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    rgb = evaluate_pair(x, gt, quantize=True)
    assert rgb["psnr"] == pytest.approx(peak_signal_noise_ratio(gu, xu, data_range=255), abs=1e-10)
    ref_ssim = np.mean([_sk_ssim_255(xu[..., c].astype(float), gu[..., c].astype(float)) for c in range(3)])
    assert rgb["ssim"] == pytest.approx(ref_ssim, abs=1e-10)

    def matlab_y(u8):   # MATLAB rgb2ycbcr on uint8 returns rounded uint8 Y
        return np.round(16 + u8.astype(float) @ np.array([65.481, 128.553, 24.966]) / 255)

    yx, yg = matlab_y(xu)[4:-4, 4:-4], matlab_y(gu)[4:-4, 4:-4]
    sr = evaluate_pair(x, gt, color="ycbcr_y", border=4, quantize=True)
    assert sr["psnr"] == pytest.approx(peak_signal_noise_ratio(yg, yx, data_range=255), abs=1e-10)
    assert sr["ssim"] == pytest.approx(_sk_ssim_255(yx, yg), abs=1e-10)


def test_evaluate_pair_clamps_restored_image():
    gt = torch.full((1, 16, 16), 0.9, dtype=torch.float64)
    over = gt + 0.3                                       # 1.2 -> clamped to 1.0
    assert evaluate_pair(over, gt)["psnr"] == pytest.approx(20.0, abs=1e-9)
    assert evaluate_pair(over, gt, clamp=False)["psnr"] == pytest.approx(10 * math.log10(1 / 0.09), abs=1e-9)


def test_evaluate_batch_is_per_image():
    x, gt = _pair(c=3, h=16, w=16)
    x2, gt2 = _pair(c=3, h=16, w=16, seed=9)
    out = evaluate_batch(torch.stack([x, x2]), torch.stack([gt, gt2]), color="luma")
    assert out == [evaluate_pair(x, gt, color="luma"), evaluate_pair(x2, gt2, color="luma")]


@pytest.mark.parametrize("call, message", [
    (lambda: psnr(torch.rand(3, 16, 16), torch.rand(3, 16, 15)), r"same shape.*\(3, 16, 16\).*\(3, 16, 15\)"),
    (lambda: psnr(np.random.rand(3, 16, 16), np.random.rand(3, 16, 16)), "H×W×C"),
    (lambda: psnr(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)), "evaluate_batch"),
    (lambda: ssim(torch.rand(1, 10, 30), torch.rand(1, 10, 30)), "11×11"),
    (lambda: psnr(torch.rand(1, 8, 8), torch.rand(1, 8, 8), border=4), "border=4"),
    (lambda: evaluate_pair(torch.rand(3, 16, 16), torch.rand(3, 16, 16), color="yuv"), "color must be one of"),
    (lambda: evaluate_pair(torch.rand(2, 16, 16), torch.rand(2, 16, 16), color="luma"), "3-channel"),
])
def test_bad_input_gives_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
