"""Noise models and σ-maps (data/noise.py, data/sigma_maps.py): statistics, maps, specs, determinism."""
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scipy import stats

from data import sigma_maps as SM
from data.noise import build_noise, gaussian


def _flat(c=1, h=128, w=128, value=0.5):
    return torch.full((c, h, w), value, dtype=torch.float32)


def test_box_muller_sampler_is_standard_normal_and_seeded():
    z = gaussian((5, 200, 201), np.random.default_rng(0)).double().numpy().ravel()  # odd count: a half pair
    assert z.shape == (201000,)
    # moments of 201k N(0, 1) draws: standard errors 0.0022 (mean), 0.0016 (std), 0.0055 (skew), 0.011 (kurt)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.008
    assert abs(stats.skew(z)) < 0.025 and abs(stats.kurtosis(z)) < 0.05
    assert stats.kstest(z, "norm").pvalue > 1e-3 and np.abs(z).max() < 5.7
    pairs = gaussian((2, 100000), np.random.default_rng(1)).double().numpy()
    assert abs(np.corrcoef(pairs[0], pairs[1])[0, 1]) < 0.015  # cos and sin of one radius: uncorrelated
    assert abs(np.corrcoef(np.abs(pairs[0]), np.abs(pairs[1]))[0, 1]) < 0.015  # ... and independent
    scaled = gaussian((3, 64, 64), np.random.default_rng(2), torch.float64, scale=0.25)
    assert scaled.dtype == torch.float64 and abs(float(scaled.std()) / 0.25 - 1) < 0.03
    a = gaussian((4, 5), np.random.default_rng(7))
    assert a.dtype == torch.float32 and torch.equal(a, gaussian((4, 5), np.random.default_rng(7)))
    assert not torch.equal(a, gaussian((4, 5), np.random.default_rng(8)))


@pytest.mark.parametrize("spec", [{"type": "uniform", "sigma": 10}, {"type": "regions", "layout": "four"},
                                  {"type": "sigma_map", "map": "peaks"},
                                  {"type": "mixture", "components": [{"weight": 1, "noise": {"type": "regions"}}]}],
                         ids=lambda s: s["type"])
def test_gaussian_models_return_the_sample_they_add(spec):
    x = torch.rand(3, 32, 30, generator=torch.Generator().manual_seed(0))
    y, s, n = build_noise(spec).add(x, np.random.default_rng(5))
    assert torch.equal(y, x + n)
    z = n / s  # the sample divided by its σ-map is standard normal
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
    y2, s2 = build_noise(spec)(x, np.random.default_rng(5))  # __call__ gives the same draw
    assert torch.equal(y2, y) and torch.equal(s2, s)


def test_non_additive_models_report_noisy_minus_clean_and_poisson_before_clipping():
    x = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1))
    y, _, n = build_noise({"type": "impulse", "fraction": 0.2}).add(x, np.random.default_rng(0))
    assert torch.equal(n, y - x)
    y, _, n = build_noise({"type": "poisson_gaussian", "peak": 4, "sigma": 30}).add(x, np.random.default_rng(0))
    assert float(y.min()) >= 0 and float(y.max()) <= 1 and float((x + n).min()) < 0  # clipped y, unclipped n
    inside = ((x + n) > 0) & ((x + n) < 1)
    assert torch.allclose((x + n)[inside], y[inside], atol=1e-6)
    y, s, n = build_noise(None).add(x, np.random.default_rng(0))
    assert torch.equal(y, x) and not torch.any(n) and not torch.any(s)


def test_awgn_fixed_sigma_statistics():
    x = _flat(3, 128, 128)
    y, s = build_noise({"type": "uniform", "sigma": 25})(x, np.random.default_rng(0))
    assert abs(float((y - x).std()) / (25 / 255) - 1) < 0.01  # 49k samples: 1σ of the estimate is 0.3 %
    assert abs(float((y - x).mean())) < 3 * (25 / 255) / math.sqrt(x.numel())
    assert s.shape == x.shape and torch.allclose(s, torch.tensor(25 / 255))


def test_awgn_sigma_range_is_uniform_per_sample():
    noise = build_noise({"type": "uniform", "sigma_range": [0, 12.75]})
    rng = np.random.default_rng(0)
    sig = np.array([float(noise(_flat(1, 4, 4), rng)[1][0, 0, 0]) for i in range(1000)]) * 255
    assert sig.min() >= 0 and sig.max() <= 12.75
    assert abs(sig.mean() - 6.375) < 3.5 * 12.75 / math.sqrt(12 * 1000)
    assert abs(np.mean(sig < 12.75 / 2) - 0.5) < 0.1


@pytest.mark.parametrize("layout,pattern", [("one", [0, 0, 0, 0]), ("four", [0, 1, 2, 3]),
                                            ("top_bottom", [0, 0, 1, 1]), ("left_right", [0, 1, 0, 1])])
def test_region_noise_layouts(layout, pattern):
    x = _flat(2, 65, 67)  # odd sizes: split at H//2 = 32 and W//2 = 33
    y, s = build_noise({"type": "regions", "layout": layout, "sigma_range": [5, 50]})(x, np.random.default_rng(1))
    quads = [(slice(0, 32), slice(0, 33)), (slice(0, 32), slice(33, 67)),
             (slice(32, 65), slice(0, 33)), (slice(32, 65), slice(33, 67))]
    values = []
    for rows, cols in quads:
        block = s[:, rows, cols]
        assert torch.all(block == block[0, 0, 0])
        values.append(float(block[0, 0, 0]))
        emp = float((y - x)[:, rows, cols].std())
        assert abs(emp / values[-1] - 1) < 0.1  # >= 2k samples per quadrant
    assert all(5 / 255 <= v <= 50 / 255 for v in values)
    for i in range(4):
        for j in range(4):
            assert (values[i] == values[j]) == (pattern[i] == pattern[j])


def test_sigma_map_noise_follows_the_map():
    x = _flat(3, 256, 256)
    y, s = build_noise({"type": "sigma_map", "map": "peaks", "range": [5, 50]})(x, np.random.default_rng(2))
    assert torch.equal(s[0], s[1]) and torch.equal(s[0], s[2])
    assert abs(float(s.min()) * 255 - 5) < 1e-4 and abs(float(s.max()) * 255 - 50) < 1e-4
    z = ((y - x) / s).flatten()
    assert abs(float(z.std()) - 1) < 0.01
    # per σ-decile, the empirical std matches the map
    sig, err = s.flatten().numpy(), (y - x).flatten().numpy()
    order = np.argsort(sig)
    for chunk in np.array_split(order, 10):
        assert abs(err[chunk].std() / np.sqrt(np.mean(sig[chunk] ** 2)) - 1) < 0.03


def test_sigma_map_shapes_and_orientation():
    p = SM.peaks(3)
    assert abs(p[1, 1] - (3 - 1 / 3) * math.exp(-1)) < 1e-12  # MATLAB peaks(0, 0)
    z = SM.sincos(256)
    assert abs(z[0, 0] - (math.sin(1) + math.cos(1))) < 1e-12
    assert abs(z[0, -1] - (math.sin(10) + math.cos(1))) < 1e-12  # X runs along columns
    assert abs(z[-1, 0] - (math.sin(1) + math.cos(20))) < 1e-12  # Y runs along rows
    for kind in SM.MAP_KINDS:
        m = SM.sigma_map(kind, (3, 100, 140), np.random.default_rng(0), 0.1, 0.3)
        assert m.shape == (100, 140) and m.min() >= 0.1 - 1e-12 and m.max() <= 0.3 + 1e-12
    with pytest.raises(ValueError, match="'ridge'.*peaks"):
        SM.sigma_map("ridge", (8, 8), None, 0, 1)


def test_gauss_mix_equals_published_formula():
    h = w = 64
    ours = SM.gauss_mix(h, w, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # same draw order: column centres, row centres, scales
    cw = (rng.uniform(0, 32, (2, 2)) + np.arange(2)[None] * 32).reshape(1, 1, 4)
    ch = (rng.uniform(0, 32, (2, 2)) + np.arange(2)[:, None] * 32).reshape(1, 1, 4)
    sc = rng.uniform(16, 32, (1, 1, 4))
    xx, yy = np.meshgrid(np.arange(w), np.arange(h))
    zz = 1 / (2 * np.pi * sc ** 2) * np.exp((-(xx[..., None] - cw) ** 2 - (yy[..., None] - ch) ** 2) / (2 * sc ** 2))
    assert np.allclose(ours, zz.sum(2) / 4, rtol=1e-12, atol=0)


def test_bump_maps_span_at_least_the_gap():
    for seed in range(20):
        m = SM.bumps(48, 40, np.random.default_rng(seed), 0.0, 80 / 255, gap=5 / 255)
        assert m.min() >= 0 and m.max() <= 80 / 255 + 1e-12 and m.max() - m.min() >= 5 / 255 - 1e-12


def test_poisson_gaussian_statistics():
    x = _flat(1, 200, 200, 0.5)
    y, s = build_noise({"type": "poisson_gaussian", "peak": 128, "sigma": 0})(x, np.random.default_rng(3))
    assert torch.allclose(y * 128, torch.round(y * 128), atol=1e-4)  # Poisson counts / χ
    assert abs(float(y.mean()) - 0.5) < 4 * math.sqrt(0.5 / 128 / 40000)
    assert abs(float(y.var()) / (0.5 / 128) - 1) < 0.03
    assert torch.allclose(s, torch.tensor(math.sqrt(0.5 / 128)))
    y, s = build_noise({"type": "poisson_gaussian", "peak": 64, "sigma": 10})(_flat(1, 200, 200, 0.98),
                                                                             np.random.default_rng(4))
    assert float(y.max()) <= 1.0 and float(y.min()) >= 0.0  # clipped
    assert torch.allclose(s, torch.tensor(math.sqrt(0.98 / 64 + (10 / 255) ** 2)))


@pytest.mark.parametrize("kind", ["random_valued", "salt_pepper"])
def test_impulse_fraction_and_values(kind):
    x = _flat(3, 200, 200, 0.3)
    y, s = build_noise({"type": "impulse", "fraction": 0.1, "kind": kind})(x, np.random.default_rng(5))
    hit = (y != x)
    assert torch.equal(hit[0], hit[1]) and torch.equal(hit[0], hit[2])  # one mask for all channels
    assert abs(float(hit[0].float().mean()) - 0.1) < 0.006  # 40k pixels: 1σ = 0.0015
    if kind == "salt_pepper":
        assert abs(float((y == 0).float().mean()) - 0.05) < 0.005 and abs(float((y == 1).float().mean()) - 0.05) < 0.005
        expected = 0.05 * (0.3 ** 2 + 0.7 ** 2)
    else:
        values = y[hit]
        assert abs(float(values.mean()) - 0.5) < 0.01 and float(values.min()) >= 0 and float(values.max()) <= 1
        expected = 0.1 * ((0.3 - 0.5) ** 2 + 1 / 12)
    assert abs(float(((y - x) ** 2).mean()) / expected - 1) < 0.05
    assert torch.allclose(s, torch.tensor(math.sqrt(expected)), rtol=1e-5)


def test_jpeg_round_trip_matches_pillow():
    rng = np.random.default_rng(6)
    u8 = (rng.random((32, 40, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(u8).permute(2, 0, 1).float() / 255
    y, s = build_noise({"type": "jpeg", "quality": 30})(x, rng)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=30)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    assert torch.equal(y, torch.from_numpy(ref).permute(2, 0, 1))
    assert abs(float(s[0, 0, 0]) - float(((y - x) ** 2).mean().sqrt())) < 1e-7
    err = {q: float((build_noise({"type": "jpeg", "quality": q})(x[:1], rng)[0] - x[:1]).abs().mean()) for q in (10, 95)}
    assert err[95] < err[10]


def test_mixture_weights():
    noise = build_noise({"type": "mixture", "components": [
        {"weight": 2, "noise": {"type": "regions", "layout": "one", "sigma_range": [1, 1]}},
        {"weight": 1, "noise": {"type": "uniform", "sigma": 100}}]})
    picks = [float(noise(_flat(1, 2, 2), np.random.default_rng(i))[1][0, 0, 0]) < 0.1 for i in range(600)]
    assert abs(np.mean(picks) - 2 / 3) < 0.06
    assert "2xregions(one" in repr(noise) and "1xawgn(sigma=100)" in repr(noise)


SPECS = [{"type": "uniform", "sigma": 2.55}, {"type": "regions", "layout": "four"},
         {"type": "sigma_map", "map": "gauss_mix"}, {"type": "sigma_map", "map": "bumps", "range": [0, 80]},
         {"type": "poisson_gaussian", "peak": 128, "sigma": 2}, {"type": "impulse", "fraction": [0.01, 0.1]},
         {"type": "jpeg", "quality": [20, 90]}]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["type"] + s.get("map", ""))
def test_same_seed_same_bytes(spec):
    x = torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(0))
    a, sa = build_noise(spec)(x, np.random.default_rng(42))
    b, sb = build_noise(spec)(x, np.random.default_rng(42))
    c, _ = build_noise(spec)(x, np.random.default_rng(43))
    assert a.numpy().tobytes() == b.numpy().tobytes() and torch.equal(sa, sb)
    assert not torch.equal(a, c) and a.shape == x.shape and a.dtype == x.dtype and sa.shape == x.shape


def test_spec_errors_are_one_line_and_name_the_key():
    cases = [({"type": "gaussian"}, KeyError, r"noise\.type: unknown 'gaussian'.*'uniform'"),
             ({"type": "uniform", "sigma": 1, "seed": 3}, KeyError, r"unknown key\(s\) \['seed'\].*'uniform'"),
             ({"type": "regions", "layout": "three"}, ValueError, r"'layout' is 'three'.*'top_bottom'"),
             ({"type": "sigma_map", "map": "ridge"}, ValueError, r"'map' is 'ridge'.*'gauss_mix'"),
             ({"type": "uniform", "sigma": 1, "sigma_range": [0, 2]}, ValueError, "exactly one of"),
             ({"type": "impulse", "kind": "speckle"}, ValueError, r"'kind' is 'speckle'.*'salt_pepper'"),
             ({"type": "jpeg", "quality": 0}, ValueError, r"'quality' must be 1\.\.100"),
             ({"type": "mixture", "components": [{"weight": 1}]}, KeyError, r"components\[0\].*'noise'")]
    for spec, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            build_noise(spec)
        assert "\n" not in str(info.value)
