"""The training loop itself: one optimizer step (`TrainingLoop.train_step`), what happens between steps
and epochs (validation, checkpoints, curves) and the end of a run (export, the evaluation command).
`engine.train` builds everything the loop needs; the loop keeps exact resume: the checkpoint stores the
position inside the epoch and every process's random state.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from data.mixup import mixup_batch, mixup_rng
from engine import distributed as dist
from engine.checkpoint import export_weights, read_checkpoint, rng_state, save_training_state
from engine.modeling import run_model, to_device
from engine.validate import validate
from models.contract import has_hook
from models.losses import LossTerms
from models.precision import autocast_for
from utils.config import ConfigError, command_line, override_text, public


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


def run_name(cfg) -> str:
    name = cfg["train_options"]["run_name"] or cfg["model"]["model_select"]
    if name in (".", "..") or any(sep in name for sep in "/\\"):
        raise ConfigError(f"train_options.run_name: '{name}' must be a plain folder name (no '/', not '.' or '..'); "
                          "the run folder is <checkpoint_dir>/<run_name>")
    return name


def _batch_psnr(x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean PSNR of a batch, as a 0-dim tensor on the device (read when logged)."""
    mse = torch.mean((x.detach().float().clamp(0, 1) - gt.float()) ** 2, dim=(1, 2, 3))
    return torch.mean(10 * torch.log10(1.0 / mse.clamp_min(1e-12)))


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


class TrainingLoop:
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
        self.log.plot_curves(f"{run_name(self.cfg)} · {self.spec.name}")
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
                _export_path(cfg["model"]["model_save_file"], run_name(cfg), self.run_id), model=self.model,
                config=self.config_snapshot, model_select=self.spec.name, model_options=self.spec.options,
                extra={"step": self.step, "best_metric": best, "run_id": self.run_id})
            plain = os.path.join(cfg["model"]["model_save_file"], f"{run_name(cfg)}.pth")
            if self.result.exported != plain:
                self.log.text(f"{plain} holds another run's weights and was kept; this run's weights: "
                              f"{self.result.exported}")
            minutes = (time.time() - started) / 60
            curves = self.log.plot_curves(f"{run_name(cfg)} · {self.spec.name}")
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
                 override_text("test_dataset.run_name", run_name(cfg))]
    return command_line(cfg, overrides) or "set " + " and ".join(overrides) + " in the config, then evaluate(cfg)"
