"""Training loop for every registered model: one process, DataParallel, or DDP under torchrun.

Resuming is exact: the data of (epoch, index) is a pure function of the seed, the shuffling order
of an epoch is a pure function of (seed, epoch), and the checkpoint stores the position inside the
epoch, so a resumed run sees the same batches, weights and optimizer state as an uninterrupted one.
"""
from __future__ import annotations

import functools
import glob
import itertools
import math
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from data.mixup import mixup_batch, mixup_rng
from engine import distributed as dist
from engine.checkpoint import export_weights, load_training_state, read_checkpoint, save_training_state
from engine.datasets import build_train_loader, build_val_set
from engine.modeling import (check_channels, has_parameters, instantiate, kaiming_init, load_initial_weights, run_model,
                             spec_from_model_section, count_parameters)
from engine.tasks import check_model_for_task, model_scale
from engine.tracking import RunLogger
from engine.validate import validate
from models.losses import build_loss
from models.precision import autocast_for, resolve_precision
from utils.config import ConfigError, public
from utils.io import move_aside


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

    def _handler(self, signum, frame):
        if self.requested:      # a second signal: stop now (a stuck step never reaches the save)
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

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


def _check_noise_flags(cfg) -> None:
    opts = cfg["train_options"]
    if opts["is_train_jpeg_compression"]:
        raise ConfigError("train_options.is_train_jpeg_compression: JPEG training is not supported "
                          "(the published code has no JPEG training either); set it to false")


def build_optimizer(cfg, model):
    o = cfg["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    if len(o["betas"]) != 2:
        raise ConfigError(f"optimizer.betas: expected two numbers, got {o['betas']}")
    kwargs = dict(lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"])
    return (torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam)(params, **kwargs)


def warmup_cosine_factor(unit: int, base_lr: float, warmup: int, total: int, eta_min: float) -> float:
    """lr(unit)/base_lr of a linear warm-up over `warmup` units, then cosine to eta_min at `total`:
    lr·(u+1)/W for u < W, else eta_min + ½(lr − eta_min)(1 + cos(π(u − W)/(total − W)))."""
    if unit < warmup:
        return (unit + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(unit - warmup, span) / span
    return (eta_min + 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * progress))) / base_lr


def build_scheduler(cfg, optimizer, total_units: int):
    s = cfg["scheduler"]
    if s["warmup_epochs"] and s["name"] != "cosine":
        raise ConfigError(f"scheduler.warmup_epochs: warm-up is implemented for the cosine schedule only "
                          f"(scheduler.name is '{s['name']}')")
    if s["warmup_epochs"] >= max(total_units, 1):
        raise ConfigError(f"scheduler.warmup_epochs: {s['warmup_epochs']} leaves no cosine phase in a run of "
                          f"{total_units} scheduler steps")
    if s["name"] == "cosine" and s["warmup_epochs"]:
        base_lr = cfg["optimizer"]["lr"]
        if base_lr <= 0:
            raise ConfigError("scheduler.warmup_epochs: needs optimizer.lr > 0")
        factor = functools.partial(warmup_cosine_factor, base_lr=base_lr, warmup=s["warmup_epochs"],
                                   total=total_units, eta_min=s["eta_min"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if s["name"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s["step_size"], gamma=s["gamma"])
    if s["name"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_units, 1), eta_min=s["eta_min"])
    if s["name"] == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [cfg["multi_step_lr"]["milestone"]], gamma=0.1)
    return None


def _worker_ignore_signals(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole process group) to the main process, which saves
    and shuts them down. SIGTERM still ends a worker: it is how a parent exiting after an error stops
    workers it could not shut down, and a worker ignoring it would hang that exit forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _to_device(batch: Dict[str, Any], device) -> Dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _batch_psnr(x: torch.Tensor, gt: torch.Tensor) -> float:
    mse = torch.mean((x.detach().float().clamp(0, 1) - gt.float()) ** 2, dim=(1, 2, 3))
    return float(torch.mean(10 * torch.log10(1.0 / mse.clamp_min(1e-12))))


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


def train(cfg: Dict[str, Any], step_callback: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train as configured. `step_callback(step, loss)` runs after every optimizer step (tests, hooks)."""
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


def _train(cfg, device, step_callback) -> TrainResult:
    opts = cfg["train_options"]
    torch.manual_seed(opts["seed"])
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
    loss_name = cfg["model"]["loss"] or getattr(model, "default_loss", None) or "l1"
    try:
        loss_fn = build_loss(loss_name, **cfg["model"]["loss_options"])
    except KeyError as err:
        raise ConfigError(f"model.loss: {err.args[0]}") from None
    except TypeError as err:
        raise ConfigError(f"model.loss_options: {err}") from None

    world = dist.world_size()
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
    by_iters = opts["total_iters"] > 0
    total_steps = opts["total_iters"] if by_iters else opts["epochs"] * steps_per_epoch
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, total_steps if by_iters else opts["epochs"])
    precision = training_precision(opts, device)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    run_dir = os.path.join(opts["checkpoint_dir"], _run_name(cfg))
    last_path, best_path = os.path.join(run_dir, "last.pth"), os.path.join(run_dir, "best.pth")
    epoch, step, skip_batches, best = 0, 0, 0, None
    run_id, archived = uuid.uuid4().hex, ""
    if opts["resume"]:
        name = opts["resume_model_name"]
        inside = os.path.join(run_dir, name) if name else ""
        path = last_path if not name else (inside if os.path.isfile(inside) else name)
        if not os.path.isfile(path):
            archives = sorted(glob.glob(glob.escape(run_dir) + "_archived_*"))
            hint = f"; the latest earlier run of this name is in {archives[-1]}" if archives else ""
            raise ConfigError(f"train_options.resume: no checkpoint to resume at '{path}' "
                              f"(set resume=false to start a new run, or resume_model_name to a checkpoint){hint}")
        pos = load_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        epoch, step, skip_batches, best = pos["epoch"], pos["step"], pos["batch_in_epoch"], pos["best_metric"]
        run_id = pos["run_id"] or run_id   # checkpoints written before run ids existed start a new one
    elif dist.is_main():
        try:
            archived = move_aside(run_dir, (os.path.basename(opts["log_file"]), "history.jsonl", "last.pth"))
        except ValueError as err:
            raise ConfigError(f"train_options.run_name: {err}") from None
    dist.barrier()

    log = RunLogger(run_dir, opts["log_file"], enabled=dist.is_main(), tensorboard=opts["tensorboard"])
    log.text(f"model {spec.name} ({count_parameters(model):,} parameters), loss {loss_name}, device {device} "
             f"({precision}{' from auto' if opts['precision'] == 'auto' else ''}), "
             f"processes {world}, {steps_per_epoch} steps/epoch, {'resuming at' if opts['resume'] else 'from'} "
             f"epoch {epoch + 1} step {step}")
    if archived:
        log.text(f"a previous run was in {run_dir}: moved to {archived} (set train_options.resume=true to continue one)")
    val_set = build_val_set(cfg, scale) if (opts["epoch_val"] and dist.is_main()) else None
    if val_set is not None and not val_set:
        raise ConfigError("val_dataset: no validation images (check its folder or .mat files, or set "
                          "train_options.epoch_val=0)")
    wrapped = dist.wrap_model(model, device, dist.usable_device_ids(device, opts["device_ids"]))
    clip_own = hasattr(model, "clip_gradients")
    mixup = cfg["train_dataset"]["mixup"]
    result = TrainResult(status="completed", run_dir=run_dir, model=model)
    config_snapshot = public(cfg)

    def save(path, ep, in_epoch):
        """Rank 0 writes; callers that need the file on every rank add a barrier."""
        if dist.is_main():
            save_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                epoch=ep, step=step, batch_in_epoch=in_epoch, best_metric=best,
                                config=config_snapshot, model_select=spec.name, model_options=spec.options,
                                run_id=run_id)

    def finished() -> bool:
        return step >= total_steps if by_iters else epoch >= opts["epochs"]

    in_epoch, consistent = skip_batches, True   # consistent: the state is between two steps (saveable)

    def save_after_error():
        progress.close()        # the error message starts on a line of its own
        if consistent and dist.is_main():
            save(last_path, epoch, in_epoch)
            log.text(f"error at epoch {epoch + 1}, step {step}: progress saved to {last_path} "
                     "(resume with train_options.resume=true)")

    progress = log.progress(total=total_steps, initial=step, desc=f"train {spec.name}")
    started = time.time()
    with _StopRequest() as stop, _OnError(save_after_error):
        while not finished():
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            sampler.skip = skip_batches * loader.batch_size
            in_epoch = skip_batches
            for batch in loader:
                if in_epoch >= steps_per_epoch:
                    break
                wrapped.train()
                batch = _to_device(batch, device)
                if mixup:
                    batch = mixup_batch(batch, mixup_rng(opts["seed"] + dist.rank(), step))
                optimizer.zero_grad(set_to_none=True)
                with autocast_for(precision, device):
                    outputs = run_model(wrapped, batch)
                loss, parts = loss_fn(outputs, batch)     # the loss in float32, outside autocast
                if dist.any_true(not bool(torch.isfinite(loss)), device):   # every rank stops together
                    save(os.path.join(run_dir, "nonfinite.pth"), epoch, in_epoch)
                    dist.barrier()
                    raise FloatingPointError(f"loss became {float(loss)} at step {step + 1} (epoch {epoch + 1}); "
                                             f"state before the step saved to {run_dir}/nonfinite.pth")
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(optimizer)
                norms = model.clip_gradients() if clip_own else None
                if not clip_own and cfg["optimizer"]["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["optimizer"]["grad_clip"])
                consistent = False
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if by_iters and scheduler is not None:
                    scheduler.step()
                step += 1
                in_epoch += 1
                consistent = True
                loss_value = float(loss.detach())
                record = {"epoch": epoch + 1, "step": step, "loss": loss_value}
                result.history.append(record)
                if step % opts["log_every"] == 0 or step == 1:
                    scalars = {"loss": loss_value, "psnr_train": _batch_psnr(outputs["x"], batch["x"]),
                               "lr": optimizer.param_groups[0]["lr"]}
                    scalars.update({f"loss/{k}": v for k, v in parts.items()})
                    if isinstance(norms, dict):
                        scalars.update({f"grad_norm/{k}": float(v) for k, v in norms.items()})
                    log.scalars(scalars, step, epoch + 1)
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4g}", epoch=epoch + 1)
                if step_callback is not None:
                    step_callback(step, loss_value)
                if by_iters and step >= total_steps:
                    break
                if dist.any_true(stop.requested, device):
                    save(last_path, epoch, in_epoch)
                    dist.barrier()
                    log.text(f"stopped by {stop.signal_name or 'a signal'} at epoch {epoch + 1}, step {step}; "
                             f"resume with train_options.resume=true ({last_path})")
                    progress.close()
                    log.close()
                    result.status, result.last_checkpoint = "interrupted", last_path
                    return result
            skip_batches = 0
            epoch_done = in_epoch >= steps_per_epoch
            if not epoch_done:      # iteration budget reached inside the epoch
                save(last_path, epoch, in_epoch)
                break
            consistent = False
            epoch += 1
            in_epoch = 0
            if not by_iters and scheduler is not None:
                scheduler.step()
            consistent = True
            if val_set is not None and epoch % opts["epoch_val"] == 0:
                val_psnr, grid = validate(model, val_set, device, cfg)
                log.scalars({"psnr_val": val_psnr}, step, epoch)
                log.image("validation (degraded | restored | ground truth)", grid, step)
                log.plot_curves(f"{_run_name(cfg)} · {spec.name}")
                if best is None or val_psnr > best:
                    best = val_psnr
                    save(best_path, epoch, 0)
                    result.best_checkpoint = best_path
            if epoch % opts["epoch_save"] == 0 or finished():
                save(last_path, epoch, 0)
            dist.barrier()      # one barrier per epoch on every rank: rank 0 validated and saved
    progress.close()
    result.last_checkpoint = last_path
    if dist.is_main():
        result.exported = export_weights(_export_path(cfg["model"]["model_save_file"], _run_name(cfg), run_id),
                                         model=model, config=config_snapshot, model_select=spec.name,
                                         model_options=spec.options,
                                         extra={"step": step, "best_metric": best, "run_id": run_id})
        minutes = (time.time() - started) / 60
        log.text(f"done: {step} steps in {minutes:.1f} min; last {last_path}"
                 + (f", best {best_path} ({best:.2f} dB)" if best is not None else "") + f"; weights {result.exported}")
    log.close()
    return result
