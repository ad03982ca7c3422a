"""Load weights into a model from official checkpoints or our own training checkpoints.

Accepted files (always read with `torch.load(weights_only=True)`): a bare state_dict, optionally with the
`module.` prefix of DataParallel/DDP, or a dict wrapping it under one of WRAPPER_KEYS:
'model' (our engine), 'params' (DSDNet+), 'model_state_dict' (VIRNet), 'state_dict', 'net' (NRL-GDN
training checkpoints).

`load_model(path, name=None, **options)` builds the right model for a file and loads it (see model_recipe).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Dict, Optional, Tuple

import torch

from models.published import published_for_file
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


def _registered_stem(path) -> Optional[str]:
    from models.registry import list_models

    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return stem if stem in list_models() else None


def model_recipe(checkpoint, path, name: Optional[str] = None,
                 overrides: Optional[Mapping] = None) -> Tuple[str, Dict[str, Any]]:
    """(registered name, build options) for the weights read from `path`.

    The name: `name`, else the one our checkpoints store (`model_select`), else the one a published file
    name or a registered file stem implies. The options: those our checkpoints store (when they were
    saved for this model), else those a published file needs (models/published.py); `overrides` replace
    them key by key. `grad_checkpointing` is a training switch and is never taken from a file."""
    path = os.fspath(path)
    wrapped = checkpoint if isinstance(checkpoint, Mapping) else {}
    stored_name, stored = wrapped.get("model_select"), wrapped.get("model_options")
    published = published_for_file(path)
    if name is None:
        name = stored_name or (published[0] if published else None) or _registered_stem(path)
    if name is None:
        raise ValueError(f"{path}: cannot tell which model it holds (no model name stored in it, and "
                         f"'{os.path.basename(path)}' is no registered or published file name); pass the "
                         "name, e.g. load_model(path, name=\"NRL_GDN\", **options)")
    options: Dict[str, Any] = {}
    if isinstance(stored, Mapping) and stored_name in (None, name):
        options = {k: v for k, v in stored.items() if k != "grad_checkpointing"}
    elif stored is None and published and published[0] == name:
        options = published[1]
    return name, {**options, **dict(overrides or {})}


def load_model(path, name: Optional[str] = None, *, strict: bool = True, map_location="cpu",
               precision: str = "fp32", **options) -> torch.nn.Module:
    """The model stored at `path`, built and loaded, in eval mode.

    Our checkpoints store the model name and options; the published files only weights, so their model
    comes from their published file name or from `name`. Every other keyword is a model option that
    replaces the stored one (e.g. boundary="zeros", num_steps=10). See `model_recipe`.
    `precision` ("fp32", "bf16", "fp16", "auto"): the model runs so (`models.precision.with_precision`)."""
    from models.precision import with_precision
    from models.registry import build_model

    checkpoint = load_checkpoint(path, map_location)
    name, options = model_recipe(checkpoint, path, name, options)
    model = build_model(name, **options)
    load_pretrained(model, path, strict=strict, map_location=map_location, checkpoint=checkpoint)
    return with_precision(model, precision).eval()


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
