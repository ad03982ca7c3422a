"""One registry for every model: names map to "module:attribute" targets imported on first use.

Lazy targets keep `import models` cheap and let a new unrolled variant be added with one line
(`register_model("MyNet", "models.my_net:MyNet")`) without touching the engine.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Dict, Union

Target = Union[str, Callable]


class LazyRegistry:
    """Name -> factory, where a factory may be given as "package.module:attribute" (imported once)."""

    def __init__(self, kind: str, entries: Dict[str, Target]):
        self.kind, self._entries = kind, dict(entries)

    def register(self, name: str, target: Target) -> None:
        self._entries[name] = target

    def names(self):
        return sorted(self._entries)

    def resolve(self, name: str) -> Callable:
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KeyError(f"unknown {self.kind} '{name}'{hint}; known {self.kind}s: {', '.join(self.names())}")
        target = self._entries[name]
        if isinstance(target, str):
            module_name, attr = target.split(":")
            target = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = target
        return target

    def build(self, name: str, **options):
        factory = self.resolve(name)
        try:
            return factory(**options)
        except TypeError as err:
            raise TypeError(f"{self.kind} '{name}': bad options {sorted(options)}: {err}") from None


MODELS = LazyRegistry("model", {
    # NRL-GDN family
    "NRL_GDN": "models.nrlgdn:NRL_GDN",
    "NRL_GDN_Y0": "models.nrlgdn:NRL_GDN_Y0",
    "rgdn_uniform": "models.nrlgdn:rgdn_uniform",
    "DRUNet": "models.drunet:DRUNet",
    # training-free baselines, selectable like any model
    "eq22_init": "models.baselines:Eq22Init",
    "wiener": "models.baselines:Wiener",
    "richardson_lucy": "models.baselines:RichardsonLucy",
    # DSDNet
    "DSD_full": "models.dsdnet:DSD_full",
    "DSD_light": "models.dsdnet:DSD_light",
    "DSDplus_p": "models.dsdnet:DSDplus_p",
    "DSDplus_e": "models.dsdnet:DSDplus_e",
    # VIRNet
    "VIRNet_denoise_syn": "models.virnet:VIRNet_denoise_syn",
    "VIRNet_denoise_real": "models.virnet:VIRNet_denoise_real",
    "VIRNet_sisr": "models.virnet:VIRNet_sisr",
})


def register_model(name: str, target: Target) -> None:
    """Add a model: `target` is a class/factory or a "package.module:attribute" string."""
    MODELS.register(name, target)


def list_models():
    return MODELS.names()


def resolve_model(name: str) -> Callable:
    return MODELS.resolve(name)


def build_model(name: str, **options):
    """Build a registered model; `options` go to its constructor (e.g. num_steps=6)."""
    return MODELS.build(name, **options)
