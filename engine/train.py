"""Training for every registered model (one process, DataParallel, or DDP under torchrun): `train(cfg)`
checks the config, builds the model, loss, data, optimizer and log, and hands them to engine.loop.

Resuming is exact: the data of (epoch, index) is a pure function of the seed, the shuffling order
of an epoch is a pure function of (seed, epoch), and the checkpoint stores the position inside the
epoch, so a resumed run sees the same batches, weights and optimizer state as an uninterrupted one.
"""
from __future__ import annotations

import functools
import glob
import math
import os
import re
import signal
import uuid
from typing import Any, Callable, Dict, List, Optional

import torch

from engine import distributed as dist
from engine.checkpoint import load_training_state, restore_rng, seed_process
from engine.datasets import build_train_loader, build_val_set
from engine.modeling import (check_channels, has_parameters, instantiate, kaiming_init, load_initial_weights,
                             spec_from_model_section, count_parameters)
from engine.tasks import check_model_for_task, model_scale
from engine.loop import TrainResult, TrainingLoop, run_name
from engine.tracking import RunLogger
from models.contract import has_hook, hook
from models.losses import build_loss
from models.precision import resolve_precision
from utils.config import ConfigError
from utils.io import WriteError, check_writable, holds_run, move_aside, remove_stale_temp_files


def _run_markers(opts) -> tuple:
    """Files every run of ours writes into its folder."""
    return os.path.basename(opts["log_file"]), "history.jsonl", "last.pth"


def _check_before_work(cfg, run_dir: str) -> None:
    """Before anything is built or written: a fresh run does not start over an earlier one unless asked
    (train_options.overwrite moves it aside later), and the run and export folders can be written."""
    opts = cfg["train_options"]
    if not opts["total_iters"] and not opts["epochs"]:
        raise ConfigError("train_options.epochs: 0 (and total_iters 0) trains nothing and would export untrained "
                          "weights; set epochs or total_iters to at least 1")
    if opts["resume"] and opts["overwrite"]:
        raise ConfigError("train_options.overwrite: true together with resume=true; a resumed run continues its "
                          "own folder, so set only one of them")
    try:
        earlier = not opts["resume"] and holds_run(run_dir, _run_markers(opts))
    except ValueError as err:
        raise ConfigError(f"train_options.run_name: {err}") from None
    if earlier and not opts["overwrite"]:
        raise ConfigError(f"train_options.run_name: '{run_dir}' holds an earlier run; continue it with "
                          "train_options.resume=true, start a new one with another train_options.run_name, or set "
                          f"train_options.overwrite=true to move it to {os.path.basename(run_dir)}_archived_<time>/")
    for key, folder in (("train_options.checkpoint_dir", opts["checkpoint_dir"]),
                        ("model.model_save_file", cfg["model"]["model_save_file"])):
        try:
            check_writable(folder)
        except WriteError as err:
            raise ConfigError(f"{key}: {err} (checked before training)") from None


def _remove_stale_temp_files(cfg, run_dir: str) -> list:
    """Temp files of saves killed mid-write: in the run folder, and of this run's exports."""
    name = run_name(cfg)
    export = re.compile(re.escape(name) + r"(_\d+)?\.pth")
    return remove_stale_temp_files(run_dir) + remove_stale_temp_files(
        cfg["model"]["model_save_file"], only=lambda target: bool(export.fullmatch(target)))


def _check_noise_flags(cfg) -> None:
    opts = cfg["train_options"]
    if opts["is_train_jpeg_compression"]:
        raise ConfigError("train_options.is_train_jpeg_compression: JPEG training is not supported "
                          "(the published code has no JPEG training either); set it to false")


def build_optimizer(cfg, model):
    optim = cfg["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    if len(optim["betas"]) != 2:
        raise ConfigError(f"optimizer.betas: expected two numbers, got {optim['betas']}")
    kwargs = dict(lr=optim["lr"], betas=tuple(optim["betas"]), weight_decay=optim["weight_decay"])
    return (torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam)(params, **kwargs)


def warmup_cosine_factor(unit: int, base_lr: float, warmup: int, total: int, eta_min: float) -> float:
    """lr(unit)/base_lr of a linear warm-up over `warmup` units, then cosine to eta_min at `total`:
    lr·(u+1)/W for u < W, else eta_min + ½(lr − eta_min)(1 + cos(π(u − W)/(total − W)))."""
    if unit < warmup:
        return (unit + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(unit - warmup, span) / span
    return (eta_min + 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * progress))) / base_lr


def build_scheduler(cfg, optimizer, total_units: int):
    sched = cfg["scheduler"]
    if sched["warmup_epochs"] and sched["name"] != "cosine":
        raise ConfigError(f"scheduler.warmup_epochs: warm-up is implemented for the cosine schedule only "
                          f"(scheduler.name is '{sched['name']}')")
    if sched["warmup_epochs"] >= max(total_units, 1):
        raise ConfigError(f"scheduler.warmup_epochs: {sched['warmup_epochs']} leaves no cosine phase in a run of "
                          f"{total_units} scheduler steps")
    if sched["name"] == "cosine" and sched["warmup_epochs"]:
        base_lr = cfg["optimizer"]["lr"]
        if base_lr <= 0:
            raise ConfigError("scheduler.warmup_epochs: needs optimizer.lr > 0")
        factor = functools.partial(warmup_cosine_factor, base_lr=base_lr, warmup=sched["warmup_epochs"],
                                   total=total_units, eta_min=sched["eta_min"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if sched["name"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=sched["step_size"], gamma=sched["gamma"])
    if sched["name"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_units, 1), eta_min=sched["eta_min"])
    if sched["name"] == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [cfg["multi_step_lr"]["milestone"]], gamma=0.1)
    return None


def _worker_ignore_signals(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole process group) to the main process, which saves
    and shuts them down. SIGTERM still ends a worker: it is how a parent exiting after an error stops
    workers it could not shut down, and a worker ignoring it would hang that exit forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def training_precision(opts, device) -> str:
    """The concrete precision ("fp32", "bf16", "fp16") of train_options.precision, or of its older name
    `amp` (bf16/fp16 on a GPU, ignored on the CPU, as it always was)."""
    if opts["amp"] != "none":
        if opts["precision"] != "fp32":
            raise ConfigError(f"train_options.amp: '{opts['amp']}' and train_options.precision: '{opts['precision']}' "
                              "both set; amp is the older name of precision, keep only precision")
        return opts["amp"] if device.type == "cuda" else "fp32"
    try:
        return resolve_precision(opts["precision"], device)
    except ValueError as err:
        raise ConfigError(f"train_options.precision: {err}") from None


def train(cfg: Dict[str, Any], step_callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> TrainResult:
    """Train as configured. `step_callback(step, loss)` runs after every optimizer step (tests, hooks);
    `loss` is the step's loss as a detached 0-dim tensor (reading its value costs a host-device sync)."""
    _check_noise_flags(cfg)
    opts = cfg["train_options"]
    device = dist.select_device(opts["disable_cuda"], opts["device_ids"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # fixed patch sizes: pick the fastest convolution once
    distributed = dist.init_from_env(device.type == "cuda")
    try:
        return _train(cfg, device, step_callback)
    finally:
        if distributed:
            dist.cleanup()


def _cuda_devices(device, device_ids) -> List[int]:
    """The CUDA devices whose random generators this process uses (none on the CPU)."""
    if device.type != "cuda":
        return []
    ids = dist.usable_device_ids(device, device_ids)
    return ids if len(ids) > 1 else [device.index or 0]


def _resume_note(state, device, cuda_devices, seed) -> str:
    """Restore this process's RNG states; '' when the continuation is exact, else one line saying why not."""
    reasons = [restore_rng(state, rank=dist.rank(), world=dist.world_size(), cuda_devices=cuda_devices, seed=seed)]
    if device.type == "cuda" and (torch.backends.cudnn.benchmark or not torch.backends.cudnn.deterministic):
        reasons.append("cuDNN picks its convolution algorithms per run (cudnn.benchmark) and some CUDA kernels "
                       "are not deterministic: the losses match an uninterrupted run to float rounding, not bit for bit")
    reasons = [r for r in reasons if r]
    return ("resume is not exact: " + "; ".join(reasons)) if reasons else ""


def _check_early_stop_sync(cfg, model, ids) -> None:
    if not cfg["train_options"]["early_stop_sync"]:
        return
    if not has_hook(model, "early_stop_sync"):
        raise ConfigError(f"train_options.early_stop_sync: {type(model).__name__} has no early stop to synchronise "
                          "(NRL-GDN models do); set it to false")
    if len(ids) > 1:
        raise ConfigError("train_options.early_stop_sync: needs DDP (torchrun); DataParallel replicas each stop on "
                          "their own share, as published (use one entry in device_ids, or torchrun)")
    model.early_stop_sync = True


def _train(cfg, device, step_callback) -> TrainResult:
    """Set up (model, loss, data, optimizer, resume position, log) in this order — it fixes the random
    streams — and run the loop."""
    opts = cfg["train_options"]
    run_dir = os.path.join(opts["checkpoint_dir"], run_name(cfg))
    _check_before_work(cfg, run_dir)
    torch.manual_seed(opts["seed"])
    spec, model, scale = _build_model(cfg, device)
    loss_name, loss_fn = _build_loss(cfg, model)
    ids = dist.usable_device_ids(device, opts["device_ids"])
    _check_early_stop_sync(cfg, model, ids)
    loader, sampler, steps_per_epoch = _build_loader(cfg, scale)
    by_iters = opts["total_iters"] > 0
    total_steps = opts["total_iters"] if by_iters else opts["epochs"] * steps_per_epoch
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, total_steps if by_iters else opts["epochs"])
    precision = training_precision(opts, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    cuda_devices = _cuda_devices(device, opts["device_ids"])
    start = _start_position(cfg, run_dir, device, cuda_devices,
                            model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    log = _open_log(cfg, run_dir, start, f"model {spec.name} ({count_parameters(model):,} parameters), loss {loss_name}, "
                    f"device {device} ({precision}{' from auto' if opts['precision'] == 'auto' else ''}), "
                    f"processes {dist.world_size()}{dist.describe()}, {steps_per_epoch} steps/epoch")
    val_set = _build_val_set(cfg, scale)
    loop = TrainingLoop(cfg=cfg, device=device, model=model, spec=spec, loss_fn=loss_fn, optimizer=optimizer,
                 scheduler=scheduler, scaler=scaler, log=log, run_dir=run_dir, run_id=start["run_id"], val_set=val_set,
                 wrapped=dist.wrap_model(model, device, ids, opts["find_unused_parameters"]),
                 cuda_devices=cuda_devices, step_callback=step_callback, by_iters=by_iters, precision=precision,
                 total_steps=total_steps, steps_per_epoch=steps_per_epoch, epoch=start["epoch"], step=start["step"],
                 best=start["best"])
    return loop.run(loader, sampler, start["skip_batches"])


def _build_model(cfg, device):
    """(spec, model on `device` with its initial weights, the model's scale) for cfg.model."""
    spec = spec_from_model_section(cfg["model"])
    model = instantiate(spec)
    if not has_parameters(model):
        raise ConfigError(f"model.model_select: '{spec.name}' has no trainable parameters; nothing to train "
                          "(set train_dataset.is_train=false to evaluate it)")
    check_channels(model, cfg["train_dataset"]["num_channels"], "train_dataset.num_channels")
    scale = model_scale(model)
    if scale is not None and scale > 1 and cfg["train_dataset"]["task"] != "sisr":
        check_model_for_task(model, cfg["train_dataset"]["task"], 1, "train_dataset.task")
    if cfg["model"]["init"] == "kaiming":
        kaiming_init(model)
    load_initial_weights(model, cfg["model"]["init_from"], cfg["model"]["init_grow"])
    model.to(device)
    if dist.is_distributed():   # same initial weights everywhere (above); distinct random streams from here on
        seed_process(cfg["train_options"]["seed"], dist.rank())
    return spec, model, scale


def _build_loss(cfg, model):
    """(name, loss function): cfg.model.loss, else the model's default, else L1."""
    loss_name = cfg["model"]["loss"] or hook(model, "default_loss") or "l1"
    try:
        return loss_name, build_loss(loss_name, **cfg["model"]["loss_options"])
    except KeyError as err:
        raise ConfigError(f"model.loss: {err.args[0]}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.loss_options: {err}") from None


def _build_loader(cfg, scale):
    """(loader, sampler, steps per epoch) of this process's share of the global batch."""
    opts, world = cfg["train_options"], dist.world_size()
    global_batch = cfg["train_dataset"]["batch_size"]
    if global_batch % world:
        raise ConfigError(f"train_dataset.batch_size: {global_batch} is not divisible by the {world} processes")
    loader, sampler, dataset = build_train_loader(cfg, global_batch // world, dist.rank(), world,
                                                  worker_init_fn=_worker_ignore_signals, scale=scale)
    steps_per_epoch = len(loader)
    if opts["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, opts["max_steps_per_epoch"])
    if steps_per_epoch == 0:
        raise ConfigError(f"train_dataset.batch_size: {global_batch} is larger than the training set "
                          f"({len(dataset)} images); lower it or add images")
    return loader, sampler, steps_per_epoch


def _start_position(cfg, run_dir: str, device, cuda_devices, **state) -> dict:
    """Where the run starts: a resumed checkpoint's position (loaded into `state`: model, optimizer,
    scheduler, scaler) or a fresh run (an earlier run moved aside under overwrite); temp files of killed
    saves removed."""
    opts = cfg["train_options"]
    start = {"epoch": 0, "step": 0, "skip_batches": 0, "best": None, "run_id": uuid.uuid4().hex,
             "archived": "", "resume_note": ""}
    if opts["resume"]:
        pos = load_training_state(_resume_path(opts, run_dir, os.path.join(run_dir, "last.pth")), **state)
        start.update(epoch=pos["epoch"], step=pos["step"], skip_batches=pos["batch_in_epoch"], best=pos["best_metric"],
                     resume_note=_resume_note(pos["state"], device, cuda_devices, opts["seed"]))
        start["run_id"] = pos["run_id"] or start["run_id"]   # checkpoints from before run ids start a new one
    elif dist.is_main():    # only with train_options.overwrite: an earlier run was refused before
        try:
            start["archived"] = move_aside(run_dir, _run_markers(opts))
        except ValueError as err:
            raise ConfigError(f"train_options.run_name: {err}") from None
    start["stale"] = _remove_stale_temp_files(cfg, run_dir) if dist.is_main() else []
    dist.barrier()
    return start


def _open_log(cfg, run_dir: str, start: dict, setup: str) -> RunLogger:
    """The run's logger, its first line (`setup` and the start position) and the notes of `_start_position`."""
    opts = cfg["train_options"]
    log = RunLogger(run_dir, opts["log_file"], enabled=dist.is_main(), tensorboard=opts["tensorboard"],
                    resume_step=start["step"] if opts["resume"] else None)
    log.text(f"{setup}, {'resuming at' if opts['resume'] else 'from'} epoch {start['epoch'] + 1} step {start['step']}")
    if start["archived"]:
        log.text(f"train_options.overwrite: the earlier run in {run_dir} was moved to {start['archived']}")
    if start["stale"]:
        log.text(f"removed {len(start['stale'])} temp file(s) left by saves that were killed: {', '.join(start['stale'])}")
    if start["resume_note"]:
        log.text(start["resume_note"])
    return log


def _build_val_set(cfg, scale):
    """The validation set of rank 0 (None without per-epoch validation or on other ranks)."""
    val_set = build_val_set(cfg, scale) if (cfg["train_options"]["epoch_val"] and dist.is_main()) else None
    if val_set is not None and not val_set:
        raise ConfigError("val_dataset: no validation images (check its folder or .mat files, or set "
                          "train_options.epoch_val=0)")
    return val_set


def _resume_path(opts, run_dir: str, last_path: str) -> str:
    name = opts["resume_model_name"]
    inside = os.path.join(run_dir, name) if name else ""
    path = last_path if not name else (inside if os.path.isfile(inside) else name)
    if not os.path.isfile(path):
        archives = sorted(glob.glob(glob.escape(run_dir) + "_archived_*"))
        hint = f"; the latest earlier run of this name is in {archives[-1]}" if archives else ""
        raise ConfigError(f"train_options.resume: no checkpoint to resume at '{path}' "
                          f"(set resume=false to start a new run, or resume_model_name to a checkpoint){hint}")
    return path

