"""Training state on disk: model, optimizer, scheduler, scaler, position, RNG states, config.

Files are written atomically (temp file + rename), so a run killed while saving keeps the previous
file. The model weights sit under key "model" (unwrapped, no `module.` prefix), which
`models.load_pretrained` reads, so a training checkpoint is also a usable weights file.
Only plain Python/tensor types are stored, so `torch.load(weights_only=True)` can read it.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

from models.checkpoint import compare_state_dicts, load_checkpoint
from utils.config import ConfigError
from utils.io import atomic_save

FORMAT_VERSION = 1


def rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def cpu_state_dict(model) -> Dict[str, torch.Tensor]:
    """Weights as CPU tensors: a file written on a GPU must load where there is none."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_training_state(path: str, *, model, optimizer, scheduler, scaler, epoch: int, step: int,
                        batch_in_epoch: int, best_metric: Optional[float], config: Dict[str, Any],
                        model_select: str, model_options: Dict[str, Any], run_id: str = "") -> str:
    """`epoch` is the epoch in progress and `batch_in_epoch` how many of its batches are done; `run_id`
    names the run across resumes (its export may replace only its own earlier export)."""
    state = {
        "format_version": FORMAT_VERSION,
        "model": cpu_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "batch_in_epoch": int(batch_in_epoch),
        "best_metric": best_metric,
        "rng": rng_state(),
        "config": config,
        "model_select": model_select,
        "model_options": model_options,
        "run_id": run_id,
    }
    atomic_save(state, path)
    return path


def export_weights(path: str, *, model, config, model_select: str, model_options: Dict[str, Any],
                   extra: Optional[Dict[str, Any]] = None) -> str:
    """A weights-only file (`{"model": state_dict, ...}`) for evaluation and sharing."""
    payload = {"model": cpu_state_dict(model), "model_select": model_select, "model_options": model_options,
               "config": config}
    payload.update(extra or {})
    atomic_save(payload, path)
    return path


def read_checkpoint(path: str, key: str = "model.pretrained") -> Dict[str, Any]:
    """`models.checkpoint.load_checkpoint` (weights_only=True, on CPU) with errors as one-line ConfigErrors."""
    try:
        return load_checkpoint(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: checkpoint not found: '{path}'") from None
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def load_training_state(path: str, *, model, optimizer, scheduler, scaler) -> Dict[str, Any]:
    """Restore everything `save_training_state` wrote; returns the position fields."""
    state = read_checkpoint(path, key="train_options.resume_model_name")
    if "optimizer" not in state or "epoch" not in state:
        raise ConfigError(f"train_options.resume_model_name: '{path}' holds weights only, not a training "
                          "state to resume (set model.pretrained to start from these weights instead)")
    key = "train_options.resume_model_name"
    missing, unexpected, wrong = compare_state_dicts(model.state_dict(), state["model"])
    if missing or unexpected or wrong:
        raise ConfigError(f"{key}: '{path}' holds a different model ({state.get('model_select')} with options "
                          f"{state.get('model_options')}): {len(missing)} missing, {len(unexpected)} unexpected, "
                          f"{len(wrong)} wrongly-shaped tensors; resume with the run's own model section")
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:
            raise ConfigError(f"{key}: the optimizer state in '{path}' does not fit this run's optimizer: {err}") from None
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if state.get("rng") is not None:
        set_rng_state(state["rng"])
    return {k: state.get(k) for k in ("epoch", "step", "batch_in_epoch", "best_metric", "config", "run_id")}
