"""×8 geometric self-ensemble: restore under each flip/rotation, undo it, average.

Blur commutes with these transforms when the kernel is transformed alike (about its centre, exact for
odd-sized kernels), so every model input (y, k) goes through the same dihedral mode. Outputs with
spatial axes (the image, σ-maps, kernel estimates) are transformed back and averaged; per-sample
vectors (e.g. VIRNet's kinfo) come from the untransformed pass; per-step lists are dropped.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from data.kernels import dihedral
from engine.modeling import input_keys, run_model

MODES = tuple(range(8))


def _inverse_modes() -> Dict[int, int]:
    probe = np.arange(6).reshape(2, 3)
    return {m: next(i for i in MODES if np.array_equal(dihedral(dihedral(probe, m), i), probe)) for m in MODES}


INVERSE_MODE = _inverse_modes()


def _spatial(t) -> bool:
    return torch.is_tensor(t) and t.dim() >= 3


def self_ensemble(model, batch: Dict[str, Any]) -> Dict[str, Any]:
    """`run_model(model, batch)` averaged over the 8 dihedral transforms of the model's inputs."""
    keys = input_keys(model)
    sums: Dict[str, torch.Tensor] = {}
    first: Dict[str, Any] = {}
    for mode in MODES:
        moved = dict(batch)
        for key in keys:
            if _spatial(batch.get(key)):
                moved[key] = dihedral(batch[key], mode).contiguous()
        out = run_model(model, moved)
        if mode == 0:
            first = out
        for name, value in out.items():
            if _spatial(value):
                back = dihedral(value, INVERSE_MODE[mode])
                sums[name] = back.float() if name not in sums else sums[name] + back.float()
    merged = {name: value for name, value in first.items() if not isinstance(value, (list, tuple))}
    for name, total in sums.items():
        merged[name] = (total / len(MODES)).to(first[name].dtype)
    return merged
