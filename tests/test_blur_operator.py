"""The one blur operator, utils.operators.Blur: <A x, y> = <x, Aᵀ y> for every boundary and path that claims
an exact adjoint; DSDNet's published approximate adjoint stays within its documented bound."""
import pytest
import torch

from utils.operators import ADJOINTS, BOUNDARIES, PADDED_BOUNDARIES, Blur

KERNEL_SHAPES = [(5, 5), (4, 4), (7, 4), (4, 9), (1, 1)]   # odd/even, square/non-square
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _problem(kshape, dtype, seed=0, size=(2, 3, 23, 18)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(size, generator=g, dtype=torch.float64).to(dtype)
    k = torch.rand((size[0], 1) + kshape, generator=g, dtype=torch.float64)
    return x, y, (k / k.sum(dim=(-2, -1), keepdim=True)).to(dtype)


def _relative_gap(blur, x, y):
    lhs = (blur.A(x).double() * y.double()).sum()
    rhs = (x.double() * blur.A_adjoint(y).double()).sum()
    return float((lhs - rhs).abs() / max(1.0, float(lhs.abs())))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kshape", KERNEL_SHAPES)
@pytest.mark.parametrize("boundary,method", [(b, "auto") for b in BOUNDARIES + PADDED_BOUNDARIES]
                         + [(b, "direct") for b in BOUNDARIES])
def test_exact_adjoint(boundary, method, kshape, dtype):
    x, y, k = _problem(kshape, dtype)
    blur = Blur(k, boundary, method=method)
    if boundary == "valid":   # A maps x's grid onto the pixels whose kernel window lies inside it
        y = y[..., :x.shape[-2] - kshape[0] + 1, :x.shape[-1] - kshape[1] + 1]
    assert blur.A(x).shape == y.shape and blur.A(x).dtype == dtype
    assert blur.A_adjoint(y).shape == x.shape
    assert _relative_gap(blur, x, y) < TOLERANCE[dtype]


@pytest.mark.parametrize("boundary", ["zeros", "circular", "valid"])
def test_fft_path_is_used_and_adjoint_for_large_kernels(boundary):
    x, y, k = _problem((41, 41), torch.float64, size=(1, 3, 64, 64))
    fast, direct = Blur(k, boundary), Blur(k, boundary, method="direct")
    y = y[..., :fast.A(x).shape[-2], :fast.A(x).shape[-1]]      # 'valid': 24×24
    torch.testing.assert_close(fast.A(x), direct.A(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.A_adjoint(y), direct.A_adjoint(y), atol=1e-12, rtol=0)
    assert _relative_gap(fast, x, y) < 1e-12


@pytest.mark.parametrize("kshape", [(5, 5), (4, 4)])
def test_published_adjoint_is_the_documented_approximation(kshape):
    """DSDNet's published Kᵀ: zero-padded correlation (exact away from the borders for odd kernels; shifted by
    one pixel for even sizes). Interior of Kᵀ r agrees with the exact adjoint for odd kernels only."""
    x, y, k = _problem(kshape, torch.float64)
    published = Blur(k, "replicate", adjoint="published", method="direct")
    exact = Blur(k, "replicate", method="direct")
    scale = float(x.norm() * y.norm())   # Cauchy–Schwarz scale of both inner products
    gap = float(((published.A(x) * y).sum() - (x * published.A_adjoint(y)).sum()).abs()) / scale
    assert 1e-6 < gap < 0.05   # not an exact adjoint, but a close one (the border pixels differ)
    m = max(kshape)
    inner = (published.A_adjoint(y) - exact.A_adjoint(y))[..., m:-m, m:-m].abs().max()
    assert (inner < 1e-12) == (kshape[0] % 2 == 1)


def test_bad_names_are_one_line_errors():
    k = torch.ones(1, 1, 3, 3) / 9
    with pytest.raises(ValueError, match=r"Blur boundary must be one of .*got 'mirror'"):
        Blur(k, "mirror")
    with pytest.raises(ValueError, match=r"Blur adjoint must be one of .*got 'approx'"):
        Blur(k, adjoint="approx")
    assert ADJOINTS == ("exact", "published")
