"""The registries behind every extension point, and the one rule that finds extensions: a file.

An extension is one file under `models/` or `data/` that calls a `register_*` function (see
`EXTENSION_POINTS`). The first lookup in any registry imports every `models/*.py` and `data/*.py` whose
text mentions one of those functions, in folder then file-name order, so nobody has to import the new
file. A file that fails to import stops the lookup with `ExtensionFileError`, naming the file, its own
traceback chained. docs/extending.md walks each extension point with a complete file.
"""
from __future__ import annotations

import difflib
import glob
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

Target = Union[str, Callable]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class ExtensionPoint:
    """One place the project is meant to be extended, declared once (docs/extending.md has a file for each)."""
    name: str
    register: str        # "module:function" that adds one ("" for a protocol: a JSON file, no code)
    folder: str          # where the file goes
    contract: str        # what the registered thing must provide
    selected_by: str     # the config key that picks it


EXTENSION_POINTS: Tuple[ExtensionPoint, ...] = (
    ExtensionPoint("model", "models.registry:register_model", "models",
                   "an nn.Module; optional hooks of models.contract.RestorationModel; unrolled variants subclass "
                   "models.nrlgdn.NRL_GDN and override update(x, y, k, t)", "model.model_select"),
    ExtensionPoint("loss", "models.losses:register_loss", "models",
                   "a factory(**model.loss_options) returning fn(outputs, batch) -> (loss, {term: value})",
                   "model.loss"),
    ExtensionPoint("noise", "data.noise:register_noise", "data",
                   "a factory(**spec keys) returning a data.noise.Noise (corrupt(img, rng) -> (noisy, sigma_map), "
                   "or add(img, rng) -> (noisy, sigma_map, noise) for additive models)", "<degradation>.noise.type"),
    ExtensionPoint("kernels", "data.kernels:register_kernel_sampler", "data",
                   "a factory(**spec keys) returning a data.kernels.Sampler (sample(rng) -> (h×w kernel, extras))",
                   "<degradation>.kernels.type"),
    ExtensionPoint("protocol", "", "configs",
                   "a JSON file holding only test_dataset (images, kernels, protocols: [{name, noise, blur, "
                   "scale}], metrics); its noise and kernels may be any registered type", "--test_config"),
)
MARKERS = tuple(point.register.split(":")[1] for point in EXTENSION_POINTS if point.register)
EXTENSION_FOLDERS = tuple(dict.fromkeys(point.folder for point in EXTENSION_POINTS if point.register))
_NOT_SCANNED = ("__init__",)


class ExtensionFileError(ImportError):
    """A file that registers extensions could not be imported (its error is chained)."""


def discover_files(folder: str, package: str, markers: Iterable[str] = MARKERS) -> List[str]:
    """Import every `<folder>/*.py` whose text mentions one of `markers`, sorted by name; returns the module
    names imported now. An import error names the file; its traceback is chained."""
    imported = []
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        module = f"{package}.{stem}"
        if stem in _NOT_SCANNED or module in sys.modules:
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if not any(marker in text for marker in markers):
            continue
        try:
            importlib.import_module(module)
        except Exception as err:
            raise ExtensionFileError(f"{os.path.relpath(path)}: importing it to find its register_* calls failed: "
                                     f"{type(err).__name__}: {err}") from err
        imported.append(module)
    return imported


def discover_extensions() -> List[str]:
    """`discover_files` over every extension folder of this project (models/, data/)."""
    return [m for folder in EXTENSION_FOLDERS for m in discover_files(os.path.join(ROOT, folder), folder)]


def option_names(factory: Callable) -> Optional[List[str]]:
    """The keyword options a factory takes (its signature), or None when it takes **kwargs (any key)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


class Registry:
    """Name -> factory, where a factory may be given as "package.module:attribute" (imported once).
    `discover` runs once before the first lookup (and again after a failed run)."""

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
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> List[str]:
        self._discovered()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._discovered()
        return name in self._entries

    def resolve(self, name: str) -> Callable:
        self._discovered()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KeyError(f"unknown {self.kind} '{name}'{hint}; known {self.kind}s: {', '.join(self.names())}")
        target = self._entries[name]
        if isinstance(target, str):
            module_name, attr = target.split(":")
            target = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = target
        return target

    def options(self, name: str) -> Optional[List[str]]:
        """The option keys `name` accepts (from its factory's signature), None when any key goes."""
        return option_names(self.resolve(name))

    def required(self, name: str) -> List[str]:
        """The options `name` cannot do without (its factory's parameters without a default)."""
        try:
            params = inspect.signature(self.resolve(name)).parameters.values()
        except (TypeError, ValueError):
            return []
        return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def build_spec(self, spec: dict, where: str, returns: type, default_type: Optional[str] = None):
        """`spec` = {"type": name, **options} built and checked: a known type (KeyError naming the close
        match), only the keys its factory takes, the ones it needs, and a result of type `returns`."""
        options = dict(spec)
        kind = options.pop("type", default_type)
        if not isinstance(kind, str) or kind not in self:
            close = difflib.get_close_matches(str(kind), list(self._entries), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KeyError(f"{where}.type: unknown {kind!r}{hint}, expected one of {self.names()}")
        allowed = self.options(kind)
        unknown = [] if allowed is None else sorted(set(options) - set(allowed))
        if unknown:
            raise KeyError(f"{where}: unknown key(s) {unknown} for type '{kind}', expected {sorted(allowed)}")
        missing = [key for key in self.required(kind) if key not in options]
        if missing:
            raise KeyError(f"{where}: type '{kind}' needs {' and '.join(repr(m) for m in missing)}")
        built = self.build(kind, **options)
        if not isinstance(built, returns):
            raise TypeError(f"{self.kind} '{kind}': its factory returned a {type(built).__name__}, not a "
                            f"{returns.__module__}.{returns.__qualname__}")
        return built

    def build(self, name: str, **options):
        factory = self.resolve(name)
        try:
            return factory(**options)
        except TypeError as err:
            raise TypeError(f"{self.kind} '{name}': bad options {sorted(options)}: {err}") from None
