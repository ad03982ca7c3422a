"""The model contract: every attribute and method the engine looks for on a model, in one place.

A model is any `torch.nn.Module` registered with `register_model`. `forward(*inputs)` is the only
requirement; each hook below is optional and the engine reads it only through `hook(model, name)`,
which falls back to the documented default. A new family may subclass `RestorationModel` to say
which hooks it sets, but duck typing is enough.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Protocol, Tuple, runtime_checkable

import torch.nn as nn

# hook -> default when a model does not define it
HOOK_DEFAULTS: Dict[str, Any] = {
    "input_keys": ("y", "k"),   # batch keys passed to forward, in order (VIRNet denoising: ("y",))
    "default_loss": None,       # models/losses.py name used when model.loss is empty (None: "l1")
    "in_nc": None,              # image channels the model takes; checked against the data's num_channels
    "scale": None,              # super-resolution factor; must equal the data's (task sisr)
    "trainable": True,          # class attribute; False: training-free, evaluated without a weights file
    "record_steps": None,       # settable attribute; True: forward returns {"x", "steps": [per-step x]}
    "clip_gradients": None,     # method; called after backward instead of optimizer.grad_clip
    "early_stop_sync": None,    # settable attribute (NRL-GDN): True all-reduces the early-stop test under DDP
}


@runtime_checkable
class RestorationModel(Protocol):
    """What `engine/` may use on a model (see HOOK_DEFAULTS for the defaults).

    forward(*inputs): inputs named by `input_keys`; returns the restored image (N×C×H×W) or a dict with
    key "x" plus extras ("sigma_map", "steps", "kernel", ...).
    Unrolled models (models/nrlgdn.py) also call `update(x, y, k, t)` once per step t = 0, 1, ...: a
    variant with per-step parameters overrides it and indexes them with t (never with a counter kept in
    the model, which recomputation under grad_checkpointing would advance twice).
    """

    input_keys: Tuple[str, ...]
    default_loss: Optional[str]
    in_nc: int
    scale: int
    trainable: bool
    record_steps: bool
    early_stop_sync: bool

    def forward(self, *inputs): ...

    def clip_gradients(self) -> Dict[str, float]: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel/DDP and our wrappers (models.with_precision, models.tiled)."""
    from models.wrappers import ModelWrapper

    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel, ModelWrapper)):
        model = model.module
    return model


def hook(model, name: str):
    """`model`'s value of an engine hook (a model instance, wrapped or not, or a model class), or its
    default. Unknown hook names are programming errors (KeyError)."""
    if not has_hook(model, name):
        return HOOK_DEFAULTS[name]
    return getattr(unwrap(model) if isinstance(model, nn.Module) else model, name)


def has_hook(model, name: str) -> bool:
    """Whether the model defines the hook itself (e.g. a `record_steps` switch or `clip_gradients`)."""
    if name not in HOOK_DEFAULTS:
        raise KeyError(f"'{name}' is not an engine hook; hooks: {', '.join(HOOK_DEFAULTS)}")
    target = unwrap(model) if isinstance(model, nn.Module) else model
    return hasattr(target, name)
