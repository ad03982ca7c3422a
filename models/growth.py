"""Start a deeper model from a trained shallower one without changing what it computes.

`load_grown` fills a model whose DRUNets have more ResBlocks per scale (`nb`) than the checkpoint's: the
checkpoint's blocks come first at every scale, each extra block starts as the identity (its second conv
zeroed, so x + res(x) = x) and every other tensor must match by name and shape. Fine-tuning then begins
at the small model's quality instead of from scratch.
"""
from __future__ import annotations

import os
import re
from typing import Dict

import torch
import torch.nn as nn

from models.checkpoint import read_state_dict
from models.drunet import DRUNet, ResBlock

_STAGES = ("m_down1", "m_down2", "m_down3", "m_body", "m_up3", "m_up2", "m_up1")


def _block_key(stage: str, block: int, nb: int) -> str:
    """Name prefix of ResBlock `block` of a stage in a DRUNet with `nb` blocks (KAIR naming)."""
    if stage == "m_body":
        return "m_body" if nb == 1 else f"m_body.{block}"
    return f"{stage}.{block + 1}" if stage.startswith("m_up") else f"{stage}.{block}"


def _sampler_key(stage: str, nb: int) -> str:
    """Name prefix of a stage's stride-2 conv (down) or transposed conv (up)."""
    return f"{stage}.0" if stage.startswith("m_up") else f"{stage}.{nb}"


def _blocks_in(state: Dict[str, torch.Tensor], prefix: str) -> int:
    """ResBlocks per scale of the DRUNet stored under `prefix` (0 when there is none)."""
    pattern = re.compile(re.escape(prefix) + r"m_down1\.(\d+)\.res\.0\.weight$")
    return sum(1 for key in state if pattern.match(key))


def _rename_drunet(state: Dict[str, torch.Tensor], prefix: str, nb_from: int, nb_to: int) -> Dict[str, str]:
    """Map each source key of the DRUNet at `prefix` to its name in a DRUNet with `nb_to` blocks."""
    names = {}
    for stage in _STAGES:
        for block in range(nb_from):
            old, new = _block_key(stage, block, nb_from), _block_key(stage, block, nb_to)
            for conv in ("res.0", "res.2"):
                names[f"{prefix}{old}.{conv}.weight"] = f"{prefix}{new}.{conv}.weight"
                names[f"{prefix}{old}.{conv}.bias"] = f"{prefix}{new}.{conv}.bias"
        if stage != "m_body":
            for suffix in ("weight", "bias"):
                names[f"{prefix}{_sampler_key(stage, nb_from)}.{suffix}"] = \
                    f"{prefix}{_sampler_key(stage, nb_to)}.{suffix}"
    return {old: new for old, new in names.items() if old in state}


def grown_state_dict(model: nn.Module, state: Dict[str, torch.Tensor], source: str = "checkpoint"
                     ) -> Dict[str, torch.Tensor]:
    """A full state_dict for `model` built from the shallower `state` (see the module docstring)."""
    target = model.state_dict()
    renamed = dict(state)
    fresh_blocks = []
    for prefix, module in model.named_modules():
        if not isinstance(module, DRUNet):
            continue
        prefix = f"{prefix}." if prefix else ""
        nb_to = sum(isinstance(m, ResBlock) for m in module.m_down1.modules())
        nb_from = _blocks_in(state, prefix)
        if nb_from == 0:
            raise ValueError(f"{source}: no DRUNet under '{prefix or '(root)'}' to grow from")
        if nb_from > nb_to:
            raise ValueError(f"{source}: its DRUNet '{prefix or '(root)'}' has {nb_from} ResBlocks per scale, "
                             f"more than the model's {nb_to}; growing cannot remove blocks")
        mapping = _rename_drunet(state, prefix, nb_from, nb_to)
        for old in mapping:
            renamed.pop(old)
        renamed.update({new: state[old] for old, new in mapping.items()})
        fresh_blocks += [f"{prefix}{_block_key(stage, block, nb_to)}"
                         for stage in _STAGES for block in range(nb_from, nb_to)]
    unexpected = sorted(set(renamed) - set(target))
    wrong = sorted(key for key in renamed if key in target and renamed[key].shape != target[key].shape)
    if unexpected or wrong:
        raise ValueError(f"{source} cannot grow into {type(model).__name__}: "
                         f"unexpected keys {unexpected[:5]}, wrongly-shaped keys {wrong[:5]}")
    full = {}
    for key, value in target.items():
        block = next((b for b in fresh_blocks if key.startswith(b + ".")), None)
        if key in renamed:
            full[key] = renamed[key].to(value.dtype)
        elif block is not None:
            full[key] = torch.zeros_like(value) if key.startswith(block + ".res.2.") else value
        else:
            raise ValueError(f"{source} cannot grow into {type(model).__name__}: missing key '{key}'")
    return full


def load_grown(model: nn.Module, path) -> nn.Module:
    """Load the checkpoint at `path` into the deeper `model` (extra ResBlocks start as identities)."""
    path = os.fspath(path)
    model.load_state_dict(grown_state_dict(model, read_state_dict(path), path))
    return model
