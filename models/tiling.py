"""Tiled inference: restore a large image tile by tile in bounded memory, blended without seams.

    from models import tiled
    x = tiled(net, tile=512)(y, k)        # same inputs and result type as net(y, k)

Tiles of `tile`×`tile` pixels step by `tile − overlap` (multiples of 8). Where a tile ends inside the image
the model sees a cut it takes for an image border, so a tile's weight is 0 over the outer 3/8 of the
overlap (context only), rises as sin² over the middle quarter and is 1 beyond; neighbouring weights sum to
one and the merged image is Σ wᵢ·outᵢ / Σ wᵢ. At the image's own borders a tile has weight 1 up to the
edge and sees what the whole-image run sees there: the real border, unpadded, which the model pads as it
always does. A periodic model run whole on each tile (Wiener, Eq. (22) or DSDNet with a circular
boundary; see below) instead gets the image padded periodically by 5/8 of the overlap first, so its
border tiles see the wrapped-around content its FFTs assume; the padding is cropped off.

Two ways to tile, and the exactness each gives:
- Unrolled models exposing `checked_inputs`, `initial_estimate`, `unroll(x0, y, k)`, `tile_context(block)`
  and `tiled_cnns(run_cnn)` (the NRL-GDN family and every variant of it: the same loop as their forward,
  whose `update` applies CNN blocks through `self.cnn`) keep everything global on the whole
  image — x⁰ (Eq. (22), one channel at a time), the blur A and its adjoint with the model's own boundary,
  the early-stop rule — and run only the CNN blocks (H, D, DRUNet) tile by tile, each with the overlap its
  receptive field needs.
  Tiles start on multiples of 8 (DRUNet's grid) and the tiles at the image border end there, so the
  CNNs pad the border exactly as in the whole-image run. H and D are then exact (their 14-pixel receptive
  radius lies inside the discarded part); DRUNet's theoretical reach (148 px compact, 192 paper-size) is
  wider than its overlap, so the result differs by up to a few 1e-5 (compact checkpoint: 2.7e-6 on Set12
  crops, 2.9e-5 on a synthetic photo; tests/test_tiling.py), far below one 8-bit level.
- Any other model runs whole on each tile (`overlap` from the kernel size, see `default_overlap`). Its
  global parts (FFT initialisers, Wiener) then see the tile, not the image: an approximation whose error
  shrinks as the overlap grows.
An image no larger than one tile is restored whole.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
import torch.nn as nn

from models.contract import hook
from models.precision import precision_context
from models.wrappers import ModelWrapper, innermost

PERIODIC = ("circular", "wrap")
STEPWISE = ("checked_inputs", "initial_estimate", "unroll", "tile_context", "tiled_cnns")
ALIGN = 8       # tile starts and sizes: DRUNet's three ×2 downsamplings see the same pixel grid


def is_periodic(net: nn.Module) -> bool:
    """Whether a model takes its input as periodic (its `boundary`, `padding_mode` or `padding` option)."""
    for attr in ("boundary", "padding_mode", "padding"):
        value = getattr(net, attr, None)
        if isinstance(value, str):
            return value in PERIODIC
    return False


def is_stepwise(net: nn.Module) -> bool:
    """Whether a model's CNN blocks can be tiled inside its unrolled steps (see the module docstring)."""
    return all(callable(getattr(innermost(net), name, None)) for name in STEPWISE)


def _round_up(n: float) -> int:
    return ALIGN * max(1, math.ceil(n / ALIGN))


def block_overlap(context: int) -> int:
    """Overlap whose discarded 3/8 covers `context` pixels (a CNN block's receptive radius)."""
    return _round_up(8 * context / 3)


def default_overlap(kernel_size: int) -> int:
    """Overlap of a model run whole on each tile: 2 kernel widths plus 32 pixels of CNN context."""
    return _round_up(2 * kernel_size + 32)


def _starts(n: int, length: int, stride: int) -> List[int]:
    """Tile starts (multiples of ALIGN) along an axis of n pixels; the last tile ends at n."""
    if n <= length:
        return [0]
    last = ALIGN * math.ceil((n - length) / ALIGN)
    return list(range(0, last, stride)) + [last]


def _drop_rise(overlap: int) -> Tuple[int, int]:
    """Pixels of weight 0 (3/8 of the overlap) and of rising weight (1/4) at a tile's cut end."""
    rise = max(overlap // 4, 1)
    return max((overlap - rise) // 2, 0), rise


def _weights(overlap: int, length: int, cut_before: bool, cut_after: bool) -> torch.Tensor:
    """1-D tile weight: 0 over the outer 3/8 of the overlap at each cut end, then sin² up to 1 over a quarter."""
    drop, rise = _drop_rise(overlap)
    ramp = torch.sin(math.pi / 2 * (torch.arange(rise, dtype=torch.float64) + 0.5) / rise) ** 2
    w = torch.ones(length, dtype=torch.float64)
    if cut_before:
        w[:drop] = 0
        w[drop:drop + rise] = ramp
    if cut_after:
        end = length - drop
        w[end:] = 0
        w[end - rise:end] = torch.minimum(w[end - rise:end], ramp.flip(0))
    return w


def _tiles(h: int, w: int, tile: int, overlap: int) -> Iterator[Tuple[slice, slice, torch.Tensor]]:
    """(rows, cols, 2-D weight) of every tile of an h×w image."""
    stride = max(ALIGN, (tile - overlap) // ALIGN * ALIGN)
    for top in _starts(h, tile, stride):
        bottom = min(top + tile, h)
        wy = _weights(overlap, bottom - top, top > 0, bottom < h)
        for left in _starts(w, tile, stride):
            right = min(left + tile, w)
            wx = _weights(overlap, right - left, left > 0, right < w)
            yield slice(top, bottom), slice(left, right), (wy[:, None] * wx[None, :]).float()


def _wrap_pad(t: torch.Tensor, pad: int) -> torch.Tensor:
    """t padded periodically by `pad` on every side (any pad, also wider than the image)."""
    for dim in (-2, -1):
        n = t.shape[dim]
        t = t.index_select(dim, torch.arange(-pad, n + pad, device=t.device) % n)
    return t


def _is_image(value, hw) -> bool:
    return torch.is_tensor(value) and value.dim() >= 2 and tuple(value.shape[-2:]) == tuple(hw)


class _Canvas:
    """Σ wᵢ·outᵢ over the tiles, per output entry; lists (per-stage records) entry by entry, a tile whose
    list is shorter contributing its last entry to the later ones."""

    def __init__(self, size: Tuple[int, int], owner: str):
        self.size, self.owner = tuple(size), owner
        self.sums: Dict[Any, torch.Tensor] = {}
        self.lengths: Dict[Any, set] = {}
        self.weight = None
        self.as_dict = False

    def _add(self, key, value: torch.Tensor, w: torch.Tensor, rows: slice, cols: slice) -> None:
        if key not in self.sums:
            dtype = torch.promote_types(value.dtype, torch.float32)      # float32, or float64 for float64 inputs
            self.sums[key] = torch.zeros(value.shape[:-2] + self.size, dtype=dtype, device=value.device)
        self.sums[key][..., rows, cols] += value * w.to(value.device)

    def add(self, out, w: torch.Tensor, rows: slice, cols: slice) -> None:
        hw = (rows.stop - rows.start, cols.stop - cols.start)
        if not (torch.is_tensor(out) or isinstance(out, dict)):
            raise ValueError(f"tiled: {self.owner} returned a {type(out).__name__}; tiled inference merges a Tensor "
                             "or a dict with key 'x' (the model contract)")
        self.as_dict = isinstance(out, dict)
        for key, value in (out.items() if self.as_dict else [(None, out)]):
            if isinstance(value, (list, tuple)) and value and all(_is_image(v, hw) for v in value):
                self.lengths.setdefault(key, set()).add(len(value))
                for i, item in enumerate(value):
                    self._add((key, i), item, w, rows, cols)
                self._add((key, "tail", len(value)), value[-1], w, rows, cols)
            elif _is_image(value, hw):
                self._add(key, value, w, rows, cols)
            else:
                what = "its output" if key is None else f"its output '{key}'"
                shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise ValueError(f"tiled: {self.owner} returned {shape} as {what} for a {hw[0]}×{hw[1]} tile; "
                                 "only images of the tile's size (or lists of them) can be merged")
        if self.weight is None:
            self.weight = torch.zeros(self.size, dtype=torch.float32)
        self.weight[rows, cols] += w

    def merged(self, dtype: torch.dtype, crop: Callable) -> Any:
        def final(total):    # in place: every sum is used once, and a full-size copy is what tiling saves
            return crop(total.div_(self.weight.to(total.device))).to(dtype)

        out = {}
        for key, lengths in self.lengths.items():
            steps = []
            for i in range(max(lengths)):
                total = self.sums.get((key, i), 0)
                for n in lengths:
                    if n <= i:   # tiles whose list ended after n entries keep their last one
                        total = total + self.sums[(key, "tail", n)]
                steps.append(final(total))
            out[key] = steps
        for key, total in self.sums.items():
            if not isinstance(key, tuple):
                out[key] = final(total)
        return out if self.as_dict else out[None]


class Tiled(ModelWrapper):
    """`module` applied tile by tile (see the module docstring). `overlap=None`: per CNN block from its
    receptive field (NRL-GDN family), else `default_overlap` of each call's kernel."""

    def __init__(self, module: nn.Module, tile: int = 512, overlap: int | None = None):
        super().__init__(module)
        keys = tuple(hook(module, "input_keys"))
        if keys not in (("y", "k"), ("y",)):
            raise ValueError(f"tiled: {type(innermost(module)).__name__} takes inputs {keys}; tiled inference "
                             "needs a model of (y, k) or (y,)")
        if int(tile) < 2 * ALIGN or int(tile) % ALIGN:
            raise ValueError(f"tiled: tile must be a multiple of {ALIGN} and at least {2 * ALIGN}, got {tile}")
        if overlap is not None and not 0 <= int(overlap) <= int(tile) - ALIGN:
            raise ValueError(f"tiled: overlap must be in [0, tile - {ALIGN}] = [0, {int(tile) - ALIGN}], got {overlap}")
        self.tile = int(tile)
        self.overlap = None if overlap is None else int(overlap)

    def forward(self, y: torch.Tensor, *rest):
        if not torch.is_tensor(y) or y.dim() != 4:
            raise ValueError(f"tiled: y must be an N×C×H×W tensor, got {getattr(y, 'shape', type(y).__name__)}")
        if max(y.shape[-2:]) <= self.tile:
            return self.module(y, *rest)
        if rest and is_stepwise(self.module):
            return self._stepwise(y, rest[0])
        k = rest[0] if rest else None
        overlap = self.overlap
        if overlap is None:
            overlap = min(default_overlap(max(k.shape[-2:]) if torch.is_tensor(k) else 1), self.tile - ALIGN)
        pad = sum(_drop_rise(overlap)) if is_periodic(self.module) else 0    # border pixels get full weight
        image = _wrap_pad(y, pad) if pad else y
        return self._blend(lambda rows, cols: self.module(image[..., rows, cols], *rest), image, overlap, pad, y.dtype)

    def _blend(self, run: Callable, image: torch.Tensor, overlap: int, pad: int = 0, dtype=torch.float32):
        """Σ w·run(rows, cols) / Σ w over the tiles of `image`, cropped by `pad` on every side."""
        h, w = image.shape[-2:]
        canvas = _Canvas((h, w), type(innermost(self.module)).__name__)
        for rows, cols, weight in _tiles(h, w, self.tile, overlap):
            canvas.add(run(rows, cols), weight, rows, cols)
        return canvas.merged(dtype, lambda t: t[..., pad:h - pad, pad:w - pad])

    def _stepwise(self, y: torch.Tensor, k):
        """Global x⁰, blur and stopping rule; the CNN blocks of every unrolled step tile by tile."""
        net = innermost(self.module)
        dtype = y.dtype
        y, k = net.checked_inputs(y, k)

        def run_cnn(block, fn, z):
            context = net.tile_context(block)
            if context is None:       # a block whose reach is not known: whole, hence exact
                return fn(z)
            overlap = self.overlap if self.overlap is not None else block_overlap(context)
            return self._blend(lambda rows, cols: fn(z[..., rows, cols]), z, min(overlap, self.tile - ALIGN))

        periodic = net.periodic_samples(y)
        x = torch.cat([net.initial_estimate(y[:, c:c + 1], k, periodic) for c in range(y.shape[1])], dim=1)
        with precision_context(self.module, y.device), net.tiled_cnns(run_cnn):
            out = net.unroll(x, y, k)
        if isinstance(out, dict):
            return {**out, "x": out["x"].to(dtype)}
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"tile={self.tile}, overlap={'auto' if self.overlap is None else self.overlap}"


def tiled(net: nn.Module, tile: int = 512, overlap: int | None = None) -> Tiled:
    """`net` restoring images tile by tile: `tiled(net, tile)(y, k)` returns what `net(y, k)` returns."""
    return Tiled(net, tile, overlap)
