"""Public API: `build_model(name, **options)`, `load_model(path, **options)`, `load_pretrained(model, path)`,
`list_models()`, `register_model(name, target)`, `with_precision(net, "bf16")` (models/precision.py) and
`tiled(net, tile=512)` (models/tiling.py)."""
from models.registry import build_model, list_models, register_model, resolve_model


def load_pretrained(model, path, **kwargs):
    from models.checkpoint import load_pretrained as _load

    return _load(model, path, **kwargs)


def load_model(path, name=None, **kwargs):
    """The model stored at `path` (name and options from the file, or `name`), in eval mode; keywords
    other than strict/map_location are model options replacing the stored ones."""
    from models.checkpoint import load_model as _load

    return _load(path, name, **kwargs)


def with_precision(net, precision):
    from models.precision import with_precision as _with_precision

    return _with_precision(net, precision)


def tiled(net, tile=512, overlap=None):
    from models.tiling import tiled as _tiled

    return _tiled(net, tile, overlap)


__all__ = ["build_model", "list_models", "register_model", "resolve_model", "load_pretrained", "load_model",
           "with_precision", "tiled"]
