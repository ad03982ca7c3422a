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


def rng_state(cuda_devices=()) -> Dict[str, Any]:
    """This process's generators: Python, numpy, torch's CPU one and the CUDA ones of `cuda_devices`
    (the devices the run uses; none on the CPU, so a CPU run never initialises CUDA)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if cuda_devices:
        state["cuda"] = [torch.cuda.get_rng_state(d) for d in cuda_devices]
        state["cuda_devices"] = [int(d) for d in cuda_devices]
    return state


def set_rng_state(state: Dict[str, Any], cuda_devices=()) -> list:
    """Restore what `rng_state` saved; returns the devices of `cuda_devices` whose CUDA generator the
    state does not hold (files from before `cuda_devices` was stored hold one state per visible GPU)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    saved = state.get("cuda") or []
    by_device = dict(zip(state.get("cuda_devices", range(len(saved))), saved))
    missing = []
    for d in cuda_devices:
        if d in by_device:
            torch.cuda.set_rng_state(by_device[d].cpu(), d)
        else:
            missing.append(d)
    return missing


def process_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed of its own for every (seed, rank, step): DDP processes draw distinct random numbers."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(1)[0])


def seed_process(seed: int, rank: int, step: int = 0) -> None:
    s = process_seed(seed, rank, step)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)       # also every CUDA device's generator (lazily: no CUDA initialisation here)


def restore_rng(state: Dict[str, Any], *, rank: int, world: int, cuda_devices, seed: int) -> str:
    """Restore this process's generators from a training state; returns '' when the continuation is
    exact as far as random numbers go, else why not (the caller prints it). Processes without a saved
    state of their own are seeded from (seed, rank, step) instead."""
    per_rank = state.get("rng_per_rank")
    saved_world = int(state.get("world_size", 1))
    mine = None
    if saved_world == world:
        mine = per_rank[rank] if per_rank and len(per_rank) == world else (state.get("rng") if world == 1 else None)
    if mine is None:
        seed_process(seed, rank, int(state.get("step", 0)))
        if saved_world != world:
            return f"the checkpoint was written by {saved_world} process(es), this run has {world}"
        if world > 1:
            return "the checkpoint holds rank 0's random state only (written by rank 0 alone: best or error save)"
        return "the checkpoint holds no random state"
    missing = set_rng_state(mine, cuda_devices)
    if missing:
        return f"the checkpoint holds no CUDA random state for device(s) {missing}"
    return ""


def cpu_state_dict(model) -> Dict[str, torch.Tensor]:
    """Weights as CPU tensors: a file written on a GPU must load where there is none."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_training_state(path: str, *, model, optimizer, scheduler, scaler, epoch: int, step: int,
                        batch_in_epoch: int, best_metric: Optional[float], config: Dict[str, Any],
                        model_select: str, model_options: Dict[str, Any], run_id: str = "",
                        rng_states: Optional[list] = None, world_size: int = 1) -> str:
    """`epoch` is the epoch in progress and `batch_in_epoch` how many of its batches are done; `run_id`
    names the run across resumes (its export may replace only its own earlier export). `rng_states`:
    the `rng_state()` of every one of the `world_size` processes in rank order (DDP), or of this
    process alone (a save by rank 0 only)."""
    rng_states = rng_states or [rng_state()]
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
        "rng": rng_states[0],
        "rng_per_rank": rng_states if len(rng_states) == world_size > 1 else None,
        "world_size": int(world_size),
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
    """Restore the model, optimizer, scheduler and scaler `save_training_state` wrote; returns the
    position fields and the whole state (`state`, for `restore_rng`)."""
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
    position = {k: state.get(k) for k in ("epoch", "step", "batch_in_epoch", "best_metric", "config", "run_id")}
    position["state"] = state
    return position
