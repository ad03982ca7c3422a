"""DSDNet / DSDNet+: checkpoint layout, parameter counts, shapes, and the sub-modules' maths against
independent float64 re-derivations (scipy / numpy). Equivalence with the published code itself is
checked by tools/compare_dsdnet_published.py (needs a checkout of setsunil/DSDNet)."""
import os
import re

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from models import build_model, load_pretrained
from models.dsdnet import DSD_full, DSD_light, DSDNet, DSDNetPlus, DSDplus_e, DSDplus_p
from models.dsdnet_blocks import ChannelLayerNorm, DifferenceOfMaxout, QuadraticOperators
from models.dsdnet_loss import DSDNetLoss
from models.dsdnet_ops import BlurOperator, edgetaper, fft_init, tikhonov_deconv_circular

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(REPO, "..", "shared", "reference", "dsdnet_state_dict.txt")
VARIANTS = {"DSD_full": DSD_full, "DSD_light": DSD_light, "DSDplus_p": DSDplus_p, "DSDplus_e": DSDplus_e}
# unique parameters of the released networks, as counted from the published code (study notes)
PUBLISHED_COUNTS = {"DSD_full": 323_611_420, "DSD_light": 58_350_633, "DSDplus_p": 131_337_094,
                    "DSDplus_e": 14_636_868}


def tiny_dsdnet(**kw):
    return DSDNet(**{"n_iter": 2, "nf_p": 4, "nf_d": 5, **kw})


def tiny_plus(**kw):
    return DSDNetPlus(**{"n_iter": 2, "nf_p": 3, "nf_d": 4, **kw})


def random_kernels(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.rand(n, 1, h, w, generator=g, dtype=torch.float64) ** 3
    return k / k.sum(dim=(-2, -1), keepdim=True)


# ------------------------------------------------------------------------------------- layout
def _reference_layouts():
    layouts, current = {}, None
    with open(REFERENCE, encoding="utf-8") as fh:
        for line in fh:
            head = re.match(r"^(DSD\w+)\s*:", line)
            if head:
                current = layouts.setdefault(head.group(1), {})
                continue
            entry = re.match(r"^  ([\w.]+)\s+\(([\d, ]*)\)", line)
            if entry and current is not None:
                current[entry.group(1)] = tuple(int(v) for v in entry.group(2).replace(" ", "").split(",") if v)
    return layouts


@pytest.mark.skipif(not os.path.isfile(REFERENCE), reason="../shared reference key list not available")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_matches_reference_key_list(name):
    with torch.device("meta"):
        model = VARIANTS[name]()
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(_reference_layouts()[name].items())


def _conv(i, o, k, bias=True, groups=1):
    return i // groups * o * k * k + (o if bias else 0)


def _expected_count(name):
    """Parameter count re-derived from the architecture description (independent of our modules)."""
    n, nf_p, nf_d, plus = {"DSD_full": (4, 49, 49, False), "DSD_light": (3, 24, 24, False),
                           "DSDplus_p": (4, 48, 48, True), "DSDplus_e": (1, 16, 16, True)}[name]
    t = nf_p + nf_d
    branch = lambda nf: _conv(3, nf, 7, bias=False) + 2 * _conv(nf, 4 * nf, 3, groups=nf)
    levels = [(t, 2 * t), (2 * t, 4 * t), (4 * t, 8 * t), (8 * t, 16 * t)]
    if not plus:
        hyp = lambda o: _conv(6, o, 3) + _conv(o, o // 4, 1) + _conv(o // 4, o // 4, 3) + _conv(o // 4, o, 1)
        nlnet = _conv(6, 64, 3) + _conv(64, 64, 3) + _conv(64, 3, 3)
        unet = sum(_conv(a, b, 3) + _conv(b, b, 3) for a, b in levels)  # encoder + bottleneck
        unet += sum(a * b * 9 + b + _conv(a, b, 3) + _conv(b, b, 3) for b, a in levels)  # decoder
        return n * (hyp(nf_p) + hyp(nf_d) + nlnet + branch(nf_p) + branch(nf_d) + unet)

    def ffn(d):
        h = int(d * 2.66)
        return _conv(d, 2 * h, 1, False) + 2 * h * 9 + _conv(h, h, 1) + _conv(h, d, 1, False) + 2 * d  # + LN

    kry = sum(_conv(a, b, 3) + ffn(b) for a, b in levels)
    kry += sum(_conv(a, 2 * a, 3) + _conv(a, b, 1) + ffn(b) for b, a in levels)
    nlnet2 = _conv(3, 6, 1) + _conv(6, 6, 3, groups=6) + _conv(6, 3, 1)
    return 3 * n + n * (nlnet2 + branch(nf_p) + branch(nf_d)) + kry


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts(name):
    with torch.device("meta"):
        model = build_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == _expected_count(name) == PUBLISHED_COUNTS[name]
    assert type(model).input_keys == ("y", "k") and type(model).default_loss == "dsdnet"


def test_shared_filter_banks_are_registered_twice():
    model = tiny_dsdnet()
    sd = model.state_dict()
    for s in range(2):
        assert sd[f"i.{s}.conv_prior.weight"].data_ptr() == sd[f"p.{s}.conv.weight"].data_ptr()
        assert sd[f"i.{s}.conv_data.weight"].data_ptr() == sd[f"d.{s}.conv.weight"].data_ptr()
    unique = sum(p.numel() for p in model.parameters())
    assert sum(v.numel() for v in sd.values()) == unique + 2 * 3 * 7 * 7 * (4 + 5)


@pytest.mark.parametrize("wrap", ["module", "params"])
def test_checkpoint_formats_load_strictly(tmp_path, wrap):
    torch.manual_seed(0)
    source, target = tiny_dsdnet(), tiny_dsdnet()
    sd = source.state_dict()
    blob = {f"module.{k}": v for k, v in sd.items()} if wrap == "module" else {"params": sd}
    torch.save(blob, tmp_path / "w.pth")
    load_pretrained(target, str(tmp_path / "w.pth"))
    y, k = torch.rand(1, 3, 20, 24), random_kernels(1, 5, 5).float()
    with torch.no_grad():
        assert torch.equal(source.eval()(y, k)["x"], target.eval()(y, k)["x"])
    del sd["i.1.conv_data.weight"]  # the duplicate key is part of the official layout
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="i.1.conv_data.weight"):
        load_pretrained(tiny_dsdnet(), str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("factory", [tiny_dsdnet, tiny_plus])
@pytest.mark.parametrize("size,ks", [((33, 40), 7), ((32, 29), 8)])
def test_forward_shapes_and_stages(factory, size, ks):
    torch.manual_seed(0)
    model = factory().eval()
    model.record_steps = True
    y, k = torch.rand(2, 3, *size), random_kernels(2, ks, ks).float()
    with torch.no_grad():
        out = model(y, k)
    assert out["x"].shape == y.shape and torch.isfinite(out["x"]).all()
    assert len(out["steps"]) == 2 and out["steps"][-1] is out["x"]
    assert len(out["stages"]) == (2 if isinstance(model, DSDNetPlus) else 1)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_released_variants_forward_32px(name):
    torch.manual_seed(0)
    model = VARIANTS[name]().eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32), random_kernels(1, 9, 9).float())
    assert out["x"].shape == (1, 3, 32, 32) and torch.isfinite(out["x"]).all()


def test_kernel_conventions_and_bad_inputs():
    torch.manual_seed(0)
    model = tiny_plus().eval()
    y, k = torch.rand(1, 3, 24, 24), random_kernels(1, 6, 6).float()
    with torch.no_grad():
        ref = model(y, k)["x"]
        model.kernel_convention = "correlation"
        assert torch.equal(model(y, torch.flip(k, dims=(-2, -1)))["x"], ref)
    with pytest.raises(ValueError, match="square kernels.*exact_crop"):
        model(y, random_kernels(1, 5, 7).float())
    with pytest.raises(ValueError, match="N×3×H×W"):
        model(torch.rand(1, 1, 24, 24), k)
    with pytest.raises(ValueError, match="padding_mode"):
        tiny_dsdnet(padding_mode="mirror")
    with pytest.raises(ValueError, match="adjoint"):
        tiny_dsdnet(adjoint="true")
    exact = tiny_plus(exact_crop=True).eval()
    with torch.no_grad():
        assert exact(y, random_kernels(1, 5, 7).float())["x"].shape == y.shape


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_dsdnet().train()
    ckpt = tiny_dsdnet(grad_checkpointing=True).train()
    ckpt.load_state_dict(plain.state_dict())
    y, k = torch.rand(1, 3, 20, 20), random_kernels(1, 5, 5).float()
    for model in (plain, ckpt):
        model(y, k)["x"].square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert plain.p[0].conv.weight.grad.abs().sum() > 0  # the shared filter bank is trained


# ------------------------------------------------------------------------------------- maths
def test_difference_of_maxout_matches_direct_formula():
    torch.manual_seed(0)
    shrink = DifferenceOfMaxout(3, num_max=4).double()
    f = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    out = shrink(f).detach().numpy()
    x = f.numpy()
    for branch, sign in ((shrink.conv1, 1.0), (shrink.conv2, -1.0)):
        w, b = branch.weight.detach().numpy(), branch.bias.detach().numpy()
        for n in range(2):
            for c in range(3):
                pieces = [ndi.correlate(x[n, c], w[4 * c + j, 0], mode="constant") + b[4 * c + j] for j in range(4)]
                out[n, c] -= sign * np.max(pieces, axis=0)
    assert np.abs(out).max() < 1e-12


def test_channel_layer_norm_matches_layer_norm():
    torch.manual_seed(0)
    ln = ChannelLayerNorm(5)
    with torch.no_grad():
        ln.body.weight.normal_()
        ln.body.bias.normal_()
    x = torch.randn(2, 5, 4, 6)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (5,), ln.body.weight, ln.body.bias, 1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kh,kw", [(5, 5), (4, 6)])
def test_blur_is_replicate_convolution_and_adjoints(kh, kw):
    k = random_kernels(2, kh, kw, seed=1)
    x = torch.rand(2, 3, 12, 14, dtype=torch.float64)
    r = torch.rand(2, 3, 12, 14, dtype=torch.float64)
    blur = BlurOperator(k, "replicate")
    expected = np.stack([[ndi.convolve(x[n, c].numpy(), k[n, 0].numpy(), mode="nearest") for c in range(3)]
                         for n in range(2)])
    assert np.abs(blur(x).numpy() - expected).max() < 1e-12
    for mode in ("replicate", "circular", "reflect", "zeros"):
        exact = BlurOperator(k, mode, adjoint="exact")
        assert abs(float((exact(x) * r).sum() - (x * exact.adjoint(r)).sum())) < 1e-10, mode
    # published Kᵀ: flipped-kernel correlation, zero padding placed like K's (a true adjoint only of
    # the zero-padded K with odd kernels) — checked against scipy's correlate with the same placement
    kt = blur.adjoint(r).numpy()
    origin = (-((kh + 1) % 2), -((kw + 1) % 2))  # scipy centres even kernels one sample later
    for n in range(2):
        for c in range(3):
            ref = ndi.correlate(r[n, c].numpy(), k[n, 0].numpy(), mode="constant", origin=origin)
            assert np.abs(kt[n, c] - ref).max() < 1e-12
    zero_padded = BlurOperator(k, "zeros")
    gap = abs(float((zero_padded(x) * r).sum() - (x * zero_padded.adjoint(r)).sum()))
    assert (gap < 1e-10) == (kh % 2 == 1 and kw % 2 == 1)
    assert (blur.adjoint(r) - BlurOperator(k, "replicate", "exact").adjoint(r)).abs().max() > 1e-3


def test_tikhonov_fft_solve_matches_dense_float64_solve():
    h, w, lam = 7, 8, 0.002
    k = random_kernels(1, 3, 3, seed=2)
    y = torch.rand(1, 1, h, w, dtype=torch.float64)
    ours = tikhonov_deconv_circular(y, k, lam)[0, 0].numpy().ravel()

    def circulant(kernel):  # matrix of ndimage.convolve(mode='wrap')
        cols = []
        for i in range(h * w):
            e = np.zeros(h * w)
            e[i] = 1
            cols.append(ndi.convolve(e.reshape(h, w), kernel, mode="wrap").ravel())
        return np.stack(cols, axis=1)

    K = circulant(k[0, 0].numpy())
    # forward differences [-1, 1] (convolution, centre at index 1) along x and y
    Gx, Gy = circulant(np.array([[-1.0, 1.0]])), circulant(np.array([[-1.0], [1.0]]))
    A = K.T @ K + lam * (Gx.T @ Gx + Gy.T @ Gy)
    expected = np.linalg.solve(A, K.T @ y.numpy().ravel())
    assert np.abs(ours - expected).max() < 1e-9


def test_edgetaper_matches_numpy_kruse():
    k = random_kernels(1, 5, 5, seed=3)
    img = torch.rand(1, 2, 13, 16, dtype=torch.float64)
    ours = edgetaper(img, k).numpy()
    kn, x = k[0, 0].numpy(), img[0].numpy()
    profiles = []
    for proj, n in ((kn.sum(axis=1), 13), (kn.sum(axis=0), 16)):
        z = np.zeros(n - 1)  # circular autocorrelation of the projection on a period of n-1
        full = np.correlate(proj, proj, mode="full")
        for lag, val in zip(range(-(len(proj) - 1), len(proj)), full):
            z[lag % (n - 1)] += val
        z = np.append(z, z[0])
        profiles.append(1 - z / z.max())
    alpha = np.outer(*profiles)
    for _ in range(3):
        x = alpha * x + (1 - alpha) * np.stack([ndi.convolve(c, kn, mode="wrap") for c in x])
    assert np.abs(ours[0] - x).max() < 1e-12


def test_fft_init_deblurs_and_crops():
    g = torch.Generator().manual_seed(4)
    x = F.interpolate(torch.rand(1, 3, 6, 7, generator=g, dtype=torch.float64), size=(44, 52), mode="nearest")
    k = random_kernels(1, 9, 9, seed=4)
    y = BlurOperator(k, "replicate")(x)
    x0 = fft_init(y, k)
    assert x0.shape == y.shape
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (x0 - x)[interior].abs().mean() < 0.5 * (y - x)[interior].abs().mean()  # sharper than y
    assert (x0 - x).abs().mean() < 0.6 * (y - x).abs().mean()  # also at the borders (edgetaper)
    torch.testing.assert_close(fft_init(y, k, exact_crop=True), x0)  # square kernel: same crop


def test_quadratic_operators_are_consistent():
    """normal = decode∘encode, and with mn = 1 and the exact Kᵀ it is symmetric."""
    torch.manual_seed(0)
    conv_p = torch.nn.Conv2d(3, 4, 7, padding=3, bias=False).double()
    conv_d = torch.nn.Conv2d(3, 2, 7, padding=3, bias=False).double()
    blur = BlurOperator(random_kernels(1, 5, 5), "replicate", adjoint="exact")
    mp, md = torch.rand(1, 4, 10, 12, dtype=torch.float64), torch.rand(1, 2, 10, 12, dtype=torch.float64)
    mn = torch.rand(1, 3, 10, 12, dtype=torch.float64)
    ops = QuadraticOperators(conv_p, conv_d, blur, mp, md, mn)
    x, z = torch.rand(1, 3, 10, 12, dtype=torch.float64), torch.rand(1, 3, 10, 12, dtype=torch.float64)
    torch.testing.assert_close(ops.normal(x), ops.decode(*ops.encode(x)))
    sym = QuadraticOperators(conv_p, conv_d, blur, mp, md, 1.0)
    with torch.no_grad():
        assert abs(float((sym.normal(x) * z).sum() - (x * sym.normal(z)).sum())) < 1e-9


# ------------------------------------------------------------------------------------- loss
def test_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(5)
    gt = torch.rand(2, 3, 8, 10, generator=g, dtype=torch.float64)
    stages = [torch.rand(2, 3, 8, 10, generator=g, dtype=torch.float64) for _ in range(2)]
    k = random_kernels(2, 3, 3, seed=5)
    noise = 0.05 * torch.randn(2, 3, 8, 10, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 8, 10, generator=g, dtype=torch.float64)

    def l1fft(a, b):
        return np.abs(a - b).mean() + 0.1 * np.abs(np.fft.rfft2(a) - np.fft.rfft2(b)).mean()

    blur_np = lambda img: np.stack([[ndi.convolve(img[n, c], k[n, 0].numpy(), mode="nearest") for c in range(3)]
                                    for n in range(2)])
    expected = sum(l1fft(s.numpy(), gt.numpy()) for s in stages)
    expected += 0.01 * l1fft(blur_np(stages[-1].numpy()) + noise.numpy(), y.numpy())
    loss, logs = DSDNetLoss()({"x": stages[-1], "stages": stages}, {"x": gt, "y": y, "k": k, "noise": noise})
    assert abs(float(loss) - expected) < 1e-12 and abs(logs["loss"] - expected) < 1e-12
    # without the noise sample the noise is y − K x, i.e. the re-blur term compares K x_final with K x
    loss, _ = DSDNetLoss()(stages[-1], {"x": gt, "y": y, "k": k})
    expected = l1fft(stages[-1].numpy(), gt.numpy())
    expected += 0.01 * l1fft(blur_np(stages[-1].numpy()) - blur_np(gt.numpy()) + y.numpy(), y.numpy())
    assert abs(float(loss) - expected) < 1e-12
    with pytest.raises(KeyError, match="'k'"):
        DSDNetLoss()(stages[-1], {"x": gt, "y": y})


def test_loss_registry_and_backward():
    from models.losses import build_loss

    torch.manual_seed(0)
    model = tiny_plus().train()
    y, k = torch.rand(1, 3, 20, 20), random_kernels(1, 5, 5).float()
    loss, logs = build_loss("dsdnet")(model(y, k), {"x": torch.rand(1, 3, 20, 20), "y": y, "k": k})
    loss.backward()
    assert set(logs) == {"l1", "l1_fft", "reblur", "loss"}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.gamma.grad is not None and model.mp.grad is not None


# ------------------------------------------------------------------------------------- configs
def test_configs_train_and_evaluate_on_the_engine(tmp_path):
    """configs/dsdnet_tiny.json trains two steps; configs/dsdnet_test.json evaluates the result."""
    from engine.evaluate import evaluate
    from engine.train import train
    from utils.config import load_config
    from utils.io import save_image

    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    for i in range(2):
        low = torch.from_numpy(rng.random((1, 3, 6, 6))).float()
        save_image(str(img_dir / f"img{i}.png"), F.interpolate(low, size=(48, 48), mode="bilinear")[0])
    kernels = np.zeros((1, 5, 5))
    kernels[0, 2, :] = 0.2
    np.save(tmp_path / "kernels.npy", kernels)

    published = load_config(os.path.join(REPO, "configs", "dsdnet_train.json"))
    assert published["optimizer"] == {"name": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999],
                                      "grad_clip": 0.01}
    assert published["scheduler"]["name"] == "cosine" and published["scheduler"]["eta_min"] == 1e-7
    assert published["train_dataset"]["degradation"]["kernels"]["size"] == 35

    weights = tmp_path / "weights"
    cfg = load_config(os.path.join(REPO, "configs", "dsdnet_tiny.json"), overrides=[
        f"train_dataset.root_path={img_dir}", f"val_dataset.root_path={img_dir}",
        f"val_dataset.kernel_path={tmp_path / 'kernels.npy'}", f"model.model_save_file={weights}",
        f"train_options.checkpoint_dir={tmp_path / 'ckpt'}"])
    result = train(cfg)
    assert result.status == "completed"
    exported = weights / "dsdnet_tiny.pth"
    assert exported.is_file()

    cfg = load_config(None, os.path.join(REPO, "configs", "dsdnet_test.json"), overrides=[
        "model.model_select=DSDplus_e", f"model.pretrained={exported}", "train_options.disable_cuda=true",
        f"test_dataset.test_data={img_dir}", f"test_dataset.kernel_path={tmp_path / 'kernels.npy'}",
        f"test_dataset.result_save_file={tmp_path / 'results'}", "test_dataset.save_images=false",
        "test_dataset.save_figures=false", "test_dataset.max_images=1"])
    evaluation = evaluate(cfg, verbose=False)
    protocols = {r["protocol"] for r in evaluation.records}
    assert protocols == {"noise_01", "noise_03", "noise_05"}
    assert all(np.isfinite(r["psnr"]) for r in evaluation.records)
