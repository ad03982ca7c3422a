"""Loss registry: names map to loss factories ("module:attribute" targets are imported on first use).

`build_loss(name, **opts)` returns a callable `fn(outputs, batch) -> (loss, {name: float})` where
`outputs` is the model output normalised to a dict (key "x" = restored image) and `batch` the data
dict (key "x" = ground truth). A model names its loss with the class attribute `default_loss`.
Families with losses of their own register them here (DSDNet, VIRNet). The built-in losses return the
terms as `LossTerms`: read as floats, but kept on the device until read (no host sync per step).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from utils.registry import Registry, discover_extensions
from utils.operators import compute_dtype

LossResult = Tuple[torch.Tensor, Dict[str, float]]


class LossTerms(Mapping):
    """Named loss terms held as detached tensors; reading a term returns a float (a host-device sync),
    so a training loop that logs every N steps reads them only then (`tensors()` gives them unread)."""

    def __init__(self, **terms):
        self._terms = {k: v.detach() if torch.is_tensor(v) else v for k, v in terms.items()}

    def __getitem__(self, key: str) -> float:
        return float(self._terms[key])

    def __iter__(self):
        return iter(self._terms)

    def __len__(self) -> int:
        return len(self._terms)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return dict(self._terms)

    def __repr__(self) -> str:
        return f"LossTerms({', '.join(self._terms)})"


def _fp32_pair(x: torch.Tensor, gt: torch.Tensor):
    """Output and ground truth in float32 at least: under autocast the output may be bfloat16/float16,
    and rounding the target to 8 mantissa bits biases the loss."""
    dtype = compute_dtype(torch.promote_types(x.dtype, gt.dtype))
    return x.to(dtype), gt.to(dtype)


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


class PixelLoss:
    """Mean pixel loss between outputs["x"] and batch["x"] (optionally on every step in outputs["steps"])."""

    def __init__(self, kind: str = "l1", weight: float = 1.0, eps: float = 1e-3):
        if kind not in ("l1", "mse", "charbonnier"):
            raise ValueError(f"pixel loss kind must be l1, mse or charbonnier, got '{kind}'")
        self.kind, self.weight, self.eps = kind, float(weight), float(eps)

    def distance(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if self.kind == "l1":
            return F.l1_loss(x, gt)
        if self.kind == "mse":
            return F.mse_loss(x, gt)
        return torch.sqrt((x - gt) ** 2 + self.eps ** 2).mean()

    def __call__(self, outputs: dict, batch: dict) -> LossResult:
        x, gt = _fp32_pair(outputs["x"], batch["x"])
        loss = self.weight * self.distance(x, gt)
        return loss, LossTerms(**{self.kind: loss})


class NRLGDNL1(PixelLoss):
    """The published NRL-GDN loss: L1(x^T, x_gt) / (2·N), N the batch size.

    N is the *global* batch (the published code divides after DataParallel's gather), so a DDP run
    with the same global batch takes the same step as a single process.
    """

    def __init__(self, weight: float = 1.0):
        super().__init__("l1", weight)

    def __call__(self, outputs: dict, batch: dict) -> LossResult:
        x, gt = _fp32_pair(outputs["x"], batch["x"])
        n = x.shape[0] * _world_size()
        loss = self.weight * F.l1_loss(x, gt) / (2 * n)
        return loss, LossTerms(nrlgdn_l1=loss)


LOSSES = Registry("loss", {
    "nrlgdn_l1": NRLGDNL1,
    "l1": lambda **o: PixelLoss("l1", **o),
    "mse": lambda **o: PixelLoss("mse", **o),
    "charbonnier": lambda **o: PixelLoss("charbonnier", **o),
    # losses of other families, imported when first used
    "dsdnet": "models.dsdnet_loss:DSDNetLoss",
    "virnet_denoise": "models.virnet_loss:VIRNetDenoiseLoss",
    "virnet_sisr": "models.virnet_loss:VIRNetSISRLoss",
}, discover=discover_extensions)


def register_loss(name: str, target) -> None:
    """Add a loss: a factory returning `fn(outputs, batch) -> (loss, logs)`, or "module:attr"."""
    LOSSES.register(name, target)


def list_losses():
    return LOSSES.names()


def resolve_loss(name: str) -> Callable:
    return LOSSES.resolve(name)


def build_loss(name: str, **options) -> Callable[[dict, dict], LossResult]:
    """Build a registered loss; `options` go to its factory (e.g. weight=0.5)."""
    return LOSSES.build(name, **options)
