"""Training-free baselines: registry, shapes, and agreement with direct skimage / numpy computations."""
import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.restoration import richardson_lucy, wiener

from models import build_model
from models.baselines import Eq22Init, RichardsonLucy, Wiener
from utils.operators import eq22_init


def _blurred(shape=(2, 3, 24, 20), kshape=(5, 5), noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = ndimage.uniform_filter(rng.random(shape), size=(1, 1, 5, 5), mode="wrap")
    k = rng.random((shape[0],) + kshape) ** 2 + 0.01
    k /= k.sum(axis=(-2, -1), keepdims=True)
    y = np.stack([[ndimage.convolve(x[n, c], k[n], mode="wrap") for c in range(shape[1])] for n in range(shape[0])])
    y = y + noise * rng.standard_normal(y.shape)
    return x, y, k


@pytest.mark.parametrize("name, cls", [("eq22_init", Eq22Init), ("wiener", Wiener), ("richardson_lucy", RichardsonLucy)])
def test_registry_and_no_trainable_parameters(name, cls):
    model = build_model(name)
    assert isinstance(model, cls) and model.input_keys == ("y", "k")
    assert sum(p.numel() for p in model.parameters()) == 0


def test_eq22_baseline_is_the_operator():
    _, y, k = _blurred()
    y32, k32 = torch.from_numpy(y).float(), torch.from_numpy(k).float()[:, None]
    torch.testing.assert_close(Eq22Init()(y32, k32), eq22_init(y32, k32), rtol=0, atol=0)


def test_wiener_matches_skimage_per_plane_and_recovers_noiseless_blur():
    x, y, k = _blurred()
    out = Wiener(balance=1e-3)(torch.from_numpy(y), torch.from_numpy(k)[:, None]).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(out[n, c], wiener(y[n, c], k[n], 1e-3, clip=False), atol=1e-12)
    tiny = Wiener(balance=1e-9)(torch.from_numpy(y), torch.from_numpy(k)[:, None]).numpy()
    assert np.abs(tiny - x).mean() < np.abs(y - x).mean() / 5


@pytest.mark.parametrize("kshape", [(5, 5), (4, 6)])
def test_richardson_lucy_matches_padded_skimage_and_improves(kshape):
    x, y, k = _blurred(kshape=kshape, noise=0.005, seed=1)
    out = RichardsonLucy(num_iter=10)(torch.from_numpy(y).float(), torch.from_numpy(k).float()[:, None])
    assert out.dtype == torch.float32 and out.shape == y.shape
    kh, kw = kshape
    # independent: odd-size kernel keeping the centre at (kh//2, kw//2), explicit edge padding
    k_odd = np.zeros((2, kh + 1 - kh % 2, kw + 1 - kw % 2))
    k_odd[:, :kh, :kw] = k
    plane = np.pad(np.clip(y[1, 2], 0, None), ((kh, kh), (kw, kw)), mode="edge")
    ref = richardson_lucy(plane, k_odd[1], num_iter=10, clip=False)[kh:-kh, kw:-kw]
    np.testing.assert_allclose(out[1, 2].numpy(), ref, atol=1e-5)
    err_out = np.abs(out.double().numpy() - x)[..., 6:-6, 6:-6].mean()
    assert err_out < np.abs(y - x)[..., 6:-6, 6:-6].mean()


def test_baselines_validate_inputs():
    y = torch.rand(1, 3, 8, 8)
    for model in (Eq22Init(), Wiener(), RichardsonLucy()):
        with pytest.raises(ValueError, match="larger than"):
            model(y, torch.ones(9, 9) / 81)
    with pytest.raises(ValueError, match="balance"):
        Wiener(balance=0)
    with pytest.raises(ValueError, match="padding"):
        RichardsonLucy(padding="zeros")


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_eq22_baseline_takes_the_boundary_model(boundary):
    y = torch.rand(1, 3, 30, 34, dtype=torch.float64)
    k = torch.rand(7, 5, dtype=torch.float64)
    k /= k.sum()
    out = build_model("eq22_init", boundary=boundary)(y, k)
    torch.testing.assert_close(out, eq22_init(y, k, boundary=boundary), atol=0, rtol=0)
    assert not torch.allclose(out, eq22_init(y, k, boundary={"zeros": "circular", "circular": "zeros"}[boundary]))
