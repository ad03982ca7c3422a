"""DRUNet (Zhang et al., "Plug-and-Play Image Restoration with Deep Denoiser Prior", 2021).

Module names follow the KAIR/DPIR `UNetRes` layout (m_head, m_down1..3, m_body, m_up3..1, m_tail, ResBlocks
with a `res` Sequential of conv-ReLU-conv) so that DPIR/KAIR/deepinv and NRL-GDN checkpoints load key for key.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))), 3×3, no normalisation."""

    def __init__(self, channels: int, bias: bool = False):
        super().__init__()
        self.res = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=bias),
        )

    def forward(self, x):
        return x + self.res(x)


def _sequential(*modules: nn.Module) -> nn.Module:
    # KAIR's `sequential` returns a lone module unwrapped; mirroring it keeps key names (e.g. m_body with
    # nb=1 is `m_body.res.0`, not `m_body.0.res.0`) identical to checkpoints made with KAIR code.
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


class DRUNet(nn.Module):
    """U-Net with residual blocks: 4 scales (`nc` channels), `nb` ResBlocks per scale, 2×2 stride-2 conv
    down, 2×2 stride-2 transposed conv up, additive skips, no bias.

    Any H×W: the input is replicate-padded at the bottom/right to a multiple of 8 and the output cropped
    back. `in_nc` may exceed `out_nc` (e.g. an extra noise-level map channel for the DPIR denoiser).
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nc: Sequence[int] = (64, 128, 256, 512), nb: int = 4,
                 bias: bool = False):
        super().__init__()
        nc = tuple(int(c) for c in nc)
        if len(nc) != 4 or min(nc) < 1:
            raise ValueError(f"DRUNet nc must list 4 positive channel counts, got {nc}")
        if nb < 1:
            raise ValueError(f"DRUNet nb (ResBlocks per scale) must be >= 1, got {nb}")
        self.in_nc, self.out_nc, self.nb = in_nc, out_nc, int(nb)

        def blocks(c):
            return [ResBlock(c, bias) for _ in range(nb)]

        self.m_head = nn.Conv2d(in_nc, nc[0], 3, 1, 1, bias=bias)
        self.m_down1 = _sequential(*blocks(nc[0]), nn.Conv2d(nc[0], nc[1], 2, 2, 0, bias=bias))
        self.m_down2 = _sequential(*blocks(nc[1]), nn.Conv2d(nc[1], nc[2], 2, 2, 0, bias=bias))
        self.m_down3 = _sequential(*blocks(nc[2]), nn.Conv2d(nc[2], nc[3], 2, 2, 0, bias=bias))
        self.m_body = _sequential(*blocks(nc[3]))
        self.m_up3 = _sequential(nn.ConvTranspose2d(nc[3], nc[2], 2, 2, 0, bias=bias), *blocks(nc[2]))
        self.m_up2 = _sequential(nn.ConvTranspose2d(nc[2], nc[1], 2, 2, 0, bias=bias), *blocks(nc[1]))
        self.m_up1 = _sequential(nn.ConvTranspose2d(nc[1], nc[0], 2, 2, 0, bias=bias), *blocks(nc[0]))
        self.m_tail = nn.Conv2d(nc[0], out_nc, 3, 1, 1, bias=bias)

    def receptive_radius(self) -> int:
        """Pixels an output depends on at most, on each side: 2·nb 3×3 convs per scale on the way down and
        up (scales 1, 2, 4) and at the bottom (8), the 2×2 resampling convs and the head and tail convs."""
        return 44 * self.nb + 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_nc:
            raise ValueError(f"DRUNet expects N×{self.in_nc}×H×W input, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pad_bottom, pad_right = -h % 8, -w % 8
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")
        x1 = self.m_head(x)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        out = self.m_body(x4)
        out = self.m_up3(out + x4)
        out = self.m_up2(out + x3)
        out = self.m_up1(out + x2)
        out = self.m_tail(out + x1)
        return out[..., :h, :w]
