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


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(use_cuda: bool) -> bool:
    """Join the process group torchrun described; returns True when running distributed."""
    if env_world_size() <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return True


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_true(flag: bool, device) -> bool:
    """True on every rank when `flag` is True on any rank (e.g. a stop request one rank received)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, device) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def wrap_model(model: nn.Module, device: torch.device, device_ids) -> nn.Module:
    """DDP when distributed, DataParallel when several GPUs are listed, the bare model otherwise."""
    if is_distributed():
        has_params = any(p.requires_grad for p in model.parameters())
        if not has_params:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if device.type == "cuda" and len(device_ids) > 1:
        return nn.DataParallel(model, device_ids=list(device_ids))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel/DDP and our wrappers (models.with_precision, models.tiled)."""
    from models.wrappers import ModelWrapper

    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel, ModelWrapper)):
        model = model.module
    return model


def select_device(disable_cuda: bool, device_ids) -> torch.device:
    """CPU when asked or when CUDA is absent; under torchrun the LOCAL_RANK GPU; else device_ids[0]."""
    if disable_cuda or not torch.cuda.is_available():
        return torch.device("cpu")
    if env_world_size() > 1:
        return torch.device("cuda", local_rank())
    count = torch.cuda.device_count()
    usable = [i for i in device_ids if 0 <= i < count] or [0]
    return torch.device("cuda", usable[0])


def usable_device_ids(device: torch.device, device_ids) -> list:
    if device.type != "cuda" or env_world_size() > 1:
        return []
    count = torch.cuda.device_count()
    return [i for i in device_ids if 0 <= i < count]
