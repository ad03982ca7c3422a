"""One registry for every model: names map to "module:attribute" targets imported on first use.

Lazy targets keep `import models` cheap. A new variant is one file under `models/` that calls
`register_model("MyNet", "models.my_net:MyNet")` (or passes the class): on the first lookup of a model
name, every `models/*.py` that mentions `register_model` or `register_loss` is imported, in file-name
order, so nobody has to import the new file.
"""
from __future__ import annotations

import difflib
import glob
import importlib
import os
import sys
from typing import Callable, Dict, Optional, Union

Target = Union[str, Callable]
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_NOT_SCANNED = ("__init__", "registry")
_MARKERS = ("register_model", "register_loss")


class ModelFileError(ImportError):
    """A file under models/ that registers models could not be imported (its error is chained)."""


def discover_model_files(folder: str = PACKAGE_DIR, package: str = "models") -> list:
    """Import every `<folder>/*.py` whose text mentions register_model/register_loss, sorted by name;
    returns the module names imported. An import error names the file; its traceback is chained."""
    imported = []
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        module = f"{package}.{stem}"
        if stem in _NOT_SCANNED or module in sys.modules:
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if not any(marker in text for marker in _MARKERS):
            continue
        try:
            importlib.import_module(module)
        except Exception as err:
            raise ModelFileError(f"{os.path.relpath(path)}: importing it to find its register_model calls failed: "
                                 f"{type(err).__name__}: {err}") from err
        imported.append(module)
    return imported


class LazyRegistry:
    """Name -> factory, where a factory may be given as "package.module:attribute" (imported once).
    `discover`, when given, runs once before the first lookup (and again after a failed run)."""

    def __init__(self, kind: str, entries: Dict[str, Target], discover: Optional[Callable[[], object]] = None):
        self.kind, self._entries = kind, dict(entries)
        self._discover = discover

    def _discovered(self) -> None:
        discover, self._discover = self._discover, None   # cleared first: a discovered file may look names up
        if discover is not None:
            try:
                discover()
            except BaseException:
                self._discover = discover
                raise

    def register(self, name: str, target: Target) -> None:
        self._entries[name] = target

    def names(self):
        self._discovered()
        return sorted(self._entries)

    def resolve(self, name: str) -> Callable:
        self._discovered()
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
}, discover=discover_model_files)


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
