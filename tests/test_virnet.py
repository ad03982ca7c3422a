"""VIRNet networks: checkpoint layout, parameter counts, forward semantics, kernels, gradient clipping."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.virnet import VIRNet_denoise_real, VIRNet_denoise_syn, VIRNet_sisr, VIRNetDenoiser, VIRNetSR
from models.virnet_kernels import kernel_from_kinfo, kinfo_from_kernel

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "virnet_state_dict.txt"
CONFIGS = {  # reference section title -> (factory, published parameter count)
    "VIRAttResUNet denoising-syn": (VIRNet_denoise_syn, 10_539_332),
    "VIRAttResUNet denoising-real": (VIRNet_denoise_real, 15_403_974),
    "VIRAttResUNetSR sisr": (VIRNet_sisr, 5_903_063),
}


def tiny_denoiser(**kw):
    opts = dict(sigma_chn=1, n_feat=(8, 16), dep_S=3, n_resblocks=1, snet_width=8)
    opts.update(kw)
    return VIRNetDenoiser(**opts)


def tiny_sr(**kw):
    opts = dict(n_feat=(16, 24), dep_S=3, dep_K=1, n_resblocks=1, snet_width=8, knet_width=16)
    opts.update(kw)
    return VIRNetSR(**opts)


def _reference_sections():
    sections, current = {}, None
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:].split(" (")[0], [])
        elif current is not None and line.strip() and not line.startswith("#"):
            name, shape = line.strip().split(" ", 1)
            current.append((name, [int(v) for v in shape.strip("[]").split(",") if v.strip()]))
    return sections


@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared reference key list not available")
@pytest.mark.parametrize("title", list(CONFIGS))
def test_state_dict_layout_matches_published_key_list(title):
    expected = _reference_sections()[title]
    model = CONFIGS[title][0]()
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == expected


@pytest.mark.parametrize("title", list(CONFIGS))
def test_parameter_counts_match_published(title):
    factory, count = CONFIGS[title]
    model = factory()
    assert sum(p.numel() for p in model.parameters()) == count


def test_subnetwork_parameter_counts():
    sr = VIRNet_sisr()
    counts = {name: sum(p.numel() for p in getattr(sr, name).parameters()) for name in ("SNet", "KNet", "RNet")}
    assert counts == {"SNet": 113_153, "KNet": 612_771, "RNet": 5_177_139}


def test_registry_names_and_contract():
    for name, scale in (("VIRNet_denoise_syn", None), ("VIRNet_denoise_real", None), ("VIRNet_sisr", 3)):
        model = build_model(name, **({"scale": scale} if scale else {}))
        assert model.input_keys == ("y",)
        assert model.default_loss == ("virnet_sisr" if scale else "virnet_denoise")
    assert build_model("VIRNet_sisr", scale=3).scale == 3


def test_pretrained_checkpoint_with_module_prefix_loads_strictly(tmp_path):
    checkpoint = pytest.importorskip("models.checkpoint")
    torch.manual_seed(0)
    source = tiny_denoiser()
    path = tmp_path / "virnet.pth"
    torch.save({"epoch": 3, "model_state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    target = tiny_denoiser()
    checkpoint.load_pretrained(target, str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    broken = {k: v for k, v in source.state_dict().items() if not k.startswith("SNet.conv1")}
    torch.save({"model_state_dict": broken}, path)
    with pytest.raises(Exception, match="SNet.conv1"):
        checkpoint.load_pretrained(tiny_denoiser(), str(path))


def test_full_denoisers_run_on_odd_sizes_and_clip_only_in_eval():
    torch.manual_seed(0)
    y = torch.rand(1, 3, 30, 27) * 1.4 - 0.2
    for factory, chn in ((VIRNet_denoise_syn, 1), (VIRNet_denoise_real, 3)):
        model = factory().eval()
        with torch.no_grad():
            out = model(y)
        assert out["x"].shape == y.shape and out["sigma_map"].shape == (1, chn, 30, 27)
        assert torch.equal(out["x"], out["mu"].clamp(0, 1))
    model = tiny_denoiser().train()
    out = model(y)
    assert torch.equal(out["x"], out["mu"])
    assert out["mu"].min() < 0  # the unclamped mean: the input's negative values survive the global residual


def test_sigma_map_is_clamped_exp_of_snet_and_conditions_rnet():
    torch.manual_seed(1)
    model = tiny_denoiser().eval()
    y = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        log_var = model.SNet(y)
        out = model(y)
        expected = torch.exp(log_var.clamp(math.log(1e-10), math.log(1e2)))
        assert torch.allclose(out["sigma2"], expected)
        assert torch.allclose(out["sigma_map"] ** 2, out["sigma2"], rtol=1e-5)
        assert torch.allclose(out["mu"], model.RNet(y, out["sigma2"].sqrt()))
        model.SNet.conv_last.bias.fill_(200.0)
        assert torch.allclose(model(y)["sigma2"], torch.full((2, 1, 12, 10), 100.0))
        model.SNet.conv_last.bias.fill_(-200.0)
        assert torch.allclose(model(y)["sigma2"], torch.full((2, 1, 12, 10), 1e-10))


def test_rnet_pads_by_reflection_and_adds_global_residual():
    torch.manual_seed(2)
    model = tiny_denoiser(extra_mode="null", noise_cond=False).eval()
    y = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        padded = F.pad(y, (0, 1, 0, 1), mode="reflect")  # 10×8: multiple of 2 for a two-level U-Net
        direct = model.RNet(padded)[..., :9, :7] - padded[..., :9, :7]
        assert torch.allclose(model(y)["mu"] - y, direct, atol=1e-6)
        model.RNet.tail.weight.zero_()
        model.RNet.tail.bias.zero_()
        assert torch.equal(model(y)["mu"], y)


def test_snet_orthogonal_init_with_leaky_relu_gain():
    model = tiny_denoiser(dep_S=4, snet_width=16)
    gain2 = 2.0 / (1 + 0.25 ** 2)
    for conv in (model.SNet.mid_layer[0], model.SNet.mid_layer[2]):
        w = conv.weight.detach().reshape(conv.out_channels, -1).double()
        assert torch.allclose(w @ w.T, gain2 * torch.eye(conv.out_channels, dtype=torch.float64), atol=1e-5)
        assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_shapes_and_conditioning(scale):
    torch.manual_seed(scale)
    model = tiny_sr(scale=scale).eval()
    y = torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        out = model(y)
        hr = (11 * scale, 9 * scale)
        assert out["x"].shape == (2, 3, *hr) and out["sigma2"].shape == (2, 1, 1, 1)
        assert out["sigma_map"].shape == (2, 1, 11, 9) and out["kinfo"].shape == (2, 3)
        assert out["kernel"].shape == (2, 1, 21, 21)
        y_up = y.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        extra = torch.cat([out["kinfo"][:, :, None, None].expand(-1, -1, *hr),
                           out["sigma2"].sqrt().expand(-1, -1, *hr)], 1)  # kernel info first, then noise
        assert torch.allclose(out["mu"], model.RNet(y_up, extra), atol=1e-6)
        assert bool((out["kinfo"][:, :2] >= 1e-4).all() and (out["kinfo"][:, :2] <= 1e2).all())
        assert bool((out["kinfo"][:, 2].abs() < 1).all())


def test_sr_sigma_map_meaning_follows_snet_output_option():
    torch.manual_seed(3)
    variance_model = tiny_sr(scale=2).eval()
    std_model = tiny_sr(scale=2, snet_output="std").eval()
    std_model.load_state_dict(variance_model.state_dict())
    y = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        a, b = variance_model(y), std_model(y)
    assert torch.allclose(a["sigma_map"], a["sigma2"].sqrt().expand(-1, -1, 8, 8))
    assert torch.allclose(b["sigma_map"], b["sigma2"].expand(-1, -1, 8, 8))
    assert torch.equal(a["mu"], b["mu"])


def _numpy_gaussian(size, var_x, var_y, rho):
    """Independent float64 reference: exp(-½ dᵀΣ⁻¹d) with d = (column offset, row offset), normalised."""
    cov = np.array([[var_x, rho * math.sqrt(var_x * var_y)], [rho * math.sqrt(var_x * var_y), var_y]])
    inv = np.linalg.inv(cov)
    c = size // 2
    k = np.zeros((size, size))
    for r in range(size):
        for q in range(size):
            d = np.array([q - c, r - c], dtype=np.float64)
            k[r, q] = math.exp(-0.5 * d @ inv @ d)
    return k / k.sum()


def test_kernel_from_kinfo_matches_independent_gaussian_and_published_transpose():
    kinfo = torch.tensor([[4.0, 1.0, 0.0], [2.5, 6.0, -0.6]], dtype=torch.float64)
    xy = kernel_from_kinfo(kinfo, 21, "xy")
    ij = kernel_from_kinfo(kinfo, 21, "ij")
    for n in range(2):
        ref = _numpy_gaussian(21, *kinfo[n].tolist())
        assert np.allclose(xy[n, 0].numpy(), ref, atol=1e-12)
        assert np.allclose(ij[n, 0].numpy(), ref.T, atol=1e-12)
    assert xy[0, 0, 10, :].sum() > xy[0, 0, :, 10].sum()  # var_x > var_y: wider along the row direction


def test_kernel_axes_match_data_generator():
    kernels = pytest.importorskip("data.kernels")
    rng = np.random.default_rng(7)
    for _ in range(3):
        k, kinfo = kernels.sr_gaussian_kernel(rng, 4.0, 21)
        ours = kernel_from_kinfo(torch.tensor(kinfo[None], dtype=torch.float64), 21, "xy")[0, 0].numpy()
        assert np.allclose(ours, k, atol=1e-10)


def test_kinfo_from_kernel_recovers_narrow_gaussians():
    truth = torch.tensor([[3.0, 2.0, 0.4], [2.0, 4.0, -0.3]], dtype=torch.float64)
    est = kinfo_from_kernel(kernel_from_kinfo(truth, 41))
    assert torch.allclose(est, truth, atol=1e-6)


def test_clip_gradients_per_subnetwork():
    model = tiny_sr(scale=2, clip_grad_R=1.0, clip_grad_S=2.0, clip_grad_K=3.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    before = {name: math.sqrt(sum(float((p.grad ** 2).sum()) for p in getattr(model, name).parameters()))
              for name in ("RNet", "SNet", "KNet")}
    norms = model.clip_gradients()
    assert norms["grad_norm_R"] == pytest.approx(before["RNet"], rel=1e-5)
    assert norms["grad_norm_K"] == pytest.approx(before["KNet"], rel=1e-5)
    for name, limit in (("RNet", 1.0), ("SNet", 2.0), ("KNet", 3.0)):
        after = math.sqrt(sum(float((p.grad ** 2).sum()) for p in getattr(model, name).parameters()))
        assert after == pytest.approx(limit, rel=1e-4)


def test_published_clip_thresholds_by_configuration():
    assert (VIRNet_denoise_syn(n_feat=(8, 16)).clip_grad_R, VIRNet_denoise_real(n_feat=(8, 16)).clip_grad_R) == (1e3, 5e2)
    assert (tiny_sr(scale=2).clip_grad_K, tiny_sr(scale=4).clip_grad_K) == (1e2, 5e2)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="extra_mode"):
        tiny_denoiser(extra_mode="sideways")
    with pytest.raises(ValueError, match="scale"):
        tiny_sr(scale=2.5)
    with pytest.raises(ValueError, match="snet_output"):
        tiny_sr(snet_output="precision")
    with pytest.raises(ValueError, match="kernel axes"):
        tiny_sr(kernel_axes="yx")
    with pytest.raises(ValueError, match="too small"):
        VIRNetDenoiser(n_feat=(4, 4, 4, 4), dep_S=2, n_resblocks=1, snet_width=4)(torch.rand(1, 3, 3, 3))
