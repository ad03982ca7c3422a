"""One registry for every model: names map to "module:attribute" targets imported on first use.

Lazy targets keep `import models` cheap and let a new unrolled variant be added with one line
(`register_model("MyNet", "models.my_net:MyNet")`) without touching the engine.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict, Union

_REGISTRY: Dict[str, Union[str, Callable]] = {
    # NRL-GDN family (issue 2)
    "NRL_GDN": "models.nrlgdn:NRL_GDN",
    "NRL_GDN_Y0": "models.nrlgdn:NRL_GDN_Y0",
    "rgdn_uniform": "models.nrlgdn:rgdn_uniform",
    "DRUNet": "models.drunet:DRUNet",
    # training-free baselines, selectable like any model
    "eq22_init": "models.baselines:Eq22Init",
    "wiener": "models.baselines:Wiener",
    "richardson_lucy": "models.baselines:RichardsonLucy",
    # DSDNet (issue 6)
    "DSD_full": "models.dsdnet:DSD_full",
    "DSD_light": "models.dsdnet:DSD_light",
    "DSDplus_p": "models.dsdnet:DSDplus_p",
    "DSDplus_e": "models.dsdnet:DSDplus_e",
    # VIRNet (issue 7)
    "VIRNet_denoise_syn": "models.virnet:VIRNet_denoise_syn",
    "VIRNet_denoise_real": "models.virnet:VIRNet_denoise_real",
    "VIRNet_sisr": "models.virnet:VIRNet_sisr",
}


def register_model(name: str, target: Union[str, Callable]) -> None:
    """Add a model: `target` is a class/factory or a "package.module:attribute" string."""
    _REGISTRY[name] = target


def list_models():
    return sorted(_REGISTRY)


def resolve_model(name: str) -> Callable:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise KeyError(f"unknown model '{name}'{hint}; known models: {', '.join(list_models())}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module_name, attr = target.split(":")
        target = getattr(importlib.import_module(module_name), attr)
        _REGISTRY[name] = target
    return target


def build_model(name: str, **options):
    """Build a registered model; `options` go to its constructor (e.g. num_steps=6)."""
    factory = resolve_model(name)
    try:
        return factory(**options)
    except TypeError as err:
        raise TypeError(f"model '{name}': bad options {sorted(options)}: {err}") from None
