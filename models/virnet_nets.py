"""VIRNet sub-networks: the noise-variance net (SNet), the conditioned residual U-Net (RNet) and the
blur-kernel net (KNet) of Yue et al., "Deep Variational Network Toward Blind Image Restoration".

Attribute names and registration order follow the released checkpoints (`SNet.conv1`,
`SNet.mid_layer.{0,2,..}`, `RNet.down_path.i.body.j.sft1.mul_conv`, `KNet.body.i.body.3.body.0`, ...)
so those state dicts load strictly.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.config import DataError

EXTRA_MODES = ("null", "input", "down", "both")


def _conv3x3(in_chn: int, out_chn: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_chn, out_chn, kernel_size=3, stride=1, padding=1, bias=bias)


def _conv1x1(in_chn: int, out_chn: int) -> nn.Conv2d:
    return nn.Conv2d(in_chn, out_chn, kernel_size=1, stride=1, padding=0)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom and right so that H and W become multiples of `multiple`."""
    h, w = x.shape[-2:]
    bottom = -h % multiple
    right = -w % multiple
    if bottom == 0 and right == 0:
        return x
    if bottom >= h or right >= w:
        raise DataError(f"input of size {h}x{w} is too small to reflect-pad to a multiple of {multiple}")
    return F.pad(x, (0, right, 0, bottom), mode="reflect")


class SigmaNet(nn.Module):
    """Plain DnCNN-style CNN (no BatchNorm, LeakyReLU 0.25) predicting log σ² per pixel.

    `depth` counts every convolution; `global_pool=True` averages the output to one value per image
    (the SR model's spatially constant noise level).
    """

    def __init__(self, in_chn: int, out_chn: int, depth: int = 5, width: int = 64,
                 global_pool: bool = False):
        super().__init__()
        if depth < 2:
            raise ValueError(f"SigmaNet depth must be >= 2 (got {depth})")
        self.conv1 = _conv3x3(in_chn, width)
        self.relu = nn.LeakyReLU(0.25, inplace=True)
        layers = []
        for _ in range(depth - 2):
            layers += [_conv3x3(width, width), nn.LeakyReLU(0.25, inplace=True)]
        self.mid_layer = nn.Sequential(*layers)
        self.conv_last = _conv3x3(width, out_chn)
        self.global_avg = nn.AdaptiveAvgPool2d((1, 1)) if global_pool else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Published init: orthogonal weights with the LeakyReLU(0.25) gain, zero biases.
        gain = nn.init.calculate_gain("leaky_relu", 0.25)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight, gain=gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.conv_last(self.mid_layer(x))
        return self.global_avg(x)


class ModulationLayer(nn.Module):
    """SFT-style modulation: 1×1 convs map the conditioning maps to a sigmoid gain and a bias."""

    def __init__(self, feat_chn: int, cond_chn: int):
        super().__init__()
        hidden1, hidden2 = feat_chn // 8, feat_chn // 4
        self.conv1 = _conv1x1(cond_chn, hidden1)
        self.leaky1 = nn.LeakyReLU(0.2)
        self.conv2 = _conv1x1(hidden1, hidden2)
        self.leaky2 = nn.LeakyReLU(0.2)
        self.mul_conv = _conv1x1(hidden2, feat_chn)
        self.sig = nn.Sigmoid()
        self.add_conv = _conv1x1(hidden2, feat_chn)

    def forward(self, cond: torch.Tensor):
        hidden = self.leaky2(self.conv2(self.leaky1(self.conv1(cond))))
        return self.sig(self.mul_conv(hidden)), self.add_conv(hidden)


class CondResBlock(nn.Module):
    """Pre-activation residual block; with `cond_chn > 0` each activation input is modulated."""

    def __init__(self, width: int, cond_chn: int = 0):
        super().__init__()
        self.cond_chn = cond_chn
        if cond_chn > 0:
            self.sft1 = ModulationLayer(width, cond_chn)
            self.sft2 = ModulationLayer(width, cond_chn)
        self.lrelu1 = nn.LeakyReLU(0.2)
        self.conv1 = _conv3x3(width, width)
        self.lrelu2 = nn.LeakyReLU(0.2)
        self.conv2 = _conv3x3(width, width)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x
        if self.cond_chn > 0:
            gain, shift = self.sft1(cond)
            h = h * gain + shift
        h = self.conv1(self.lrelu1(h))
        if self.cond_chn > 0:
            gain, shift = self.sft2(cond)
            h = h * gain + shift
        h = self.conv2(self.lrelu2(h))
        return x + h


class DownLevel(nn.Module):
    """Residual blocks at one scale, then a stride-2 conv (Identity at the deepest level)."""

    def __init__(self, width: int, next_width: int, cond_chn: int, n_blocks: int, downsample: bool):
        super().__init__()
        self.body = nn.ModuleList([CondResBlock(width, cond_chn) for _ in range(n_blocks)])
        self.downsampler = (nn.Conv2d(width, next_width, kernel_size=3, stride=2, padding=1)
                            if downsample else nn.Identity())

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor]):
        for block in self.body:
            x = block(x, cond)
        return self.downsampler(x), x


class UpLevel(nn.Module):
    """Transposed-conv ×2 upsampling, additive skip, unconditioned residual blocks."""

    def __init__(self, width: int, out_width: int, n_blocks: int):
        super().__init__()
        self.upsampler = nn.ConvTranspose2d(width, out_width, kernel_size=2, stride=2, padding=0)
        self.body = nn.ModuleList([CondResBlock(out_width, 0) for _ in range(n_blocks)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsampler(x) + skip
        for block in self.body:
            x = block(x)
        return x


class AttResUNet(nn.Module):
    """Residual U-Net predicting the posterior mean of the clean image (global residual on the input).

    extra_mode: where the conditioning maps enter — "null" (nowhere), "input" (concatenated to the
    input), "down" (modulation in every down-path block), "both".
    """

    def __init__(self, in_chn: int = 3, extra_chn: int = 1, out_chn: int = 3, n_resblocks: int = 2,
                 n_feat: Sequence[int] = (64, 128, 192), extra_mode: str = "input"):
        super().__init__()
        if not isinstance(n_feat, (list, tuple)) or len(n_feat) < 1:
            raise ValueError(f"n_feat must be a non-empty list of widths (got {n_feat!r})")
        mode = str(extra_mode).lower()
        if mode not in EXTRA_MODES:
            raise ValueError(f"extra_mode must be one of {EXTRA_MODES} (got {extra_mode!r})")
        self.extra_mode = mode
        self.depth = len(n_feat)
        head_in = in_chn + extra_chn if mode in ("input", "both") else in_chn
        self.head = _conv3x3(head_in, n_feat[0])
        cond_down = extra_chn if mode in ("down", "both") else 0
        self.down_path = nn.ModuleList()
        for level, width in enumerate(n_feat):
            deepest = level == self.depth - 1
            next_width = width if deepest else n_feat[level + 1]
            self.down_path.append(DownLevel(width, next_width, cond_down, n_resblocks, not deepest))
        self.up_path = nn.ModuleList(
            UpLevel(n_feat[level + 1], n_feat[level], n_resblocks) for level in reversed(range(self.depth - 1)))
        self.tail = _conv3x3(n_feat[0], out_chn)

    def forward(self, x_in: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        h, w = x_in.shape[-2:]
        multiple = 2 ** (self.depth - 1)
        x = pad_to_multiple(x_in, multiple)
        if self.extra_mode != "null":
            if extra is None:
                raise ValueError(f"AttResUNet with extra_mode={self.extra_mode!r} needs conditioning maps")
            extra = pad_to_multiple(extra, multiple)
        x = self.head(torch.cat([x, extra], 1) if self.extra_mode in ("input", "both") else x)
        modulate = self.extra_mode in ("down", "both")
        skips = []
        for level, down in enumerate(self.down_path):
            cond = None
            if modulate:
                cond = extra if level == 0 else F.interpolate(extra, size=x.shape[-2:], mode="nearest")
            x, before = down(x, cond)
            if level < self.depth - 1:
                skips.append(before)
        for up in self.up_path:
            x = up(x, skips.pop())
        return self.tail(x)[..., :h, :w] + x_in


class ChannelAttention(nn.Module):
    def __init__(self, width: int, reduction: int = 16):
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.body = nn.Sequential(
            _conv1x1(width, width // reduction), nn.LeakyReLU(0.2),
            _conv1x1(width // reduction, width), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.body(self.avg(x))


class KernelResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(_conv3x3(width, width), nn.LeakyReLU(0.2, inplace=True),
                                  _conv3x3(width, width), ChannelAttention(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


KERNEL_LOG_MIN, KERNEL_LOG_MAX = math.log(1e-4), math.log(1e2)


class KernelNet(nn.Module):
    """Predicts the Gaussian blur kernel's (variance_1, variance_2, correlation) per image, N×3×1×1."""

    def __init__(self, in_chn: int = 3, out_chn: int = 3, width: int = 64, num_blocks: int = 8):
        super().__init__()
        self.head = nn.Conv2d(in_chn, width, kernel_size=9, stride=4, padding=4, bias=False)
        self.body = nn.Sequential(*[KernelResBlock(width) for _ in range(num_blocks)])
        self.tail = nn.Sequential(_conv3x3(width, out_chn), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tail(self.body(self.head(x)))
        variances = torch.exp(torch.clamp(out[:, :2], min=KERNEL_LOG_MIN, max=KERNEL_LOG_MAX))
        rho = torch.tanh(out[:, 2:3])
        return torch.cat([variances, rho], dim=1)
