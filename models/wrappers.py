"""A model wrapper that still looks like the model it wraps (`models.with_precision`, `models.tiled`).

Attributes the wrapper lacks (`input_keys`, `in_nc`, `boundary`, `last_num_steps`, ...) are read from the
wrapped model; `engine.distributed.unwrap` sees through wrappers, so the engine sets options such as
`record_steps` on the real model. The state_dict keys carry a `module.` prefix, which
`models.load_pretrained` strips, as for DataParallel.
"""
from __future__ import annotations

import torch.nn as nn


class ModelWrapper(nn.Module):
    """Base class: holds the wrapped model as `self.module` and forwards unknown attribute reads to it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(super().__getattr__("module"), name)


def innermost(model: nn.Module) -> nn.Module:
    """The model inside any number of ModelWrappers."""
    while isinstance(model, ModelWrapper):
        model = model.module
    return model
