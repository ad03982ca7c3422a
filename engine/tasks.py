"""Restoration tasks of the engine: `deblur` (y = k ⊛ x + n), `denoise` (y = x + n) and `sisr`
(y = (k ⊛ x)↓s + n).

The task's defaults are filled in when the config is loaded (utils/config_normalise.py); here a spec is
checked against its task and the model when the data is built (no blur for denoising; an integer
scale ≥ 2 that equals the model's for super-resolution), so a wrong combination fails with one line
naming the key before any data is synthesised.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from engine.distributed import unwrap
from models.contract import hook
from utils.config import ConfigError


def task_of(cfg, section: str) -> str:
    """The task of a data section (val_dataset/test_dataset: resolved by the config's normalisation)."""
    return cfg[section]["task"]


def model_scale(model) -> Optional[int]:
    """The upscaling factor a model declares (`scale` attribute, e.g. VIRNetSR), else None."""
    scale = hook(model, "scale")
    return int(scale) if isinstance(scale, (int, np.integer)) and not isinstance(scale, bool) else None


def check_model_for_task(model, task: str, scale: int, key: str) -> None:
    """A super-resolution model needs task 'sisr' at its own scale, and vice versa."""
    own = model_scale(model)
    name = type(unwrap(model)).__name__
    if task == "sisr" and own is not None and own != scale:
        raise ConfigError(f"{key}: scale {scale}, but model {name} upsamples by {own} "
                          f"(set model.options.scale={scale} or use scale {own})")
    if task != "sisr" and own is not None and own > 1:
        raise ConfigError(f"{key}: task '{task}', but model {name} is a ×{own} super-resolution model; "
                          "use task 'sisr'")


def _scale_of(spec: Dict[str, Any], where: str) -> int:
    scale = spec.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or int(scale) != scale or scale < 1:
        raise ConfigError(f"{where}.scale: expected a positive integer, got {scale!r}")
    return int(scale)


def complete_spec(task: str, spec: Dict[str, Any], where: str, model_scale_: Optional[int]) -> Dict[str, Any]:
    """Check a normalised degradation spec against its task; a `sisr` spec without `scale` (VIRNet's default
    recipe) takes the model's, and so do its `sr_gaussian` kernels (returns a new dict)."""
    spec = dict(spec)
    if task == "denoise":
        if spec.get("blur") is not None:
            raise ConfigError(f"{where}.blur: task 'denoise' has no blur; set it to null (got {spec['blur']!r})")
        if _scale_of(spec, where) != 1:
            raise ConfigError(f"{where}.scale: task 'denoise' keeps the image size; remove scale or set it to 1")
    elif task == "sisr":
        if "scale" not in spec:
            if not model_scale_:
                raise ConfigError(f"{where}: task 'sisr' needs a spec with 'scale' (the model declares no scale)")
            spec["scale"] = model_scale_
        scale = _scale_of(spec, where)
        if scale < 2:
            raise ConfigError(f"{where}.scale: task 'sisr' needs an integer scale >= 2, got {scale}")
        if model_scale_ is not None and scale != model_scale_:
            raise ConfigError(f"{where}.scale: {scale}, but the model upsamples by {model_scale_} "
                              f"(set model.options.scale={scale})")
        kernels = spec.get("kernels")
        if isinstance(kernels, dict) and kernels.get("type") == "sr_gaussian":
            kernels = {"scale": scale, **kernels}
            if kernels["scale"] != scale:
                raise ConfigError(f"{where}.kernels.scale: {kernels['scale']} differs from the degradation scale {scale}")
            spec["kernels"] = kernels
    elif _scale_of(spec, where) != 1:
        raise ConfigError(f"{where}.scale: {spec['scale']} needs task 'sisr' (the task is '{task}')")
    return spec
