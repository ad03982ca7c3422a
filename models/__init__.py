"""Public API: `build_model(name, **options)`, `load_pretrained(model, path)`, `list_models()`."""
from models.registry import build_model, list_models, register_model, resolve_model


def load_pretrained(model, path, **kwargs):
    from models.checkpoint import load_pretrained as _load

    return _load(model, path, **kwargs)


__all__ = ["build_model", "list_models", "register_model", "resolve_model", "load_pretrained"]
