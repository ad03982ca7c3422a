"""Process groups and model wrapping: one process, nn.DataParallel, or DDP under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; we read them from the
environment (no `--local_rank` flag, which torch >= 2 launchers spell differently). NCCL is used
on GPUs, gloo on the CPU; multi-node runs use torchrun's own flags (--nnodes, --rdzv_endpoint).
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from models.contract import unwrap  # noqa: F401 (engine code imports it from here)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_distributed() -> bool:
    """Started by torchrun (even with one process: `--nproc_per_node=1` runs DDP) or with WORLD_SIZE > 1."""
    return env_world_size() > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def describe() -> str:
    """How this run is spread: '' for one process, else e.g. ' (DDP, nccl)'."""
    return f" (DDP, {dist.get_backend()})" if is_distributed() else ""


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(use_cuda: bool) -> bool:
    """Join the process group torchrun described; returns True when running distributed."""
    if not launched_distributed() or is_distributed():
        return is_distributed()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def cleanup() -> None:
    """Tear the process group down on every rank together: a rank that destroyed its group while another was
    still exporting could abort at exit ("terminate called without an active exception", seen with gloo)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def min_over_ranks(values, device) -> list:
    """Element-wise minimum of a list of numbers over the ranks (one all-reduce, one host sync)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor([float(v) for v in values], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.tolist()


def gather_objects(obj) -> list:
    """`obj` of every rank, in rank order (a collective: every rank must call it)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(value: float, device) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


class _AutocastReplica(nn.Module):
    """A DataParallel replica that runs under the caller's autocast dtype. torch's parallel_apply re-enters
    autocast in each replica thread with `enabled=` only, and the dtype is thread-local, so without this a
    bf16 run would compute its replicas in fp16 (CUDA's default), with no GradScaler to catch underflow."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args, **kwargs):
        if not torch.is_autocast_enabled(self.device_type):
            return self.module(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def keep_autocast_dtype(replicas, device_type: str = "cuda") -> list:
    """Wrap replicas so each runs under this thread's autocast dtype on `device_type` (if autocast is on)."""
    if not torch.is_autocast_enabled(device_type):
        return list(replicas)
    dtype = torch.get_autocast_dtype(device_type)
    return [_AutocastReplica(r, device_type, dtype) for r in replicas]


class AutocastDataParallel(nn.DataParallel):
    """nn.DataParallel whose replicas keep the autocast dtype (bf16 stays bf16 in every replica)."""

    def parallel_apply(self, replicas, inputs, kwargs):
        return super().parallel_apply(keep_autocast_dtype(replicas, self.src_device_obj.type), inputs, kwargs)


def wrap_model(model: nn.Module, device: torch.device, device_ids, find_unused_parameters: bool = False) -> nn.Module:
    """DDP when distributed, DataParallel when several GPUs are listed, the bare model otherwise."""
    if is_distributed():
        has_params = any(p.requires_grad for p in model.parameters())
        if not has_params:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                   find_unused_parameters=find_unused_parameters)
    if device.type == "cuda" and len(device_ids) > 1:
        return AutocastDataParallel(model, device_ids=list(device_ids))
    return model


def select_device(disable_cuda: bool, device_ids) -> torch.device:
    """CPU when asked or when CUDA is absent; under torchrun the LOCAL_RANK GPU; else device_ids[0]."""
    if disable_cuda or not torch.cuda.is_available():
        return torch.device("cpu")
    if launched_distributed():
        return torch.device("cuda", local_rank())
    count = torch.cuda.device_count()
    usable = [i for i in device_ids if 0 <= i < count] or [0]
    return torch.device("cuda", usable[0])


def usable_device_ids(device: torch.device, device_ids) -> list:
    if device.type != "cuda" or launched_distributed():
        return []
    count = torch.cuda.device_count()
    return [i for i in device_ids if 0 <= i < count]
