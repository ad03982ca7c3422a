"""Small, fast evaluation figures (matplotlib Agg, ~100 dpi), written atomically as PNG.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through pyplot:
no GUI backend is touched, nothing global is left open, and it works in worker threads and on
headless machines.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch

from utils.io import atomic_write_bytes


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi: int, tight: bool = False):
    """tight: the canvas is fitted to every artist drawn (aspect-locked image panels leave tight_layout
    short of room for their captions and inset labels)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **({"bbox_inches": "tight", "pad_inches": 0.04} if tight else {}))
    return atomic_write_bytes(path, buffer.getvalue())


def _to_numpy(a, name: str) -> np.ndarray:
    if torch.is_tensor(a):
        a = a.detach().to("cpu", torch.float64)
        while a.dim() > 3 and a.shape[0] == 1:
            a = a[0]
        if a.dim() == 3:
            a = a.permute(1, 2, 0)
        return a.numpy()
    if isinstance(a, np.ndarray):
        return a.astype(np.float64, copy=False)
    raise ValueError(f"{name}: expected a tensor (C×H×W) or numpy array (H×W×C), got {type(a).__name__}")


def _display_image(img, name: str) -> np.ndarray:
    """H×W (gray) or H×W×3 in [0, 1]."""
    arr = _to_numpy(img, name)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"{name}: expected C×H×W with C in (1, 3), got shape {tuple(img.shape)}")
    return np.clip(np.nan_to_num(arr), 0.0, 1.0)


def _plane(a, name: str) -> np.ndarray:
    """A kernel or σ-map as one H×W plane (channels averaged)."""
    arr = _to_numpy(a, name)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected h×w, 1×h×w or N×1×h×w with N = 1, got shape {tuple(a.shape)}")
    return arr


def _caption(label: str, scores) -> str:
    if not scores:
        return label + "\n "     # two lines everywhere keeps the panels aligned and nothing clipped
    parts = []
    if "psnr" in scores:
        parts.append(f"PSNR {scores['psnr']:.2f} dB" if math.isfinite(scores["psnr"]) else "PSNR ∞")
    if "ssim" in scores:
        parts.append(f"SSIM {scores['ssim']:.4f}")
    return f"{label}\n" + " / ".join(parts)


def _scores(img, gt, color: str):
    from utils.metrics import evaluate_pair

    if gt is None or tuple(img.shape) != tuple(gt.shape) or min(img.shape[-2:]) < 11:
        return None
    return evaluate_pair(img, gt, color=color)


def _inset(ax, bounds, plane, cmap: str, label: str):
    inset = ax.inset_axes(bounds)
    top = max(float(plane.max()), 1e-12)   # fixed range from 0: a flat kernel or σ-map is not shown black
    inset.imshow(plane, cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("white")
    # the label sits inside the inset's lower edge: above it, it would cross the panel's top and be cut off
    inset.text(0.03, 0.03, label, transform=inset.transAxes, fontsize=6, color="white", ha="left", va="bottom",
               bbox=dict(facecolor="black", alpha=0.6, pad=1, linewidth=0))


def side_by_side(path, degraded, restored, gt=None, kernel=None, sigma_map=None, title: str | None = None,
                 metrics: dict | None = None, degraded_metrics: dict | None = None, color: str = "rgb",
                 panel_inches: float = 3.0, dpi: int = 100):
    """degraded | restored | ground truth (if any), kernel and σ-map as insets on the degraded panel.

    Images: C×H×W tensors in [0, 1] (gray or colour; numpy H×W×C also accepted). ``metrics`` /
    ``degraded_metrics``: {'psnr', 'ssim'} for the captions; computed with ``color`` when left None
    and ``gt`` has the same size. ``sigma_map`` on the [0, 1] scale (its maximum is shown ×255).
    """
    panels = [(_display_image(degraded, "degraded"), "degraded", degraded_metrics),
              (_display_image(restored, "restored"), "restored", metrics)]
    if gt is not None:
        panels.append((_display_image(gt, "gt"), "ground truth", None))
        if metrics is None:
            panels[1] = panels[1][:2] + (_scores(restored, gt, color),)
        if degraded_metrics is None:
            panels[0] = panels[0][:2] + (_scores(degraded, gt, color),)
    h, w = panels[1][0].shape[:2]
    fig = _new_figure(panel_inches * len(panels), panel_inches * h / w + 0.5 + (0.3 if title else 0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (img, label, scores) in zip(axes, panels):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(_caption(label, scores), fontsize=8)
    if kernel is not None:
        k = _plane(kernel, "kernel")
        _inset(axes[0], [0.02, 0.66, 0.32, 0.32], k, "gray", f"kernel {k.shape[0]}×{k.shape[1]}")
    if sigma_map is not None:
        s = _plane(sigma_map, "sigma_map")
        _inset(axes[0], [0.66, 0.66, 0.32, 0.32], s, "viridis", f"σ ≤ {255 * s.max():.1f}/255")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return _save(fig, path, dpi, tight=True)


def plot_psnr_per_step(path, curves: dict, title: str | None = None, ylabel: str = "PSNR (dB)", dpi: int = 100):
    """One line per label: value after each unrolled step (step 1 = first stage output)."""
    if not isinstance(curves, dict) or not curves:
        raise ValueError("plot_psnr_per_step: curves must be a non-empty dict {label: [psnr per step]}")
    fig = _new_figure(5.0, 3.2)
    ax = fig.subplots()
    for label, values in curves.items():
        values = [float(v) for v in values]
        if not values:
            raise ValueError(f"plot_psnr_per_step: curve {label!r} is empty")
        steps = np.arange(1, len(values) + 1)
        ax.plot(steps, values, marker="o", markersize=3, label=str(label))
        best = int(np.argmax(values))
        ax.plot(steps[best], values[best], marker="*", markersize=9, color=ax.lines[-1].get_color())
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.4)
    return _save(fig, path, dpi)


def plot_training_curves(path, history, title: str | None = None, dpi: int = 100):
    """Training loss and validation PSNR against the optimizer step, from history records
    ({"step", "loss"?, "psnr_val"?, ...}); a step logged twice (a resumed run) keeps its last value."""
    series = {"loss": {}, "psnr_val": {}}
    for record in history:
        for key, values in series.items():
            if key in record and "step" in record:
                values[int(record["step"])] = float(record[key])
    if not series["loss"] and not series["psnr_val"]:
        raise ValueError("plot_training_curves: no 'loss' or 'psnr_val' records in the history")
    fig = _new_figure(7.0, 2.8)
    left, right = fig.subplots(1, 2)
    for ax, key, label in ((left, "loss", "training loss"), (right, "psnr_val", "validation PSNR (dB)")):
        steps = sorted(series[key])
        values = [series[key][s] for s in steps]
        if key == "loss" and len(values) >= 10:      # single-batch losses are noisy: add a running mean
            ax.plot(steps, values, linewidth=0.6, alpha=0.35)
            width = max(3, len(values) // 10)
            smooth = np.convolve(values, np.ones(width) / width, mode="valid")
            ax.plot(steps[width - 1:], smooth, linewidth=1.4, label=f"mean of {width}")
            ax.legend(fontsize=7)
        elif values:
            ax.plot(steps, values, marker="o" if key == "psnr_val" else None, markersize=3, linewidth=1)
        if key == "loss" and values and min(values) > 0:
            ax.set_yscale("log")
        if key == "psnr_val" and values:
            best = int(np.argmax(values))
            ax.plot(steps[best], values[best], marker="*", markersize=9)
            ax.annotate(f"{values[best]:.2f}", (steps[best], values[best]), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.4)
    return _save(fig, path, dpi), series
