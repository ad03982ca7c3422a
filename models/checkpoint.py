"""Load weights into a model from official checkpoints or our own training checkpoints.

Accepted files (always read with `torch.load(weights_only=True)`): a bare state_dict, optionally with the
`module.` prefix of DataParallel/DDP, or a dict wrapping it under one of WRAPPER_KEYS:
'model' (our engine), 'params' (DSDNet+), 'model_state_dict' (VIRNet), 'state_dict', 'net' (NRL-GDN
training checkpoints).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

from utils.config import DataError

WRAPPER_KEYS = ("model", "params", "model_state_dict", "state_dict", "net")
_SHOWN = 5  # keys listed per category in error messages
_TORCH_PREAMBLE = ("Weights only load failed", "Check the documentation")   # torch's advice, not the reason
SAFE_TORCH = (2, 6)  # before 2.6, weights_only=True could be bypassed (CVE-2025-32434)

log = logging.getLogger(__name__)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def extract_state_dict(obj, path="checkpoint") -> dict:
    """The state_dict inside a loaded checkpoint object, with any 'module.' prefix removed; DataError (a
    ValueError) when a tensor holds NaN or Inf."""
    if not _is_state_dict(obj):
        wrapped = None
        if isinstance(obj, Mapping):
            wrapped = next((obj[key] for key in WRAPPER_KEYS if key in obj and _is_state_dict(obj[key])), None)
        if wrapped is None:
            found = sorted(map(str, obj))[:_SHOWN] if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{path}: no state_dict found (expected a dict of tensors or one under "
                             f"{'/'.join(WRAPPER_KEYS)}), got {found}")
        obj = wrapped
    prefix = "module."
    if all(key.startswith(prefix) for key in obj):
        obj = {key[len(prefix):]: value for key, value in obj.items()}
    bad = [key for key, value in obj.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:   # a model with NaN weights would evaluate to NaN without a word
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{path}: tensor '{bad[0]}'{more} holds NaN or Inf values; these weights are unusable")
    return dict(obj)


def _listing(names) -> str:
    names = list(names)
    more = f", ... (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return f"{len(names)} [" + ", ".join(names[:_SHOWN]) + more + "]"


def compare_state_dicts(expected: Mapping, found: Mapping):
    """(missing, unexpected, wrongly_shaped) keys of `found` relative to `expected`."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong = [f"{key}: file {tuple(found[key].shape)} vs model {tuple(expected[key].shape)}"
             for key in expected if key in found and tuple(found[key].shape) != tuple(expected[key].shape)]
    return missing, unexpected, wrong


def load_checkpoint(path, map_location="cpu"):
    """The object stored at `path`, read with `torch.load(weights_only=True)` (never beyond: a checkpoint
    that pickles other objects could run code). One-line errors: FileNotFoundError, DataError (a ValueError)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) < SAFE_TORCH:
        raise DataError(f"{path}: not read: torch {torch.__version__} cannot load checkpoints safely "
                         f"(weights_only=True is sound from torch {'.'.join(map(str, SAFE_TORCH))}); upgrade torch")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors are long multi-line messages; keep the line with the reason
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if not line.startswith(_TORCH_PREAMBLE)),
                      lines[0] if lines else type(err).__name__)
        raise DataError(f"{path}: cannot be read with torch.load(weights_only=True): {reason} (if you trust the "
                        "file, re-save its state_dict alone with torch.save)") from None


def read_state_dict(path, map_location="cpu") -> dict:
    """The state_dict stored in the checkpoint at `path` (see the module docstring for the layouts)."""
    return extract_state_dict(load_checkpoint(path, map_location), os.fspath(path))


def load_pretrained(model: torch.nn.Module, path, strict: bool = True, map_location="cpu",
                    checkpoint=None) -> torch.nn.Module:
    """Load weights from `path` into `model` and return the model. `checkpoint`: the object already read
    from `path` with `load_checkpoint` (saves reading the file twice).

    strict=True: any missing, unexpected or wrongly-shaped key raises one ValueError listing them.
    strict=False: loads the keys that match in name and shape and logs a warning about the rest."""
    path = os.fspath(path)
    if checkpoint is None:
        checkpoint = load_checkpoint(path, map_location)
    state = extract_state_dict(checkpoint, path)
    expected = model.state_dict()
    missing, unexpected, wrong = compare_state_dicts(expected, state)
    if missing or unexpected or wrong:
        parts = [f"{label} keys {_listing(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrongly-shaped", wrong)) if keys]
        message = f"{path} does not match {type(model).__name__}: " + "; ".join(parts)
        if strict:
            raise ValueError(message)
        log.warning("%s (loading the %d matching tensors)", message,
                    len(expected) - len(missing) - len(wrong))
        bad = {w.split(":")[0] for w in wrong}
        state = {key: value for key, value in state.items() if key in expected and key not in bad}
    model.load_state_dict(state, strict=strict)
    return model
