"""The precision option (models/precision.py): bf16 stays close to fp32, the float32 parts stay float32,
"auto" follows the measured probe, and the engine's test_dataset.precision / train_options.precision."""
import os

import pytest
import torch

import models.precision as precision
from data.kernels import load_kernels
from data.images import read_image
from engine.train import train
from models import build_model, load_pretrained, tiled, with_precision
from models.nrlgdn import _EarlyStop
from utils.config import ConfigError
from utils.metrics import psnr
from utils.operators import conv_circular

from tests.test_device import TINY_NRLGDN, fft_dtype_guard
from tests.test_engine_train import make_tiny_data, tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPACT = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")


def compact(boundary="circular"):
    options = torch.load(COMPACT, map_location="cpu", weights_only=True)["model_options"]
    return load_pretrained(build_model("NRL_GDN", **{**options, "boundary": boundary}), COMPACT).eval()


def set12_crop(image="05", kernel=3, size=96, sigma=5.0):
    """A Set12 crop blurred circularly by one of Levin's kernels, with seeded Gaussian noise."""
    x = read_image(os.path.join(ROOT, "test_dataset", "Set12", f"{image}.png"))[None][..., 64:64 + size, 64:64 + size]
    k = torch.as_tensor(load_kernels(os.path.join(ROOT, "test_dataset", "kernels", "kernels_8.mat"))[kernel]).float()
    k = (k / k.sum())[None, None]
    y = conv_circular(x, k) + sigma / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    return x, y, k


def conv_dtypes(module):
    """Records the output dtype of every Conv2d below `module` (one list per forward)."""
    seen = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


# Measured on 96×96 Set12 crops (images 01, 05 × Levin kernels 0, 3, 4 × both boundaries, σ = 5): bf16 − fp32
# PSNR from −0.005 to +0.023 dB, bf16 vs fp32 outputs 56–60 dB apart.
BF16_PSNR_TOLERANCE_DB = 0.05
BF16_AGREEMENT_DB = 50.0


@pytest.mark.parametrize("boundary", ["circular", "zeros"])
def test_bf16_output_within_stated_psnr_of_fp32(boundary):
    x, y, k = set12_crop()
    net = compact(boundary)
    seen = conv_dtypes(net.r)
    with torch.no_grad():
        ref = net(y, k)
        assert set(seen) == {torch.float32}
        seen.clear()
        out = with_precision(net, "bf16")(y, k)
    assert torch.bfloat16 in seen                  # the CNN really ran in bf16
    assert out.dtype == torch.float32 and out.shape == ref.shape
    gain = psnr(out[0].clamp(0, 1), x[0]) - psnr(ref[0].clamp(0, 1), x[0])
    assert abs(gain) <= BF16_PSNR_TOLERANCE_DB, gain
    assert psnr(out[0].clamp(0, 1), ref[0].clamp(0, 1)) >= BF16_AGREEMENT_DB


def test_fft_operators_stay_float32_under_bf16_mode():
    """Blur operators, Eq. (22) and the early stop under the mode: any FFT of a bf16 tensor fails the guard."""
    torch.manual_seed(0)
    _, y, k = set12_crop(size=64)
    for boundary in ("zeros", "circular"):
        net = build_model("NRL_GDN", boundary=boundary, early_stop=True, record_steps=True,
                          **{**TINY_NRLGDN, "num_steps": 7}).eval()
        seen = conv_dtypes(net)
        with torch.no_grad(), fft_dtype_guard():
            out = with_precision(net, "bf16")(y, k)
            tiled_out = tiled(with_precision(net, "bf16"), tile=48, overlap=24)(y, k)
        assert torch.bfloat16 in seen
        assert all(s.dtype == torch.float32 for s in out["steps"] + tiled_out["steps"])


def test_early_stop_norm_is_float32_under_autocast():
    x, y, k = set12_crop(size=32)
    monitor = _EarlyStop(1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monitor.should_stop(0, x.to(torch.bfloat16), y, k, conv_circular)
    assert monitor.prev_error.dtype == torch.float32
    assert float(monitor.prev_error) == pytest.approx(float(torch.linalg.vector_norm(
        conv_circular(x.to(torch.bfloat16).float(), k) - y) / 2), rel=1e-6)


@pytest.mark.parametrize("speedup, expected", [(0.05, "fp32"), (1.1, "fp32"), (2.0, "bf16")])
def test_auto_follows_the_probe(monkeypatch, speedup, expected):
    monkeypatch.setattr(precision, "probe_bf16_speedup", lambda device="cpu": speedup)
    assert precision.resolve_precision("auto", "cpu") == expected
    _, y, k = set12_crop(size=48)
    net = compact()
    with torch.no_grad():
        out, ref = with_precision(net, "auto")(y, k), net(y, k)
    assert torch.equal(out, ref) == (expected == "fp32")    # fp32: bit-identical to the bare model


def test_probe_measures_once_per_device(monkeypatch):
    calls = []
    monkeypatch.setattr(precision, "_time_conv",
                        lambda x, w, dtype: calls.append(dtype) or (1.0 if dtype is None else 0.5))
    precision._probe.cache_clear()
    try:
        assert precision.probe_bf16_speedup("cpu") == 2.0
        assert precision.probe_bf16_speedup("cpu") == 2.0
        assert calls == [None, torch.bfloat16]       # one fp32 and one bf16 timing, then the cached ratio
    finally:
        precision._probe.cache_clear()


def test_precision_wrapper_keeps_the_model_and_its_attributes():
    net = compact()
    assert with_precision(net, "fp32") is net
    wrapped = with_precision(net, "bf16")
    assert wrapped.boundary == "circular" and wrapped.input_keys == ("y", "k") and wrapped.module is net
    assert with_precision(wrapped, "fp32") is net            # re-wrapping replaces the mode
    assert set(wrapped.state_dict()) == {f"module.{key}" for key in net.state_dict()}
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, auto, got 'half'"):
        with_precision(net, "half")
    with pytest.raises(ValueError, match="precision 'fp16' runs on a CUDA GPU only"):
        precision.resolve_precision("fp16", "cpu")


def test_dsdnet_dict_outputs_come_back_float32():
    torch.manual_seed(0)
    net = build_model("DSD_light", n_iter=2, nf_p=4, nf_d=4).eval()
    _, y, k = set12_crop(size=32, kernel=4)
    with torch.no_grad():
        out = with_precision(net, "bf16")(y, k)
    assert out["x"].dtype == torch.float32 and all(s.dtype == torch.float32 for s in out["stages"])


# ------------------------------------------------------------------------------------------- engine
def test_training_in_bf16_follows_the_fp32_loss_curve(tmp_path):
    img_dir, kernel_path = make_tiny_data(str(tmp_path))
    runs = {}
    for mode in ("fp32", "bf16"):
        cfg = tiny_train_config(str(tmp_path / mode), img_dir, kernel_path, precision=mode, total_iters=4,
                                epoch_val=0)
        runs[mode] = train(cfg)
    fp32, bf16 = ([h["loss"] for h in runs[m].history] for m in ("fp32", "bf16"))
    assert len(fp32) == len(bf16) == 4
    # measured: relative differences up to 8e-6 per step (the float32 Eq. (22) start dominates this tiny model)
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(fp32, bf16)), (fp32, bf16)
    assert fp32 != bf16                              # bf16 really ran


def test_amp_and_precision_are_one_switch(tmp_path):
    img_dir, kernel_path = make_tiny_data(str(tmp_path), n_images=2)
    cfg = tiny_train_config(str(tmp_path), img_dir, kernel_path, precision="bf16", amp="bf16")
    with pytest.raises(ConfigError, match="^train_options.amp: 'bf16' and train_options.precision: 'bf16' both "
                                          "set; amp is the older name of precision, keep only precision$"):
        train(cfg)
    cfg = tiny_train_config(str(tmp_path), img_dir, kernel_path, precision="fp16")
    with pytest.raises(ConfigError, match="^train_options.precision: precision 'fp16' runs on a CUDA GPU only"):
        train(cfg)


def test_load_model_returns_the_model_in_the_precision_asked_for():
    from models import load_model
    from models.precision import WithPrecision

    exact = load_model(COMPACT)
    fast = load_model(COMPACT, precision="bf16")
    assert not isinstance(exact, WithPrecision) and isinstance(fast, WithPrecision) and fast.precision == "bf16"
    assert not fast.training and not fast.module.training
    _, y, k = set12_crop("08", kernel=4, size=64)
    with torch.no_grad():
        a, b = exact(y, k), fast(y, k)
    assert b.dtype == torch.float32 and psnr(b[0].clamp(0, 1), a[0].clamp(0, 1)) > 40
