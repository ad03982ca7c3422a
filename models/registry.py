"""The model registry: names map to "module:attribute" targets imported on first use.

Lazy targets keep `import models` cheap. A new variant is one file under `models/` that calls
`register_model("MyNet", "models.my_net:MyNet")` (or passes the class); the first lookup of any name finds
it (`utils.registry.discover_extensions`), so nobody has to import the new file.
"""
from __future__ import annotations

from typing import Callable

from utils.registry import Registry, Target, discover_extensions

MODELS = Registry("model", {
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
}, discover=discover_extensions)


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
