"""Run logging: a text log, a JSON-lines history, TensorBoard scalars/images and tqdm, on rank 0 only."""
from __future__ import annotations

import json
import os
import sys
import time

from tqdm import tqdm


class _NoProgress:
    def update(self, *_):
        pass

    def set_postfix(self, *_, **__):
        pass

    def close(self):
        pass


class RunLogger:
    def __init__(self, run_dir: str, log_file: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled, self.run_dir = enabled, run_dir
        self.writer = None
        self._text = self._history = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = log_file if os.path.isabs(log_file) else os.path.join(run_dir, log_file)
        self._text = open(path, "a", encoding="utf-8")
        self._history = open(os.path.join(run_dir, "history.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is in requirements.txt; keep training without it
                self.text("tensorboard is not installed: no TensorBoard logs")
            else:
                self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tb"))

    def text(self, message: str, stamp: bool = True) -> None:
        """Print and log a line; stamp=False leaves out the time (a command to copy)."""
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}" if stamp else message
        tqdm.write(line, file=sys.stdout)
        self._text.write(line + "\n")
        self._text.flush()

    def scalars(self, values: dict, step: int, epoch: int) -> None:
        if not self.enabled:
            return
        self._history.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
        self._history.flush()
        self._text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [epoch {epoch}][step {step}] "
                         + " ".join(f"{k} {v:.6g}" for k, v in values.items()) + "\n")
        self._text.flush()
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
