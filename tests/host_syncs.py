"""Count, on the CPU, the operations that make the host wait for a CUDA device.

On a GPU, `.item()`, `bool(t)`, `float(t)`, `.tolist()`, `nonzero()` and boolean-mask indexing block
until the device has caught up. `HostSyncs` records every such call made while it is active, with the
innermost frame of this repository that asked for it, so tests can bound the syncs of a training step
without a GPU. Calls from inside torch.optim are left out: the optimizers' step counters are CPU
tensors on CUDA too, so reading them costs no sync there.
"""
from __future__ import annotations

import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.unique_consecutive,
            aten._unique2, aten.unique_dim}


def _is_mask(index) -> bool:
    return torch.is_tensor(index) and index.dtype in (torch.bool, torch.uint8)


def _caller():
    """'path:function' of the innermost repository frame, or None for a call made by torch.optim."""
    frame, where = sys._getframe(2), None
    while frame is not None:
        path = frame.f_code.co_filename
        if os.sep + os.path.join("torch", "optim") + os.sep in path:
            return None
        if where is None and path.startswith(ROOT) and not path.endswith("host_syncs.py"):
            where = f"{os.path.relpath(path, ROOT)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return where or "?"


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as syncs: ...`; `syncs.calls` lists (op, 'file:function') in call order."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self._tolist = None

    def _record(self, op: str):
        where = _caller()
        if where is not None:
            self.calls.append((op, where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in SYNC_OPS or (func.overloadpacket is aten.index
                                               and any(_is_mask(i) for i in (args[1] if len(args) > 1 else []))):
            self._record(func.overloadpacket.__name__)
        return func(*args, **kwargs)

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        mode, original = self, self._tolist

        def tolist(t):                      # not dispatched on the CPU; a device-to-host copy on CUDA
            mode._record("tolist")
            return original(t)
        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)
