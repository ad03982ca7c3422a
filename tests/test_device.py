"""Device and dtype safety: blur operators, models and losses under mixed precision, and CPU/GPU agreement.

Every test takes `device` (the CPU, plus "cuda" when a GPU is present), so `pytest tests/test_device.py`
on a GPU machine runs the same checks on CUDA. On the CPU, autocast upcasts FFTs to float32 by itself,
which CUDA's autocast does not (cuFFT has no bfloat16 and takes float16 only for power-of-two sizes);
`fft_dtype_guard` therefore makes any FFT of a half tensor fail on every device, as it would on CUDA.
"""
import contextlib
import os

import pytest
import torch

from models import build_model, load_pretrained
from models.dsdnet_blocks import ChannelLayerNorm
from models.dsdnet_loss import DSDNetLoss, l1_fft_terms
from models.dsdnet_ops import BlurOperator
from models.losses import build_loss
from models.virnet_kernels import kernel_from_kinfo
from utils import operators as ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TINY_NRLGDN = dict(num_steps=2, r_channels=(4, 6, 8, 10), r_blocks=1, hd_channels=4)
FFT_NAMES = ("fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "rfftn", "irfftn")
HALF = (torch.float16, torch.bfloat16, torch.complex32)


@pytest.fixture(params=DEVICES)
def device(request):
    """The device under test; on CUDA with TF32 off, so that results compare with the CPU at 1e-4."""
    if request.param == "cuda":
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        yield torch.device("cuda")
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    else:
        yield torch.device("cpu")


def amp_dtypes(device):
    return [torch.bfloat16] if device.type == "cpu" else [torch.bfloat16, torch.float16]


@contextlib.contextmanager
def fft_dtype_guard():
    """Make torch.fft.* refuse float16/bfloat16 inputs (CUDA's behaviour for most sizes) on any device."""
    saved = {name: getattr(torch.fft, name) for name in FFT_NAMES}

    def guarded(name, fn):
        def call(t, *args, **kwargs):
            if t.dtype in HALF:
                raise AssertionError(f"torch.fft.{name} got a {t.dtype} tensor (fails on CUDA)")
            return fn(t, *args, **kwargs)
        return call

    for name, fn in saved.items():
        setattr(torch.fft, name, guarded(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.fft, name, fn)


def _blur_data(device, n=2, size=48, ksize=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    k = torch.rand(n, 1, ksize, ksize, generator=g) + 0.05
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    return x.to(device), k.to(device)


# ---------------------------------------------------------------------------------------- operators
OPERATORS = {
    "conv_fft": lambda x, k: ops.conv_fft(x, k),
    "conv_fft_adjoint": lambda x, k: ops.conv_fft(x, k, adjoint=True),
    "conv": ops.conv,
    "conv_adjoint": ops.conv_adjoint,
    "conv_direct": ops.conv_direct,
    "conv_adjoint_direct": ops.conv_adjoint_direct,
    "conv_circular": ops.conv_circular,
    "edgetaper": ops.edgetaper,
    "eq22_init": ops.eq22_init,
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operators_compute_half_inputs_in_float32(device, name):
    """A bfloat16/float16 image (the H block's output under autocast) is blurred in float32, FFT paths
    included; the result equals the float32 operator on the same (rounded) values."""
    assert ops.fft_is_faster(48, 48, 15, 15, 6)   # `conv`/`conv_adjoint` take the FFT path here
    x, k = _blur_data(device)
    op = OPERATORS[name]
    for dtype in amp_dtypes(device):
        low = x.to(dtype)
        with fft_dtype_guard():
            out = op(low, k)
        assert out.dtype == torch.float32, (name, dtype, out.dtype)
        torch.testing.assert_close(out, op(low.float(), k), rtol=0, atol=1e-6)


def test_operators_ignore_autocast(device):
    """Under autocast, A x and Aᵀ r stay float32 (a bfloat16 A x loses the noise-level residual y − A x)."""
    x, k = _blur_data(device, ksize=5)
    for dtype in amp_dtypes(device):
        with torch.autocast(device.type, dtype=dtype), fft_dtype_guard():
            outs = [ops.conv(x, k), ops.conv_adjoint(x, k), ops.psf2otf(k.to(dtype), (48, 48))]
        assert [o.dtype for o in outs] == [torch.float32, torch.float32, torch.complex64]
        torch.testing.assert_close(outs[0], ops.conv(x, k), rtol=0, atol=1e-6)


def test_kernels_stay_float32_for_half_images(device):
    x, k = _blur_data(device, ksize=25)
    for dtype in amp_dtypes(device):
        out = ops.check_blur_inputs(x.to(dtype), k)
        assert out.dtype == torch.float32 and out.device.type == device.type
        assert abs(out.sum(dim=(-2, -1)) - 1).max() < 1e-6   # 625 taps rounded to 8 bits would not sum to 1


# ------------------------------------------------------------------------------------------- models
def _train_step(model, batch, keys, dtype, device):
    """One forward/backward under autocast with FFTs of half tensors refused; returns (loss, outputs)."""
    with torch.autocast(device.type, dtype=dtype), fft_dtype_guard():
        out = model(*[batch[key] for key in keys])
        out = out if isinstance(out, dict) else {"x": out}
        loss, _ = build_loss(model.default_loss)(out, batch)
        loss.backward()
    assert torch.isfinite(loss), float(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return loss, out


@pytest.mark.parametrize("name", ["NRL_GDN", "rgdn_uniform"])
def test_nrlgdn_trains_under_autocast(device, name):
    """Before the fix Aᵀ(H(r)) took bfloat16 into rfft2: 'Unsupported dtype BFloat16' / cuFFT errors."""
    x, k = _blur_data(device)
    batch = {"x": x, "y": ops.conv_circular(x, k) + 0.01 * torch.randn_like(x), "k": k}
    for dtype in amp_dtypes(device):
        torch.manual_seed(0)
        model = build_model(name, early_stop=True, **TINY_NRLGDN).to(device).train()
        loss, out = _train_step(model, batch, ("y", "k"), dtype, device)
        assert out["x"].dtype == torch.float32


def test_grad_checkpointing_under_autocast_gives_the_same_gradients(device):
    x, k = _blur_data(device, n=1, size=32, ksize=9)
    batch = {"x": x, "y": ops.conv_circular(x, k), "k": k}
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model("NRL_GDN", early_stop=False, grad_checkpointing=checkpointing, **TINY_NRLGDN)
        model = model.to(device).train()
        _train_step(model, batch, ("y", "k"), torch.bfloat16, device)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # relative L2: on CUDA the recomputed bfloat16 convolutions may round a few values differently
    assert (grads[0] - grads[1]).norm() <= 1e-3 * grads[0].norm()


@pytest.mark.parametrize("name", ["DSD_light", "DSDplus_e"])
def test_dsdnet_trains_under_autocast(device, name):
    x, k = _blur_data(device, size=32, ksize=7)
    y = BlurOperator(k)(x) + 0.01 * torch.randn_like(x)
    batch = {"x": x, "y": y, "k": k, "noise": y - BlurOperator(k)(x)}
    for dtype in amp_dtypes(device):
        torch.manual_seed(0)
        opts = {"n_iter": 2} if name == "DSD_light" else {}
        model = build_model(name, nf_p=4, nf_d=4, adjoint="exact", **opts).to(device).train()
        _train_step(model, batch, ("y", "k"), dtype, device)


def test_dsdnet_loss_takes_half_predictions(device):
    """The FFT term of DSDNet's loss on bfloat16/float16 predictions (was: rfft2 of a half tensor)."""
    x, k = _blur_data(device, size=30, ksize=5)
    pred = x + 0.05
    for dtype in amp_dtypes(device):
        with fft_dtype_guard():
            s, f = l1_fft_terms(pred.to(dtype), x)
            loss, _ = DSDNetLoss()({"x": pred.to(dtype)}, {"x": x, "y": x, "k": k})
        ref_s, ref_f = l1_fft_terms(pred.to(dtype).float(), x)
        assert s.dtype == f.dtype == torch.float32 and torch.isfinite(loss)
        torch.testing.assert_close((s, f), (ref_s, ref_f))


@pytest.mark.parametrize("loss_name", ["l1", "mse", "charbonnier", "nrlgdn_l1"])
def test_pixel_losses_do_not_round_the_target_to_half(device, loss_name):
    gt = torch.rand(2, 3, 16, 16, device=device)
    low = (gt + 0.01).to(torch.bfloat16)
    loss, _ = build_loss(loss_name)({"x": low}, {"x": gt})
    ref, _ = build_loss(loss_name)({"x": low.float()}, {"x": gt})
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)


def test_channel_layer_norm_does_not_overflow_float16(device):
    """(x − mean)² of activations above ~256 overflows float16 (DSDNet+ under fp16 autocast)."""
    norm = ChannelLayerNorm(8).to(device)
    x = torch.randn(1, 8, 4, 4, device=device) * 400
    out = norm(x.half())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, norm(x.half().float()), rtol=0, atol=1e-5)


def test_virnet_kernel_is_float32_under_autocast(device):
    """uᵀΣ⁻¹u through einsum ran as a half bmm under autocast (inf in float16, 3 digits in bfloat16)."""
    kinfo = torch.tensor([[0.3, 2.0, 0.2], [4.0, 1.5, -0.5]], device=device)
    ref = kernel_from_kinfo(kinfo)
    for dtype in amp_dtypes(device):
        with torch.autocast(device.type, dtype=dtype):
            out = kernel_from_kinfo(kinfo)
            half_in = kernel_from_kinfo(kinfo.to(dtype))
        assert out.dtype == half_in.dtype == torch.float32 and torch.isfinite(half_in).all()
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_virnet_trains_under_autocast(device):
    x, _ = _blur_data(device, size=32)
    batch = {"x": x, "y": x + 0.02 * torch.randn_like(x), "sigma": torch.full_like(x[:, :1], 0.02)}
    for dtype in amp_dtypes(device):
        torch.manual_seed(0)
        model = build_model("VIRNet_denoise_syn", n_feat=(8, 8, 8), dep_S=3, n_resblocks=1, snet_width=8)
        _train_step(model.to(device).train(), batch, ("y",), dtype, device)


# ---------------------------------------------------------------------------------- CPU vs device
def _restore(model, y, k=None):
    with torch.no_grad():
        out = model(y) if k is None else model(y, k)
    return (out["x"] if isinstance(out, dict) else out).float().cpu()


def test_compact_checkpoint_restores_the_same_image_on_every_device(device):
    path = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")
    options = torch.load(path, map_location="cpu", weights_only=True)["model_options"]
    model = load_pretrained(build_model("NRL_GDN", **options), path).eval()
    x, k = _blur_data("cpu", n=1, size=64, ksize=15, seed=3)
    y = ops.conv_circular(x, k) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    ref = _restore(model, y, k)
    out = _restore(model.to(device), y.to(device), k.to(device))
    assert (out - ref).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["DSD_light", "VIRNet_denoise_syn"])
def test_random_models_agree_with_the_cpu(device, name):
    torch.manual_seed(0)
    options = (dict(n_iter=2, nf_p=4, nf_d=4) if name == "DSD_light" else
               dict(n_feat=(8, 8, 8), dep_S=3, n_resblocks=1, snet_width=8))
    model = build_model(name, **options).eval()
    x, k = _blur_data("cpu", n=1, size=40, ksize=7, seed=5)
    y = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    kernel = None if name.startswith("VIRNet") else k
    ref = _restore(model, y, kernel)
    out = _restore(model.to(device), y.to(device), None if kernel is None else kernel.to(device))
    assert (out - ref).abs().max() < 1e-4
