"""Building blocks of DSDNet: discriminative shrinkage, hyper-parameter nets, the quadratic x-step
operators and the two learned "conjugate gradient" networks (CGUNet for DSDNet, KryNet for DSDNet+).

Attribute names follow the published checkpoints' state_dict layout (e.g. `p.0.m.conv1.weight`,
`i.0.d1.d.1.weight`, `i.u3.n.body.bias`), so official files load strictly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DifferenceOfMaxout(nn.Module):
    """Per-channel shrinkage max_j(a_j * f) − max_j(b_j * f): each channel gets `num_max` depthwise 3×3
    affine pieces per branch; output channel c takes the max over the pieces of input channel c."""

    def __init__(self, channels: int, num_max: int = 4, kernel_size: int = 3):
        super().__init__()
        self.num_max = num_max
        pieces = channels * num_max
        self.conv1 = nn.Conv2d(channels, pieces, kernel_size, padding=kernel_size // 2, groups=channels)
        self.conv2 = nn.Conv2d(channels, pieces, kernel_size, padding=kernel_size // 2, groups=channels)

    def _max_over_pieces(self, t: torch.Tensor) -> torch.Tensor:
        n, _, h, w = t.shape
        return t.view(n, -1, self.num_max, h, w).amax(dim=2)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self._max_over_pieces(self.conv1(f)) - self._max_over_pieces(self.conv2(f))


class FilterShrinkage(nn.Module):
    """Filter bank (7×7, no bias) followed by the shrinkage of (feature + scaled dual).

    Serves as the prior branch (input x, features F x) and the data branch (input the residual
    y − Kx, features G(y − Kx)). Returns (shrunk features, features); as in the published code the
    returned features are the ones after dropout (it drops in place there), which the duals then use.
    """

    def __init__(self, in_nc: int, nf: int, kernel_size: int = 7, num_max: int = 4, dropout_rate: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(in_nc, nf, kernel_size, padding=kernel_size // 2, bias=False)
        self.m = DifferenceOfMaxout(nf, num_max)
        self.dropout_rate = dropout_rate

    def forward(self, x: torch.Tensor, dual: torch.Tensor | None = None):
        features = F.dropout2d(self.conv(x), self.dropout_rate, self.training)
        shrunk = self.m(features if dual is None else features + dual)
        return shrunk, features


class HypNet(nn.Module):
    """Per-pixel weights in (0, 1) for the filter responses, from cat(x, ones) (the constant channel
    lets the zero-padded convolutions see the border)."""

    def __init__(self, in_nc: int, out_nc: int):
        super().__init__()
        mid = out_nc // 4
        self.head = nn.Sequential(nn.Conv2d(in_nc, out_nc, 3, padding=1), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(out_nc, mid, 1), nn.ReLU(), nn.Conv2d(mid, mid, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(mid, out_nc, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return torch.sigmoid(h + self.res(h))


def local_mean(x: torch.Tensor) -> torch.Tensor:
    """3×3 box mean that averages only the pixels inside the image."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class NLNet(nn.Module):
    """DSDNet's positive per-pixel weight of the prior term, from x and its 3×3 local mean."""

    def __init__(self, in_nc: int = 3, channels: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(2 * in_nc, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(channels, in_nc, 3, padding=1), nn.Softplus())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat((x, local_mean(x)), dim=1))


class NLNetV2(nn.Module):
    """DSDNet+'s lighter prior weight: local mean plus a small residual; no positivity constraint."""

    def __init__(self, in_nc: int = 3):
        super().__init__()
        mid = 2 * in_nc
        self.mlp = nn.Sequential(nn.Conv2d(in_nc, mid, 1), nn.Conv2d(mid, mid, 3, padding=1, groups=mid),
                                 nn.Conv2d(mid, in_nc, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = local_mean(x)
        return mean + self.mlp(mean)


class QuadraticOperators:
    """The x-subproblem min_x mn‖mp·Fx − a‖² + ‖md·GKx − b‖² in operator form (published maths):

    normal(x)     = mn·Fᵀ(mp²·Fx) + KᵀGᵀ(md²·GKx)
    encode(r)     = (mp·Fr, md·GKr)
    decode(a, b)  = mn·Fᵀ(mp·a) + KᵀGᵀ(md·b)
    with F, G the 7×7 filter banks (zero padding), Fᵀ, Gᵀ their exact adjoints and K, Kᵀ from `blur`.
    """

    def __init__(self, conv_prior: nn.Conv2d, conv_data: nn.Conv2d, blur, mp, md, mn):
        self.conv_prior, self.conv_data, self.blur = conv_prior, conv_data, blur
        self.mp, self.md, self.mn = mp, md, mn

    @staticmethod
    def _transpose(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(t, conv.weight, padding=conv.weight.shape[-1] // 2)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        data = self.conv_data(self.blur(x)).mul(torch.square(self.md))
        data = self.blur.adjoint(self._transpose(self.conv_data, data))
        prior = self._transpose(self.conv_prior, self.conv_prior(x).mul(torch.square(self.mp)))
        return self.mn * prior + data

    def encode(self, r: torch.Tensor):
        data = self.conv_data(self.blur(r))
        return self.conv_prior(r) * self.mp, data * self.md

    def decode(self, prior: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        data = self.blur.adjoint(self._transpose(self.conv_data, data * self.md))
        prior = self._transpose(self.conv_prior, prior * self.mp)
        return self.mn * prior + data

    def right_hand_side(self, y, v, z, ui, uj) -> torch.Tensor:
        """decode(v − ui, Gy − z + uj): the normal-equation right-hand side of the ADMM x-step."""
        gy = self.conv_data(y) - z
        if uj is not None:
            gy = gy + uj
        return self.decode(v if ui is None else v - ui, gy)


class PoolDown(nn.Module):
    """CGUNet encoder level: 3×3/2 max-pool, two 3×3 conv + ReLU."""

    def __init__(self, in_nc: int, out_nc: int):
        super().__init__()
        self.d = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(in_nc, out_nc, 3, padding=1),
                               nn.ReLU(), nn.Conv2d(out_nc, out_nc, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.d(x)


class TransposeUp(nn.Module):
    """CGUNet decoder level: stride-2 transposed conv to the skip's size, concat, two conv + ReLU."""

    def __init__(self, in_nc: int, out_nc: int):
        super().__init__()
        self.u = nn.ConvTranspose2d(in_nc, out_nc, 3, stride=2, padding=1)
        self.m = nn.Sequential(nn.Conv2d(in_nc, out_nc, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(out_nc, out_nc, 3, padding=1), nn.ReLU())

    def forward(self, x, skip):
        return self.m(torch.cat((self.u(x, output_size=skip.shape), skip), dim=1))


class _ResidualUNetStep(nn.Module):
    """Shared path of the x-step networks: r = b − A x, a 3-level U-Net (d1..d3, bot, u3..u0, built by the
    subclass) on the encoded residual, decoded into an image update. Returns (update, r)."""

    def residual_update(self, ops, x, y, v, z, ui=None, uj=None):
        residual = ops.right_hand_side(y, v, z, ui, uj) - ops.normal(x)
        e0 = torch.cat(ops.encode(residual), dim=1)
        e1 = self.d1(e0)
        e2 = self.d2(e1)
        e3 = self.d3(e2)
        direction = self.u0(self.u1(self.u2(self.u3(self.bot(e3), e3), e2), e1), e0)
        return ops.decode(direction[:, :self.nf_p], direction[:, self.nf_p:]), residual


class CGUNet(_ResidualUNetStep):
    """One learned x-step: residual r = b − A x, a U-Net on the encoded residual, decoded update.

    It registers the stage's filter banks again as `conv_prior` / `conv_data` (shared modules), which
    is why published DSDNet state_dicts hold those weights under two keys.
    """

    def __init__(self, conv_prior: nn.Conv2d, conv_data: nn.Conv2d, nf_p: int, nf_d: int):
        super().__init__()
        t = nf_p + nf_d
        self.nf_p = nf_p
        self.conv_prior = conv_prior
        self.conv_data = conv_data
        self.d1, self.d2, self.d3 = PoolDown(t, 2 * t), PoolDown(2 * t, 4 * t), PoolDown(4 * t, 8 * t)
        self.bot = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(8 * t, 16 * t, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(16 * t, 16 * t, 3, padding=1), nn.ReLU())
        self.u3, self.u2 = TransposeUp(16 * t, 8 * t), TransposeUp(8 * t, 4 * t)
        self.u1, self.u0 = TransposeUp(4 * t, 2 * t), TransposeUp(2 * t, t)

    def forward(self, x, y, v, z, blur, mp, md, mn, ui=None, uj=None):
        ops = QuadraticOperators(self.conv_prior, self.conv_data, blur, mp, md, mn)
        update, _ = self.residual_update(ops, x, y, v, z, ui, uj)
        return x + update


class _LayerNormBody(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every pixel (biased variance, eps 1e-5), Restormer 'WithBias'."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.body = _LayerNormBody(channels)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # float32 statistics, as autocast does for layer_norm: squares overflow float16
        pixels = x.flatten(2).transpose(1, 2)  # N×HW×C view: same reduction order as the published code
        mean = pixels.mean(-1, keepdim=True)
        var = pixels.var(-1, keepdim=True, unbiased=False)
        out = (pixels - mean) / torch.sqrt(var + self.eps) * self.body.weight + self.body.bias
        return out.transpose(1, 2).reshape(n, c, h, w)


class GatedFFN(nn.Module):
    """1×1 expand to 2h, depthwise 3×3, GELU gate, simplified channel attention, 1×1 project back."""

    def __init__(self, dim: int, expansion: float = 2.66):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, hidden, 1))
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x):
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        x = F.gelu(gate) * value
        return self.project_out(x * self.sca(x))


class StrideDown(nn.Module):
    """KryNet encoder level: stride-2 3×3 conv, then x + FFN(LN(x))."""

    def __init__(self, in_nc: int, out_nc: int):
        super().__init__()
        self.d = nn.Conv2d(in_nc, out_nc, 3, stride=2, padding=1)
        self.m = GatedFFN(out_nc)
        self.n = ChannelLayerNorm(out_nc)

    def forward(self, x):
        x = self.d(x)
        return x + self.m(self.n(x))


class ShuffleUp(nn.Module):
    """KryNet decoder level: conv + PixelShuffle(2), crop to the skip, concat, 1×1 conv, x + FFN(LN(x))."""

    def __init__(self, in_nc: int, out_nc: int):
        super().__init__()
        self.u = nn.Sequential(nn.Conv2d(in_nc, 2 * in_nc, 3, padding=1), nn.PixelShuffle(2))
        self.r = nn.Conv2d(in_nc, out_nc, 1)
        self.m = GatedFFN(out_nc)
        self.n = ChannelLayerNorm(out_nc)

    def forward(self, x, skip):
        x = self.u(x)[..., :skip.shape[-2], :skip.shape[-1]]
        x = self.r(torch.cat([x, skip], dim=1))
        return x + self.m(self.n(x))


class KryNet(_ResidualUNetStep):
    """DSDNet+'s x-step, one instance shared by all stages (the stage's filter banks are arguments):
    x + decode(UNet(encode(r))) + gamma·r with r = b − A x."""

    def __init__(self, nf_p: int, nf_d: int):
        super().__init__()
        t = nf_p + nf_d
        self.nf_p = nf_p
        self.d1, self.d2, self.d3 = StrideDown(t, 2 * t), StrideDown(2 * t, 4 * t), StrideDown(4 * t, 8 * t)
        self.bot = StrideDown(8 * t, 16 * t)
        self.u3, self.u2 = ShuffleUp(16 * t, 8 * t), ShuffleUp(8 * t, 4 * t)
        self.u1, self.u0 = ShuffleUp(4 * t, 2 * t), ShuffleUp(2 * t, t)

    def forward(self, conv_prior, conv_data, gamma, x, y, v, z, blur, mp, md, mn, ui=None, uj=None):
        ops = QuadraticOperators(conv_prior, conv_data, blur, mp, md, mn)
        update, residual = self.residual_update(ops, x, y, v, z, ui, uj)
        return x + update + gamma * residual
