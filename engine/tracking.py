"""Run logging: a text log, a JSON-lines history, TensorBoard scalars/images and tqdm, on rank 0 only."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from tqdm import tqdm

from utils.io import WriteError, atomic_write_text


class _NoProgress:
    def update(self, *_):
        pass

    def set_postfix(self, *_, **__):
        pass

    def close(self):
        pass


def _append(f, line: str) -> None:
    """Append a line and flush; a failed write (disk full) names the file."""
    try:
        f.write(line)
        f.flush()
    except OSError as err:
        raise WriteError(f.name, err, note="") from err


def _cut_history(path: str, last_step: int) -> None:
    """Keep the records of steps <= last_step: a resumed run repeats the steps logged after its checkpoint."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):   # a line cut short by a crash
            continue
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))


class RunLogger:
    """`resume_step`: the step a resumed run continues from; later records of the killed run are dropped
    (history.jsonl is cut back, TensorBoard purges them)."""

    def __init__(self, run_dir: str, log_file: str, enabled: bool = True, tensorboard: bool = True,
                 resume_step: Optional[int] = None):
        self.enabled, self.run_dir = enabled, run_dir
        self.writer = None
        self._text = self._history = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = log_file if os.path.isabs(log_file) else os.path.join(run_dir, log_file)
        self._text = open(path, "a", encoding="utf-8")
        history = os.path.join(run_dir, "history.jsonl")
        if resume_step is not None:
            _cut_history(history, resume_step)
        self._history = open(history, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is in requirements.txt; keep training without it
                self.text("tensorboard is not installed: no TensorBoard logs")
            else:
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tb"), purge_step=purge)

    def text(self, message: str, stamp: bool = True) -> None:
        """Print and log a line; stamp=False leaves out the time (a command to copy)."""
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}" if stamp else message
        tqdm.write(line, file=sys.stdout)
        _append(self._text, line + "\n")

    def scalars(self, values: dict, step: int, epoch: int) -> None:
        if not self.enabled:
            return
        _append(self._history, json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
        _append(self._text, f"{time.strftime('%Y-%m-%d %H:%M:%S')} [epoch {epoch}][step {step}] "
                + " ".join(f"{k} {v:.6g}" for k, v in values.items()) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def plot_curves(self, title: str = "") -> str:
        """curves.png in the run folder: loss and validation PSNR so far (from history.jsonl); '' when there
        is nothing to plot yet."""
        if not self.enabled:
            return ""
        self._history.flush()
        from utils.figures import plot_training_curves

        history = []
        with open(os.path.join(self.run_dir, "history.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    history.append(json.loads(line))
                except ValueError:   # a line cut short by a crash or a full disk must not stop the run
                    continue
        if not any("loss" in r or "psnr_val" in r for r in history):
            return ""
        path, _ = plot_training_curves(os.path.join(self.run_dir, "curves.png"), history, title or None)
        return path

    def image(self, tag: str, image_chw, step: int) -> None:
        if self.enabled and self.writer is not None and image_chw is not None:
            self.writer.add_image(tag, image_chw.clamp(0, 1).cpu(), step, dataformats="CHW")

    def progress(self, total: int, initial: int = 0, desc: str = ""):
        if not self.enabled:
            return _NoProgress()
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, unit="step")

    def close(self) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        self._text.close()
        self._history.close()
