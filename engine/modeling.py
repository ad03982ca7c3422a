"""Models as the engine sees them: built from a config section, fed from a batch, outputs as dicts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from engine.checkpoint import read_checkpoint
from engine.distributed import unwrap
from models import build_model, load_pretrained
from models.checkpoint import model_recipe
from models.contract import has_hook, hook
from models.growth import load_grown
from utils.config import ConfigError, DataError


def as_outputs(out) -> Dict[str, Any]:
    """Normalise a model's return value: a Tensor becomes {"x": tensor}; dicts must carry "x"."""
    if torch.is_tensor(out):
        return {"x": out}
    if isinstance(out, dict) and "x" in out:
        return out
    raise TypeError(f"a model must return a Tensor or a dict with key 'x', got {type(out).__name__}")


def input_keys(model: nn.Module):
    return tuple(hook(model, "input_keys"))


def run_model(model: nn.Module, batch: Dict[str, Any]) -> Dict[str, Any]:
    keys = input_keys(model)
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"model {type(unwrap(model)).__name__} needs batch keys {keys}, missing {missing}")
    return as_outputs(model(*[batch[k] for k in keys]))


def to_device(batch: Dict[str, Any], device) -> Dict[str, Any]:
    """A batch dict with its tensors on `device` (asynchronous from pinned memory on CUDA)."""
    non_blocking = torch.device(device).type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


def item_batch(item: Dict[str, Any], device) -> Dict[str, Any]:
    """One dataset item as a batch of one on `device`."""
    return to_device({k: (v[None] if torch.is_tensor(v) else v) for k, v in item.items()}, device)


def has_parameters(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU) conv weights, zero biases — the published initialisation."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass
class ModelSpec:
    """What to build: a registered name, its options, optional weights and a table label."""
    name: str
    options: Dict[str, Any] = field(default_factory=dict)
    pretrained: str = ""
    label: str = ""
    key: str = "model"          # config key named in error messages

    @property
    def title(self) -> str:
        return self.label or self.name


def spec_from_model_section(section: Dict[str, Any]) -> ModelSpec:
    options = dict(section.get("options") or {})
    if section.get("grad_checkpointing"):
        options["grad_checkpointing"] = True
    return ModelSpec(section["model_select"], options, section.get("pretrained", ""), key="model")


def spec_from_compare_entry(entry, index: int) -> ModelSpec:
    key = f"test_dataset.compare_models[{index}]"
    if isinstance(entry, str):
        return ModelSpec(entry, key=key)
    if isinstance(entry, dict) and isinstance(entry.get("model_select"), str):
        unknown = set(entry) - {"model_select", "options", "pretrained", "label"}
        if unknown:
            raise ConfigError(f"{key}: unknown field(s) {sorted(unknown)}; expected model_select, options, "
                              "pretrained, label")
        return ModelSpec(entry["model_select"], dict(entry.get("options") or {}), entry.get("pretrained", ""),
                         entry.get("label", ""), key=key)
    raise ConfigError(f"{key}: expected a model name or an object with 'model_select', got {entry!r}")


def instantiate(spec: ModelSpec) -> nn.Module:
    """build_model with registry/option errors turned into one-line ConfigErrors."""
    try:
        return build_model(spec.name, **spec.options)
    except KeyError as err:
        raise ConfigError(f"{spec.key}.model_select: {err.args[0]}") from None
    except (TypeError, ValueError) as err:     # constructors validate their options with ValueErrors
        raise ConfigError(f"{spec.key}.options: {err}") from None


def default_weights_path(model_section: Dict[str, Any]) -> str:
    return os.path.join(model_section["model_save_file"], f"{model_section['model_select']}.pth")


def build_for_evaluation(spec: ModelSpec, device: torch.device, missing_hint: str = "") -> nn.Module:
    """Build a model and load its weights; parameter-free models (baselines) need no weights.

    The options stored in our checkpoints (or those a published file needs) are the defaults and
    `spec.options` overrides them key by key (`models.checkpoint.model_recipe`, as `models.load_model`).
    """
    state = None
    if spec.pretrained and os.path.isfile(spec.pretrained):
        state = read_checkpoint(spec.pretrained, key=f"{spec.key}.pretrained")
        _, spec.options = model_recipe(state, spec.pretrained, spec.name, spec.options)
    model = instantiate(spec)
    if not has_parameters(model):
        spec.pretrained = ""
        return model.to(device).eval()
    if state is None:
        hint = f"; {missing_hint}" if missing_hint else ""
        if spec.pretrained:
            raise ConfigError(f"{spec.key}.pretrained: checkpoint not found: '{spec.pretrained}'{hint}")
        raise ConfigError(f"{spec.key}.pretrained: model '{spec.name}' has trainable weights but no "
                          f"checkpoint was given{hint}")
    try:
        load_pretrained(model, spec.pretrained, checkpoint=state)
    except DataError as err:     # NaN/Inf weights: the file is broken, not mismatched
        raise ConfigError(f"{spec.key}.pretrained: {err}") from None
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{spec.key}.pretrained: '{spec.pretrained}' does not fit model '{spec.name}' "
                          f"with options {spec.options}: {first}") from None
    return model.to(device).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in unwrap(model).parameters())


def maybe_record_steps(model: nn.Module, enable: bool) -> bool:
    """Turn on per-step outputs where the model supports them; returns whether it does."""
    if has_hook(model, "record_steps"):
        unwrap(model).record_steps = bool(enable)
        return True
    return False


def load_initial_weights(model: nn.Module, path: Optional[str], grow: bool = False) -> None:
    if not path:
        if grow:
            raise ConfigError("model.init_grow: set model.init_from to the checkpoint to grow from")
        return
    if not os.path.isfile(path):
        raise ConfigError(f"model.init_from: initial weights not found: '{path}'")
    try:
        if grow:
            load_grown(model, path)
        else:
            load_pretrained(model, path)
    except DataError as err:
        raise ConfigError(f"model.init_from: {err}") from None
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.init_from: '{path}' does not fit the model: {first}") from None


def check_channels(model: nn.Module, channels: int, key: str) -> None:
    """Models that declare `in_nc` must get images with that many channels."""
    expected = hook(model, "in_nc")
    if isinstance(expected, int) and expected != channels:
        raise ConfigError(f"{key}: {channels}-channel images, but {type(unwrap(model)).__name__} takes "
                          f"{expected} channels (set {key} to {expected}, or the model option in_nc)")
