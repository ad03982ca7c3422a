"""NRL-GDN family: layout, one update step and the unrolled loop against float64 re-derivations."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from models import build_model
from models.drunet import DRUNet
from models.nrlgdn import NRL_GDN, NRL_GDN_Y0, RGDNBlock, rgdn_uniform
from tests.test_operators import _np_eq22
from utils.operators import conv_circular

SMALL = dict(r_channels=(4, 6, 8, 10), r_blocks=2, hd_channels=5)
TSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "nrlgdn_state_dict.tsv")


# ---------------------------------------------------------------- functional float64 references
def ref_block(sd, prefix, x):
    """RGDN block, plain formulation: conv ×3 then ConvTranspose ×4 (stride 1, pad 2), ReLU between."""
    for i in range(7):
        w = sd[f"{prefix}.main.{2 * i}.weight"]
        x = F.conv2d(x, w, padding=2) if i < 3 else F.conv_transpose2d(x, w, padding=2)
        x = F.relu(x) if i < 6 else x
    return x


def ref_drunet(sd, prefix, x, nb):
    def res(x, p):
        return x + F.conv2d(F.relu(F.conv2d(x, sd[f"{p}.res.0.weight"], padding=1)), sd[f"{p}.res.2.weight"], padding=1)

    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % 8, 0, -h % 8), mode="replicate")
    skips = [F.conv2d(x, sd[f"{prefix}.m_head.weight"], padding=1)]
    for level in (1, 2, 3):
        t = skips[-1]
        for b in range(nb):
            t = res(t, f"{prefix}.m_down{level}.{b}")
        skips.append(F.conv2d(t, sd[f"{prefix}.m_down{level}.{nb}.weight"], stride=2))
    t = skips[-1]
    for b in range(nb):
        t = res(t, f"{prefix}.m_body.{b}")
    for level, skip in zip((3, 2, 1), skips[:0:-1]):
        t = F.conv_transpose2d(t + skip, sd[f"{prefix}.m_up{level}.0.weight"], stride=2)
        for b in range(1, nb + 1):
            t = res(t, f"{prefix}.m_up{level}.{b}")
    return F.conv2d(t + skips[0], sd[f"{prefix}.m_tail.weight"], padding=1)[..., :h, :w]


def dense_blur_matrix(kernel, h, w):
    """Matrix of x -> ndimage.convolve(x, kernel, mode='constant') on h×w images."""
    cols = []
    for j in range(h * w):
        e = np.zeros(h * w)
        e[j] = 1
        cols.append(ndimage.convolve(e.reshape(h, w), kernel, mode="constant").ravel())
    return np.stack(cols, axis=1)


def apply(matrix, x):
    n, c, h, w = x.shape
    return torch.from_numpy((matrix @ x.reshape(n * c, h * w).T.numpy()).T.reshape(n, c, h, w).copy())


def _inputs(shape=(1, 3, 10, 11), kshape=(4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    k = torch.rand((1, 1) + kshape, generator=g, dtype=torch.float64) + 0.1
    return y, k / k.sum()


def _balance(model, y, k):
    """Rescale last layers so the data term, R and the step are all of order one (float64 refs)."""
    sd = model.state_dict()
    rms = lambda t: t.pow(2).mean().sqrt()  # noqa: E731
    with torch.no_grad():
        res = torch.randn_like(y) * 0.1
        model.h.main[-1].weight.mul_(rms(res) / rms(ref_block(sd, "h", res)))
        model.r.m_tail.weight.mul_(rms(res) / rms(ref_drunet(sd, "r", y, 2)))
        model.d_alpha.main[-1].weight.mul_(0.1 / rms(ref_block(sd, "d_alpha", res)))


# ---------------------------------------------------------------- layout
def test_default_layout_matches_official_list_and_param_count():
    net = NRL_GDN()
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 33_683_584
    assert len(sd) == 78
    if not os.path.isfile(TSV):
        pytest.skip("../shared/reference/nrlgdn_state_dict.tsv not available")
    official = {}
    for line in open(TSV):
        if line.strip() and not line.startswith("#"):
            key, shape = line.rstrip("\n").split("\t")
            official[key] = tuple(int(s) for s in shape.strip("[]").split(","))
    assert list(sd) == list(official)
    assert {key: tuple(v.shape) for key, v in sd.items()} == official


@pytest.mark.parametrize("name", ["NRL_GDN", "NRL_GDN_Y0", "rgdn_uniform"])
def test_registry_builds_variants_with_contract_attributes(name):
    net = build_model(name, num_steps=3, **SMALL)
    assert type(net).__name__ == name and net.num_steps == 3
    assert net.input_keys == ("y", "k") and net.default_loss == "nrlgdn_l1"
    assert net.stop_epsilon == (1e-6 if name == "rgdn_uniform" else 1e-3)


# ---------------------------------------------------------------- building blocks
def test_rgdn_block_fast_path_equals_plain_and_float64_reference():
    torch.manual_seed(0)
    block = RGDNBlock(3, 8)
    x = torch.rand(2, 3, 13, 9)
    sd64 = {f"x.{k}": v.double() for k, v in block.state_dict().items()}
    ref = ref_block(sd64, "x", x.double())
    fast = block(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(block.main(x).double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(16, 16), (13, 21)])
def test_drunet_matches_float64_reference_any_size(hw):
    torch.manual_seed(1)
    net = DRUNet(3, 3, nc=(4, 6, 8, 10), nb=2).double()
    x = torch.rand((2, 3) + hw, dtype=torch.float64)
    sd = {f"r.{k}": v for k, v in net.state_dict().items()}
    torch.testing.assert_close(net(x), ref_drunet(sd, "r", x, 2), atol=1e-12, rtol=0)


def test_drunet_in_nc_and_kair_single_block_naming():
    net = DRUNet(in_nc=4, out_nc=3, nc=(4, 6, 8, 10), nb=1)
    assert net(torch.rand(1, 4, 9, 10)).shape == (1, 3, 9, 10)
    assert "m_body.res.0.weight" in net.state_dict()
    with pytest.raises(ValueError, match="N×4×H×W"):
        net(torch.rand(1, 3, 8, 8))


# ---------------------------------------------------------------- one update step (float64)
@pytest.mark.parametrize("cls", [NRL_GDN, NRL_GDN_Y0, rgdn_uniform])
@pytest.mark.parametrize("kshape", [(4, 3), (5, 5)])
def test_first_step_matches_direct_float64_formula(cls, kshape):
    torch.manual_seed(2)
    y, k = _inputs(kshape=kshape)
    net = cls(num_steps=1, early_stop=False, **SMALL).double()
    _balance(net, y, k)
    sd = net.state_dict()
    A = dense_blur_matrix(k[0, 0].numpy(), *y.shape[-2:])
    At = A.T.copy()
    if cls is NRL_GDN:
        x0 = torch.from_numpy(np.stack([_np_eq22(y[0, c].numpy(), k[0, 0].numpy()) for c in range(3)])[None])
    else:
        x0 = y
    residual = apply(A, x0) - y
    if cls is rgdn_uniform:
        data = ref_block(sd, "h", apply(At, residual))
    else:
        data = apply(At, ref_block(sd, "h", residual))
    reg = ref_drunet(sd, "r", x0, 2)
    assert data.abs().max() > 0.02 and reg.abs().max() > 0.02  # both branches matter
    expected = x0 + ref_block(sd, "d_alpha", data + reg)
    torch.testing.assert_close(net(y, k), expected, atol=1e-10, rtol=0)
    # float32 fast path (channels_last, ConvTranspose as Conv) stays within 1e-5 after 3 steps
    net3 = cls(num_steps=3, early_stop=False, **SMALL).double()
    net3.load_state_dict(sd)
    ref3 = net3(y, k)
    net3.float()
    torch.testing.assert_close(net3(y.float(), k.float()).double(), ref3, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- early stopping
def expected_steps(errors, num_steps, threshold=1e-3):
    """The published rule, restated: e_t = ||Ax^t - y||/2, rel_t = (|e_t - e_{t-1}| + 1e-10)/(e_{t-1} + 1e-10),
    rel_0 = 0; after step t >= 5 stop if rel_{t-1} - rel_t < threshold."""
    prev_rel, prev = 0.0, errors[0]
    for t in range(1, num_steps):
        rel = (abs(errors[t] - prev) + 1e-10) / (prev + 1e-10)
        if t > 4 and prev_rel - rel < threshold:
            return t + 1
        prev, prev_rel = errors[t], rel
    return num_steps


def errors_from_rel(rels, e0=10.0):
    errors = [e0]
    for r in rels:
        errors.append(errors[-1] * (1 - r))
    return errors


@pytest.mark.parametrize("errors", [
    [0.5 ** t for t in range(12)],                                   # constant rel: stop after 6 steps
    errors_from_rel([0.5 - 0.01 * t for t in range(1, 12)]),        # rel keeps falling: never stops
    errors_from_rel([0.5 - 0.01 * min(t, 7) for t in range(1, 12)]),  # falls, then flat: stops at 9
    errors_from_rel([0.3 - 0.02 * t + (0.1 if t == 6 else 0) for t in range(1, 12)]),  # jump: stop at 7
])
def test_early_stop_counts_steps_like_published_rule(errors):
    num_steps = 10
    y, k = _inputs(shape=(1, 3, 12, 12), kshape=(3, 3))
    y = torch.zeros_like(y)
    base = torch.rand_like(y)
    norm = np.linalg.norm(np.stack([ndimage.convolve(base[0, c].numpy(), k[0, 0].numpy(), mode="constant")
                                    for c in range(3)]))
    base = base * (2.0 / norm)  # ||A base|| / 2 == 1
    net = NRL_GDN_Y0(num_steps=num_steps, record_steps=True, **SMALL).double()
    sequence = iter(errors)
    net.update = lambda x, y, k, t: base * next(sequence)
    out = net(y, k)
    want = expected_steps(errors, num_steps)
    assert net.last_num_steps == want == len(out["steps"])
    assert torch.equal(out["x"], out["steps"][-1])
    for flags in (dict(early_stop=False), dict(stop_epsilon=math.inf)):
        fixed = NRL_GDN_Y0(num_steps=num_steps, **flags, **SMALL).double()
        sequence = iter(errors)
        fixed.update = lambda x, y, k, t: base * next(sequence)
        fixed(y, k)
        assert fixed.last_num_steps == num_steps


def test_expected_steps_helper_cases():
    assert expected_steps([0.5 ** t for t in range(12)], 10) == 6
    assert expected_steps(errors_from_rel([0.5 - 0.01 * min(t, 7) for t in range(1, 12)]), 10) == 9


# ---------------------------------------------------------------- training behaviour
def test_grad_checkpointing_gives_identical_gradients_and_recomputes():
    y, k = _inputs(shape=(2, 3, 16, 18), kshape=(5, 5), seed=3)
    y, k = y.float(), k.float()
    grads, steps = [], []
    for ckpt in (False, True):
        torch.manual_seed(4)
        net = NRL_GDN(num_steps=7, grad_checkpointing=ckpt, **SMALL)
        calls = []
        original = net.update
        net.update = lambda *a: calls.append(1) or original(*a)
        net(y, k).abs().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        steps.append(net.last_num_steps)
        assert len(calls) == net.last_num_steps * (2 if ckpt else 1)
    assert steps[0] == steps[1]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-7, rtol=1e-5)


def test_compact_model_gradient_step_reduces_loss():
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(5)
    x = F.interpolate(torch.rand(2, 3, 10, 10, generator=g), size=(32, 32), mode="bilinear")
    k = torch.rand(2, 1, 7, 7, generator=g) ** 3
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    from utils.operators import conv
    y = conv(x, k) + 0.01 * torch.randn(x.shape, generator=g)
    net = NRL_GDN(num_steps=6, r_channels=(16, 32, 64, 128), r_blocks=1, hd_channels=16, grad_checkpointing=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = F.l1_loss(net(y, k), x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# ---------------------------------------------------------------- inputs
def test_forward_any_size_and_errors():
    net = rgdn_uniform(num_steps=2, **SMALL)
    y = torch.rand(1, 3, 9, 7)
    assert net(y, torch.ones(9, 7) / 63).shape == y.shape
    assert net(y, torch.ones(2, 4) / 8).shape == y.shape
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.rand(1, 1, 9, 7), torch.ones(3, 3) / 9)
    with pytest.raises(ValueError, match="larger than"):
        net(y, torch.ones(11, 3) / 33)
    with pytest.raises(ValueError, match="num_steps"):
        NRL_GDN(num_steps=0)


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_boundary_option_sets_the_data_term_operator(boundary):
    """At the true image of a noise-free circular blur, the circular data term vanishes (H has no bias), so
    one update is x + D(R(x)); the zero-padded operator sees a residual along the borders."""
    torch.manual_seed(0)
    net = build_model("NRL_GDN", num_steps=2, r_channels=(4, 6, 8, 10), r_blocks=1, hd_channels=4,
                      boundary=boundary).double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    k = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    k /= k.sum()
    y = conv_circular(x, k)
    with torch.no_grad():
        prior_only = x + net._cnn(net.d_alpha, net._cnn(net.r, x))
        gap = (net.update(x, y, k, 0) - prior_only).abs().max().item()
    assert (gap < 1e-12) == (boundary == "circular"), gap
    with pytest.raises(ValueError, match="boundary must be one of"):
        build_model("NRL_GDN", boundary="reflect")
