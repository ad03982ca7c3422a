"""Training loop for every registered model: one process, DataParallel, or DDP under torchrun.

Resuming is exact: the data of (epoch, index) is a pure function of the seed, the shuffling order
of an epoch is a pure function of (seed, epoch), and the checkpoint stores the position inside the
epoch, so a resumed run sees the same batches, weights and optimizer state as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import math
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from data.mixup import mixup_batch, mixup_rng
from engine import distributed as dist
from engine.checkpoint import (export_weights, load_training_state, read_checkpoint, restore_rng, rng_state,
                               save_training_state, seed_process)
from engine.datasets import build_train_loader, build_val_set
from engine.modeling import (check_channels, has_parameters, instantiate, kaiming_init, load_initial_weights, run_model,
                             spec_from_model_section, count_parameters, to_device)
from engine.tasks import check_model_for_task, model_scale
from engine.tracking import RunLogger
from engine.validate import validate
from models.contract import has_hook, hook
from models.losses import LossTerms, build_loss
from models.precision import autocast_for, resolve_precision
from utils.config import ConfigError, command_line, override_text, public
from utils.io import WriteError, check_writable, holds_run, move_aside, remove_stale_temp_files


class _OnError:
    """Calls `callback` when the block raises an Exception (the exception still propagates)."""

    def __init__(self, callback):
        self.callback = callback

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is not None and issubclass(kind, Exception):
            try:
                self.callback()
            except Exception as save_err:  # never hide the original error behind a failed save
                err.add_note(f"(saving the progress failed too: {type(save_err).__name__}: {save_err})")
        return False


@dataclass
class TrainResult:
    status: str                      # "completed" | "interrupted"
    history: List[Dict[str, float]] = field(default_factory=list)
    run_dir: str = ""
    last_checkpoint: str = ""
    best_checkpoint: str = ""
    exported: str = ""
    model: Any = None


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary. A second signal aborts."""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}
        self._saving = self._abort_after_save = False

    def _handler(self, signum, frame):
        if self.requested:      # a second signal: stop now (a stuck step never reaches the save)
            if self._saving:    # ... but never inside a file: finish it, then stop
                self._abort_after_save = True
                return
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def saving(self):
        """A second signal arriving during the block aborts right after it, with the file complete."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._abort_after_save:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _run_name(cfg) -> str:
    name = cfg["train_options"]["run_name"] or cfg["model"]["model_select"]
    if name in (".", "..") or any(sep in name for sep in "/\\"):
        raise ConfigError(f"train_options.run_name: '{name}' must be a plain folder name (no '/', not '.' or '..'); "
                          "the run folder is <checkpoint_dir>/<run_name>")
    return name


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
    name = _run_name(cfg)
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


def _batch_psnr(x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean PSNR of a batch, as a 0-dim tensor on the device (read when logged)."""
    mse = torch.mean((x.detach().float().clamp(0, 1) - gt.float()) ** 2, dim=(1, 2, 3))
    return torch.mean(10 * torch.log10(1.0 / mse.clamp_min(1e-12)))


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


def _export_path(folder: str, name: str, run_id: str) -> str:
    """`<folder>/<name>.pth`, or `<name>_2.pth`, `<name>_3.pth`, ...: the first that is free or was exported
    by this same run, so an export never replaces weights from another run (a shipped checkpoint, say)."""
    for n in itertools.count(1):
        path = os.path.join(folder, f"{name}.pth" if n == 1 else f"{name}_{n}.pth")
        if not os.path.exists(path):
            return path
        try:
            if read_checkpoint(path).get("run_id") == run_id:
                return path
        except (ConfigError, AttributeError):  # unreadable or not a dict: not ours either
            pass


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
    run_dir = os.path.join(opts["checkpoint_dir"], _run_name(cfg))
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
    loop = _Loop(cfg=cfg, device=device, model=model, spec=spec, loss_fn=loss_fn, optimizer=optimizer,
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


class _Window:
    """The losses (and loss terms) of the steps since the last read, kept on the device; `read` brings
    them to the host in one sync."""

    def __init__(self):
        self.entries: List[tuple] = []          # (epoch, step, loss tensor)
        self.terms: Dict[str, Any] = {}         # name -> sum over the window (tensor or float)

    def add(self, epoch: int, step: int, loss: torch.Tensor, terms) -> None:
        self.entries.append((epoch, step, loss.detach()))
        values = terms.tensors() if isinstance(terms, LossTerms) else terms
        for name, value in values.items():
            value = value.detach().float() if torch.is_tensor(value) else float(value)
            self.terms[name] = self.terms[name] + value if name in self.terms else value

    def read(self, *extra: torch.Tensor):
        """([{epoch, step, loss}], {term: sum}, [extra values]) as floats; empties the window."""
        entries, terms = self.entries, self.terms
        self.entries, self.terms = [], {}
        if not entries:
            return [], {}, [float(e) for e in extra]
        on_device = [name for name, v in terms.items() if torch.is_tensor(v)]
        packed = torch.stack([e[2].float().reshape(()) for e in entries]
                             + [terms[name].reshape(()) for name in on_device]
                             + [e.detach().float().reshape(()).to(entries[0][2].device) for e in extra])
        values = packed.tolist()    # the one host-device sync
        n, m = len(entries), len(on_device)
        records = [{"epoch": ep, "step": st, "loss": v} for (ep, st, _), v in zip(entries, values[:n])]
        sums = {name: values[n + on_device.index(name)] if name in on_device else v for name, v in terms.items()}
        return records, sums, values[n + m:]


def _first_nonfinite(records) -> Optional[dict]:
    return next((r for r in records if not math.isfinite(r["loss"])), None)


class _Loop:
    """The training loop: the state between two optimizer steps and what happens at each of them.

    Host-device syncs: none per step beyond the model's own (kernel validation, the published early
    stop) — the losses stay on the device and are read every train_options.log_every steps, which is
    also when non-finite losses are caught and (under DDP) stop requests are agreed on."""

    def __init__(self, *, cfg, device, model, spec, loss_fn, optimizer, scheduler, scaler, log, run_dir, run_id,
                 val_set, wrapped, cuda_devices, step_callback, by_iters, precision, total_steps, steps_per_epoch, epoch,
                 step, best):
        self.cfg, self.opts, self.device, self.model, self.spec = cfg, cfg["train_options"], device, model, spec
        self.loss_fn, self.optimizer, self.scheduler, self.scaler = loss_fn, optimizer, scheduler, scaler
        self.log, self.run_dir, self.run_id, self.val_set, self.wrapped = log, run_dir, run_id, val_set, wrapped
        self.cuda_devices, self.step_callback, self.by_iters = cuda_devices, step_callback, by_iters
        self.precision = precision
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.epoch, self.step, self.best, self.in_epoch = epoch, step, best, 0
        self.last_path, self.best_path = os.path.join(run_dir, "last.pth"), os.path.join(run_dir, "best.pth")
        self.last_saved_step = step if self.opts["resume"] else None
        self.result = TrainResult(status="completed", run_dir=run_dir, model=model)
        self.config_snapshot = public(cfg)
        self.window, self.norms, self.stop, self.progress = _Window(), None, None, None
        self.unlogged = ([], {})       # records and term sums read since the last log line
        self.consistent = True      # the state is between two steps (saveable)

    # -- bookkeeping -----------------------------------------------------------------------------
    def finished(self) -> bool:
        return self.step >= self.total_steps if self.by_iters else self.epoch >= self.opts["epochs"]

    def every(self, n: int) -> bool:
        return n > 0 and self.step % n == 0

    def save(self, path: str, epoch: int, in_epoch: int, collective: bool = True) -> None:
        """Rank 0 writes. `collective`: every rank calls this at the same point and its RNG state is kept."""
        states = dist.gather_objects(rng_state(self.cuda_devices)) if collective else [rng_state(self.cuda_devices)]
        if dist.is_main():
            with self.stop.saving() if self.stop is not None else contextlib.nullcontext():
                save_training_state(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                    scaler=self.scaler, epoch=epoch, step=self.step, batch_in_epoch=in_epoch,
                                    best_metric=self.best, config=self.config_snapshot, model_select=self.spec.name,
                                    model_options=self.spec.options, run_id=self.run_id, rng_states=states,
                                    world_size=dist.world_size())
        if path == self.last_path:
            self.last_saved_step = self.step

    def flush(self, pending_step: Optional[int] = None, extra=()):
        """Read the window (one sync; every rank calls this together), record the losses and raise on a
        non-finite one. `pending_step`: the step whose update is not applied yet. Returns (extra values,
        whether any rank asked to stop)."""
        records, sums, values = self.window.read(*extra)
        self.result.history.extend(records)
        self.unlogged[0].extend(records)
        for name, value in sums.items():
            self.unlogged[1][name] = self.unlogged[1].get(name, 0.0) + value
        bad = _first_nonfinite(records)
        earliest, no_stop = dist.min_over_ranks([bad["step"] if bad else math.inf,
                                                 0.0 if self.stop.requested else 1.0], self.device)
        if math.isfinite(earliest):
            self._nonfinite(int(earliest), bad, pending_step)
        return values, no_stop == 0

    def _nonfinite(self, earliest: int, bad: Optional[dict], pending_step: Optional[int]):
        rank = f" on rank {dist.rank()}" if dist.is_distributed() else ""
        what = (f"loss became {bad['loss']} at step {bad['step']} (epoch {bad['epoch']}){rank}"
                if bad and bad["step"] == earliest else f"loss became non-finite at step {earliest} on another process")
        if earliest == pending_step:        # caught before its update: the state before the step is intact
            path = os.path.join(self.run_dir, "nonfinite.pth")
            self.save(path, self.epoch, self.in_epoch)
            dist.barrier()                  # rank 0 has written it before any rank reports it
            raise FloatingPointError(f"{what}; the state before that step is saved to {path}")
        self.consistent = False             # the weights took that step: nothing of them is saved
        last = (f"the last checkpoint is {self.last_path} (step {self.last_saved_step})"
                if self.last_saved_step is not None else "no checkpoint was written yet")
        raise FloatingPointError(f"{what}; losses are checked every {self.opts['log_every']} steps "
                                 f"(train_options.log_every), so the weights were updated with it and are not saved; {last}")

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, batch) -> bool:
        """Forward, backward and update on one batch; returns whether to stop after it (a signal)."""
        self.wrapped.train()
        batch = to_device(batch, self.device)
        if self.cfg["train_dataset"]["mixup"]:
            batch = mixup_batch(batch, mixup_rng(self.opts["seed"] + dist.rank(), self.step))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.precision, self.device):
            outputs = run_model(self.wrapped, batch)
        loss, parts = self.loss_fn(outputs, batch)     # the loss in float32, outside autocast
        self.window.add(self.epoch + 1, self.step + 1, loss, parts)
        logging = (self.step + 1) % self.opts["log_every"] == 0 or self.step == 0
        stop = False
        if logging:     # the losses so far, checked before this step's update
            (psnr,), stop = self.flush(self.step + 1, (_batch_psnr(outputs["x"], batch["x"]),))
        self._update(loss)
        if logging:
            self._log(psnr)
        self.progress.update(1)
        if self.step_callback is not None:
            self.step_callback(self.step, loss.detach())
        return stop or (not dist.is_distributed() and self.stop.requested)

    def _update(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip_own = has_hook(self.model, "clip_gradients")
        self.norms = self.model.clip_gradients() if clip_own else None
        if not clip_own and self.cfg["optimizer"]["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["optimizer"]["grad_clip"])
        self.consistent = False
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.by_iters and self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        self.in_epoch += 1
        self.consistent = True

    def _log(self, psnr: float) -> None:
        """One log line: the mean loss (and loss terms) of the steps since the previous one."""
        (records, sums), self.unlogged = self.unlogged, ([], {})
        loss = sum(r["loss"] for r in records) / len(records)
        scalars = {"loss": loss, "psnr_train": psnr, "lr": self.optimizer.param_groups[0]["lr"]}
        scalars.update({f"loss/{k}": v / len(records) for k, v in sums.items()})
        if isinstance(self.norms, dict) and self.norms:
            values = torch.stack([torch.as_tensor(v).float().reshape(()) for v in self.norms.values()]).tolist()
            scalars.update({f"grad_norm/{k}": v for k, v in zip(self.norms, values)})
        self.log.scalars(scalars, self.step, self.epoch + 1)
        self.progress.set_postfix(loss=f"{loss:.4g}", epoch=self.epoch + 1)

    # -- between steps ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Rank 0 validates; a better PSNR is saved to best.pth (by rank 0 alone)."""
        if self.val_set is None:
            return
        log_epoch = self.epoch if self.in_epoch == 0 else self.epoch + 1
        val_psnr, grid = validate(self.model, self.val_set, self.device)
        self.log.scalars({"psnr_val": val_psnr}, self.step, log_epoch)
        better = self.best is None or val_psnr > self.best
        when = (f"after epoch {self.epoch} (step {self.step})" if self.in_epoch == 0
                else f"at step {self.step} (epoch {log_epoch})")
        self.log.text(f"validation {when}: PSNR {val_psnr:.2f} dB on {len(self.val_set)} image(s)"
                      + (" (best so far)" if better else f", best {self.best:.2f} dB"))
        self.log.image("validation (degraded | restored | ground truth)", grid, self.step)
        self.log.plot_curves(f"{_run_name(self.cfg)} · {self.spec.name}")
        if self.best is None or val_psnr > self.best:
            self.best = val_psnr
            self.save(self.best_path, self.epoch, self.in_epoch, collective=False)
            self.result.best_checkpoint = self.best_path

    def mid_epoch(self) -> None:
        """Step-interval validation and saving inside an epoch (train_options.*_every_steps)."""
        val_due = self.opts["epoch_val"] > 0 and self.every(self.opts["val_every_steps"])
        save_due = self.every(self.opts["save_every_steps"])
        if val_due or save_due:
            self.flush()
            if val_due:
                self.validate()
            if save_due:
                self.save(self.last_path, self.epoch, self.in_epoch)
            dist.barrier()

    def end_epoch(self) -> None:
        opts = self.opts
        self.consistent = False
        self.epoch += 1
        self.in_epoch = 0
        if not self.by_iters and self.scheduler is not None:
            self.scheduler.step()
        self.consistent = True
        val_due = opts["epoch_val"] > 0 and (self.every(opts["val_every_steps"]) if opts["val_every_steps"]
                                             else self.epoch % opts["epoch_val"] == 0)
        save_due = self.finished() or (self.every(opts["save_every_steps"]) if opts["save_every_steps"]
                                       else self.epoch % opts["epoch_save"] == 0)
        if val_due or save_due:
            self.flush()
        if val_due:
            self.validate()
        if save_due:
            self.save(self.last_path, self.epoch, 0)
        dist.barrier()      # one barrier per epoch on every rank: rank 0 validated and saved

    def save_after_error(self) -> None:
        self.progress.close()        # the error message starts on a line of its own
        if not (self.consistent and dist.is_main()):
            return
        records = self.window.read()[0]      # this process only: the others may not be here
        self.result.history.extend(records)
        bad = _first_nonfinite(records)
        if bad:
            self.log.text(f"error at epoch {self.epoch + 1}, step {self.step}: progress not saved (the loss became "
                          f"{bad['loss']} at step {bad['step']})")
            return
        self.save(self.last_path, self.epoch, self.in_epoch, collective=False)
        self.log.text(f"error at epoch {self.epoch + 1}, step {self.step}: progress saved to {self.last_path} "
                      "(resume with train_options.resume=true)")

    # -- the run ---------------------------------------------------------------------------------
    def run(self, loader, sampler, skip_batches: int) -> TrainResult:
        self.progress = self.log.progress(total=self.total_steps, initial=self.step, desc=f"train {self.spec.name}")
        started = time.time()
        with _StopRequest() as self.stop, _OnError(self.save_after_error):
            while not self.finished():
                sampler.set_epoch(self.epoch)       # the epoch travels with the indices to the workers
                sampler.skip = skip_batches * loader.batch_size
                self.in_epoch, skip_batches = skip_batches, 0
                for batch in loader:
                    if self.in_epoch >= self.steps_per_epoch:
                        break
                    if self.train_step(batch):
                        return self.interrupted()
                    if self.by_iters and self.step >= self.total_steps:
                        break
                    if self.in_epoch < self.steps_per_epoch:
                        self.mid_epoch()
                if self.in_epoch < self.steps_per_epoch:      # iteration budget reached inside the epoch
                    self.flush()
                    self.save(self.last_path, self.epoch, self.in_epoch)
                    break
                self.end_epoch()
            self.flush()
        return self.finish(started)

    def interrupted(self) -> TrainResult:
        self.flush()
        self.save(self.last_path, self.epoch, self.in_epoch)
        dist.barrier()
        self.log.text(f"stopped by {self.stop.signal_name or 'a signal'} at epoch {self.epoch + 1}, step {self.step}; "
                      f"resume with train_options.resume=true ({self.last_path})")
        self.progress.close()
        self.log.close()
        self.result.status, self.result.last_checkpoint = "interrupted", self.last_path
        return self.result

    def finish(self, started: float) -> TrainResult:
        self.progress.close()
        self.result.last_checkpoint = self.last_path
        if dist.is_main():
            cfg, best = self.cfg, self.best
            self.result.exported = export_weights(
                _export_path(cfg["model"]["model_save_file"], _run_name(cfg), self.run_id), model=self.model,
                config=self.config_snapshot, model_select=self.spec.name, model_options=self.spec.options,
                extra={"step": self.step, "best_metric": best, "run_id": self.run_id})
            plain = os.path.join(cfg["model"]["model_save_file"], f"{_run_name(cfg)}.pth")
            if self.result.exported != plain:
                self.log.text(f"{plain} holds another run's weights and was kept; this run's weights: "
                              f"{self.result.exported}")
            minutes = (time.time() - started) / 60
            curves = self.log.plot_curves(f"{_run_name(cfg)} · {self.spec.name}")
            self.log.text(f"done: {self.step} steps in {minutes:.1f} min; last {self.last_path}"
                          + (f", best {self.best_path} ({best:.2f} dB)" if best is not None else "")
                          + f"; weights {self.result.exported}" + (f"; curves {curves}" if curves else ""))
            self.log.text("evaluate the exported weights with:")
            self.log.text(evaluation_command(cfg, self.result.exported), stamp=False)
        self.log.close()
        return self.result


def evaluation_command(cfg, exported: str) -> str:
    """The command that evaluates an export: the run's own configs and --set, as an evaluation of these
    weights, with results in results/<run_name>/ (configs built in Python get the keys to set instead)."""
    overrides = ["train_dataset.is_train=false", override_text("model.pretrained", exported),
                 override_text("test_dataset.run_name", _run_name(cfg))]
    return command_line(cfg, overrides) or "set " + " and ".join(overrides) + " in the config, then evaluate(cfg)"
