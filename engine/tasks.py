"""Restoration tasks of the engine: `deblur` (y = k ⊛ x + n), `denoise` (y = x + n) and `sisr`
(y = (k ⊛ x)↓s + n).

A task fills in the degradation defaults of its data sections and checks that a spec and the model fit
it (no blur for denoising; an integer scale ≥ 2 that equals the model's for super-resolution), so a
wrong combination fails with one line naming the key before any data is synthesised.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from engine.distributed import unwrap
from models.contract import hook
from utils.config import TASKS, ConfigError

SR_KERNEL_SIZE = 21
VIRNET_VAL_KERNEL_STD = 1.6     # VIRNet's in-training SR validation: one isotropic Gaussian for every scale


def task_of(cfg, section: str) -> str:
    """The task of a data section; val_dataset/test_dataset follow train_dataset when empty."""
    task = cfg[section].get("task", "") or cfg["train_dataset"]["task"]
    if task not in TASKS:
        raise ConfigError(f"{section}.task: '{task}' is not one of {', '.join(TASKS)}")
    return task


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
    """Task defaults and checks for a `data.degrade.build_degradation` spec (returns a new dict)."""
    spec = dict(spec)
    if task == "denoise":
        spec.setdefault("blur", None)
        if spec["blur"] is not None:
            raise ConfigError(f"{where}.blur: task 'denoise' has no blur; set it to null (got {spec['blur']!r})")
        if _scale_of(spec, where) != 1:
            raise ConfigError(f"{where}.scale: task 'denoise' keeps the image size; remove scale or set it to 1")
    elif task == "sisr":
        spec.setdefault("blur", "symmetric")
        spec.setdefault("clip", True)
        scale = _scale_of(spec, where)
        if scale < 2:
            raise ConfigError(f"{where}.scale: task 'sisr' needs an integer scale >= 2, got {scale}")
        if model_scale_ is not None and scale != model_scale_:
            raise ConfigError(f"{where}.scale: {scale}, but the model upsamples by {model_scale_} "
                              f"(set model.options.scale={scale})")
        kernels = spec.get("kernels")
        if isinstance(kernels, dict) and kernels.get("type") == "sr_gaussian" and kernels.get("scale", scale) != scale:
            raise ConfigError(f"{where}.kernels.scale: {kernels['scale']} differs from the degradation scale {scale}")
    elif _scale_of(spec, where) != 1:
        raise ConfigError(f"{where}.scale: {spec['scale']} needs task 'sisr' (the task is '{task}')")
    return spec


def sisr_default_spec(cfg, scale: Optional[int]) -> Dict[str, Any]:
    """VIRNet's SR training recipe at `scale`: anisotropic 21×21 Gaussians (with kinfo), symmetric blur,
    bicubic ×1/scale, AWGN σ ~ U(sigma_min, sigma_max), clipped."""
    d = cfg["train_dataset"]
    if not scale:
        raise ConfigError("train_dataset.degradation: task 'sisr' needs a spec with 'scale' (the model "
                          "declares no scale)")
    return {"kernels": {"type": "sr_gaussian", "scale": scale, "size": SR_KERNEL_SIZE}, "blur": "symmetric",
            "scale": scale, "noise": {"type": "uniform", "sigma_range": [d["sigma_min"], d["sigma_max"]]},
            "clip": True}


def val_degradation(cfg, task: str, scale: Optional[int]):
    """The validation Degradation of a non-deblur task (or of an explicit val_dataset.degradation)."""
    from data.degrade import Degradation, build_degradation
    from data.kernels import isotropic_gaussian

    v = cfg["val_dataset"]
    where = "val_dataset.degradation"
    try:
        if v["degradation"]:
            return build_degradation(complete_spec(task, v["degradation"], where, scale))
        noise = ({"type": "sigma_map", "map": v["sigma_map_type"], "range": cfg["test_dataset"]["sigma_map_range"]}
                 if v["sigma_map_type"] else {"type": "uniform", "sigma": v["noise_level"]})
        if task == "denoise":
            return Degradation(None, noise, blur=None)
        if not scale:
            raise ConfigError(f"{where}: task 'sisr' needs a spec with 'scale' (the model declares no scale)")
        kernel = isotropic_gaussian(SR_KERNEL_SIZE, VIRNET_VAL_KERNEL_STD)
        return Degradation(kernel, noise, blur="symmetric", scale=scale, clip=True)
    except (KeyError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where}: {err.args[0] if err.args else err}") from None
