"""Evaluation: every configured model on every protocol, one table.

For each protocol (uniform AWGN levels, σ-maps, Poisson–Gaussian, impulse, real photos, real noisy
blocks) the degraded images are synthesised once and every model restores the same inputs; outputs
are clamped to [0, 1] as the published scripts do. Results go to `<result_save_file>/<run_name>/`:
summary.md / summary.csv / per_image.csv / results.json, PNGs under `<protocol>/kernel<k>/` (with
`save_sigma_map`, each model's estimated σ-map beside its result), and side-by-side figures under
`<protocol>/figures/`. For super-resolution the input column is the bicubic-upsampled input.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine import distributed as dist
from engine.ensemble import self_ensemble
from engine.modeling import (ModelSpec, build_for_evaluation, check_channels, default_weights_path,
                             maybe_record_steps, run_model, spec_from_compare_entry, spec_from_model_section)
from engine.protocols import Protocol, build_protocols, metric_color
from engine.reporting import overall_markdown, protocol_markdown, summarize, write_reports
from engine.tasks import check_model_for_task, task_of
from models import resolve_model, tiled, with_precision
from models.precision import resolve_precision
from utils.config import ConfigError, public
from utils.io import atomic_write_json, move_aside, save_image
from utils.metrics import evaluate_pair, psnr

DEGRADED = "degraded"
RESULT_MARKERS = ("config.json", "results.json", "summary.md")   # files every evaluation writes
BICUBIC = "bicubic"     # the input column of super-resolution: MATLAB-bicubic upsampled input


@dataclass
class EvalResult:
    records: List[Dict[str, Any]] = field(default_factory=list)
    summary: Dict[str, Any] = field(default_factory=dict)
    step_curves: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    run_dir: str = ""
    files: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def missing_checkpoint_hint(cfg) -> str:
    return ("train one with `python deblurring.py --set train_dataset.is_train=true` (see README), or "
            "evaluate the training-free baselines only: `python deblurring.py --set test_dataset.baselines_only=true`")


def model_specs(cfg) -> List[ModelSpec]:
    """The model of the `model` section (weights: model.pretrained or <model_save_file>/<model_select>.pth)
    followed by test_dataset.compare_models; duplicates (same label) are dropped."""
    main = spec_from_model_section(cfg["model"])
    main.options.pop("grad_checkpointing", None)   # training-only
    if not main.pretrained:
        main.pretrained = default_weights_path(cfg["model"])
    stem = os.path.splitext(os.path.basename(main.pretrained))[0]
    trainable = getattr(resolve_model(main.name), "trainable", True)   # baselines ignore weights files
    if trainable and stem != main.name and os.path.isfile(main.pretrained):
        main.label = stem                          # e.g. "compact_nrlgdn" for an NRL_GDN checkpoint
    specs = [] if cfg["test_dataset"]["baselines_only"] else [main]
    for i, entry in enumerate(cfg["test_dataset"]["compare_models"]):
        specs.append(spec_from_compare_entry(entry, i))
    if not specs:
        raise ConfigError("test_dataset.compare_models: empty while baselines_only is true; nothing to evaluate")
    unique, seen = [], set()
    for spec in specs:
        if spec.title not in seen:
            unique.append(spec)
            seen.add(spec.title)
    return unique


def load_models(cfg, device) -> List[tuple]:
    """(spec, model) of every configured model, in test_dataset.precision and tiled by test_dataset.tile_size."""
    return [(spec, for_inference(build_for_evaluation(spec, device, missing_checkpoint_hint(cfg)), cfg, device))
            for spec in model_specs(cfg)]


def for_inference(model, cfg, device):
    """The model running in test_dataset.precision, and in tiles of test_dataset.tile_size when > 0."""
    tcfg = cfg["test_dataset"]
    try:
        resolve_precision(tcfg["precision"], device)     # fp16 on a CPU fails here, not after the first image
    except ValueError as err:
        raise ConfigError(f"test_dataset.precision: {err}") from None
    model = with_precision(model, tcfg["precision"])
    if tcfg["tile_size"]:
        try:
            model = tiled(model, tcfg["tile_size"])
        except ValueError as err:
            raise ConfigError(f"test_dataset.tile_size: {err}") from None
    return model


def _to_device(batch, device):
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def restore(model, batch, pad: int, ensemble: bool = False) -> Dict[str, Any]:
    """Run a model (×8 self-ensemble if asked); with pad > 0 replicate-pad the input, restore, and crop
    (real photos)."""
    run = self_ensemble if ensemble else run_model
    if pad <= 0:
        return run(model, batch)
    padded = dict(batch)
    padded["y"] = F.pad(batch["y"], [pad] * 4, mode="replicate")
    out = run(model, padded)
    crop = lambda t: t[..., pad:t.shape[-2] - pad, pad:t.shape[-1] - pad]
    out = dict(out)
    out["x"] = crop(out["x"])
    if isinstance(out.get("steps"), (list, tuple)):
        out["steps"] = [crop(s) for s in out["steps"]]
    return out


def _upsampled(y: torch.Tensor, size) -> torch.Tensor:
    """A super-resolution input at the output size (MATLAB bicubic), else y itself."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    from utils.imresize import imresize
    return imresize(y.float(), output_shape=tuple(size))


def _plane(sigma: torch.Tensor, size) -> torch.Tensor:
    """A σ-map as one H×W plane (channel mean) at `size` (nearest: an LR map shown at HR size)."""
    plane = sigma.float().reshape(-1, *sigma.shape[-2:]).mean(0)
    if tuple(plane.shape) != tuple(size):
        plane = F.interpolate(plane[None, None], size=tuple(size), mode="nearest")[0, 0]
    return plane


def sigma_inset(true_sigma, estimated) -> torch.Tensor:
    """The figure's σ inset: true | estimated side by side (separated by a column at the maximum), or
    whichever of the two exists."""
    maps = [m for m in (true_sigma, estimated) if m is not None]
    if len(maps) < 2:
        return maps[0] if maps else None
    size = estimated.shape[-2:]
    left, right = _plane(true_sigma, size), _plane(estimated, size)
    gap = torch.full((left.shape[0], max(1, left.shape[1] // 32)), float(max(left.max(), right.max())))
    return torch.cat([left, gap, right], dim=1)


def _figure(path, protocol: Protocol, item: dict, restored: dict, scores: dict, primary: str, color: str,
            sigma_estimate=None, input_label: str = DEGRADED):
    from utils.figures import side_by_side

    others = [f"{m} {scores[m]['psnr']:.2f} dB" for m in restored if m != primary and m in scores]
    title = f"{item['name']} · kernel {item['kernel_label']} · {protocol.name} · {primary}"
    if others:
        title += " (" + ", ".join(others) + ")"
    if sigma_estimate is not None:
        title += " · σ inset: true | estimated" if item.get("sigma") is not None else " · σ inset: estimated"
        sigma = sigma_inset(item.get("sigma"), sigma_estimate)
    else:
        sigma = item.get("sigma") if protocol.kind == "sigma_map" else None
    degraded = _upsampled(item["y"], restored[primary].shape[-2:])
    kernel = item.get("k")
    if kernel is not None and kernel.numel() == 1:
        kernel = None                                   # denoising: the identity kernel says nothing
    side_by_side(path, degraded, restored[primary], gt=item.get("x"), kernel=kernel, sigma_map=sigma,
                 title=title, metrics=scores.get(primary), degraded_metrics=scores.get(input_label), color=color)


def _safe(name: str) -> str:
    """A file or folder name from any label; never '.' or '..', so results stay inside their folder."""
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(name))
    return safe if safe.strip(".") else safe.replace(".", "_") or "_"


def evaluate(cfg: Dict[str, Any], verbose: bool = True) -> EvalResult:
    started = time.time()
    tcfg = cfg["test_dataset"]
    device = dist.select_device(cfg["train_options"]["disable_cuda"], cfg["train_options"]["device_ids"])
    if device.type == "cuda":   # full float32 (no TF32) so GPU scores match the CPU's and the papers'
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    protocols = build_protocols(cfg)
    models = load_models(cfg, device)
    task = task_of(cfg, "test_dataset")
    for _, model in models:
        check_channels(model, tcfg["num_channels"], "test_dataset.num_channels")
        check_model_for_task(model, task, tcfg["scale"], "test_dataset.scale")
    input_label = BICUBIC if task == "sisr" else DEGRADED
    color = metric_color(tcfg)
    run_name = tcfg["run_name"] or (os.path.basename(os.path.normpath(tcfg["test_data"])) if tcfg["test_data"]
                                    else "default")
    run_dir = os.path.join(tcfg["result_save_file"], _safe(run_name))
    try:
        archived = move_aside(run_dir, RESULT_MARKERS)
    except ValueError as err:
        raise ConfigError(f"test_dataset.run_name: {err}") from None
    atomic_write_json(os.path.join(run_dir, "config.json"), public(cfg))
    result = EvalResult(run_dir=run_dir)
    stepping = {spec.title: maybe_record_steps(m, tcfg["record_steps"]) for spec, m in models}
    primary = models[0][0].title
    say = print if verbose else (lambda *a, **k: None)
    say(f"evaluating {', '.join(s.title for s, _ in models)} on {len(protocols)} protocol(s) -> {run_dir}"
        + (f" (earlier results there moved to {archived})" if archived else ""))
    if tcfg["precision"] != "fp32" or tcfg["tile_size"]:
        say(f"precision {_precision_note(tcfg['precision'], device)}"
            + (f", tiles of {tcfg['tile_size']}² pixels" if tcfg["tile_size"] else ""))

    for protocol in protocols:
        folder = os.path.join(run_dir, _safe(protocol.name))
        step_sums: Dict[str, List[List[float]]] = {}
        bar = tqdm(protocol.items(), total=protocol.size, desc=protocol.name, unit="img", dynamic_ncols=True,
                   disable=not verbose)
        for item in bar:
            batch = _to_device({k: (v[None] if torch.is_tensor(v) else v) for k, v in item.items()}, device)
            restored, scores, sigmas = {}, {}, {}
            has_gt = "x" in item
            if has_gt:
                scores[input_label] = evaluate_pair(_upsampled(item["y"], item["x"].shape[-2:]), item["x"],
                                                    color=color, border=tcfg["border"], quantize=tcfg["quantize"])
            for spec, model in models:
                with torch.no_grad():
                    out = restore(model, batch, protocol.pad(item), tcfg["self_ensemble"])
                x = out["x"][0].float().clamp(0, 1).cpu()
                restored[spec.title] = x
                if tcfg["save_sigma_map"] and torch.is_tensor(out.get("sigma_map")):
                    sigmas[spec.title] = out["sigma_map"][0].float().cpu()
                if has_gt:
                    if x.shape != item["x"].shape:
                        raise ValueError(f"model '{spec.title}' returned {tuple(x.shape)} for a "
                                         f"{tuple(item['x'].shape)} image ({item['name']})")
                    scores[spec.title] = evaluate_pair(x, item["x"], color=color, border=tcfg["border"],
                                                       quantize=tcfg["quantize"])
                if stepping[spec.title] and has_gt and isinstance(out.get("steps"), (list, tuple)):
                    curve = [psnr(_luma_or_rgb(s[0].float().clamp(0, 1).cpu(), color),
                                  _luma_or_rgb(item["x"], color), border=tcfg["border"]) for s in out["steps"]]
                    step_sums.setdefault(spec.title, []).append(curve)
            base = f"{_safe(item['name'])}"
            kdir = os.path.join(folder, f"kernel{item['kernel_label']}")
            if tcfg["save_images"]:
                save_image(os.path.join(kdir, f"{base}_degraded.png"), item["y"].clamp(0, 1))
                for title, x in restored.items():
                    save_image(os.path.join(kdir, f"{base}_{_safe(title)}.png"), x)
            for title, sigma in sigmas.items():     # σ on [0, 1] -> 8-bit pixel value = σ on the 0–255 scale
                save_image(os.path.join(kdir, f"{base}_{_safe(title)}_sigma.png"), _as_image(sigma))
            if tcfg["save_figures"]:
                _figure(os.path.join(folder, "figures", f"{base}_kernel{item['kernel_label']}.png"), protocol, item,
                        restored, scores, primary, color, sigmas.get(primary), input_label)
            for title, s in scores.items():
                result.records.append({"protocol": protocol.name, "model": title, "kernel": str(item["kernel_label"]),
                                       "image": item["name"], "psnr": s["psnr"], "ssim": s["ssim"]})
            if has_gt and primary in scores:
                bar.set_postfix(psnr=f"{scores[primary]['psnr']:.2f}")
        if step_sums:
            result.step_curves[protocol.name] = {m: _mean_curve(c) for m, c in step_sums.items()}
            from utils.figures import plot_psnr_per_step
            plot_psnr_per_step(os.path.join(folder, "psnr_per_step.png"), result.step_curves[protocol.name],
                               title=f"PSNR after each step · {protocol.name}")
        if protocol.kind == "real":
            say(f"{protocol.name}: restored {protocol.size} photo(s) -> {folder} (no ground truth, no metrics)")

    result.summary = summarize(result.records)
    result.seconds = time.time() - started
    notes = [f"models: {', '.join(s.title + (f' ({s.pretrained})' if s.pretrained else '') for s, _ in models)}",
             f"task {task}" + (f" ×{tcfg['scale']} (`{BICUBIC}`: bicubic-upsampled input)" if task == "sisr" else ""),
             f"metrics on {color}, border {tcfg['border']}, outputs clamped to [0, 1]"
             + (", 8-bit quantised" if tcfg["quantize"] else "")
             + (", ×8 self-ensemble" if tcfg["self_ensemble"] else ""),
             _data_note(tcfg, task, protocols),
             f"precision {_precision_note(tcfg['precision'], device)}"
             + (f", tiles of {tcfg['tile_size']}² pixels" if tcfg["tile_size"] else ", whole images"),
             f"wall time {result.seconds:.1f} s on {device}"]
    if result.records or result.step_curves:
        result.files = write_reports(run_dir, result.records, f"Evaluation: {run_name}", notes,
                                     extra={"config": public(cfg), "psnr_per_step": result.step_curves})
    for name, table in result.summary.items():
        say(f"\n{name} (PSNR dB / SSIM, {color}):\n{protocol_markdown(table)}")
    if len(result.summary) > 1:
        say(f"\noverall:\n{overall_markdown(result.summary)}")
    say(f"\nresults written to {run_dir} ({result.seconds:.1f} s)")
    return result


def _data_note(tcfg, task: str, protocols) -> str:
    if protocols and protocols[0].kind == "real_noise":
        return f"real noise: {tcfg['noisy_mat']} / {tcfg['clean_mat']}"
    images = tcfg["test_data"] or "embedded default images"
    if protocols and protocols[0].kind == "real":
        return f"real photos: {images}; kernels: {tcfg['kernel_path']}"
    if task == "denoise":
        return f"images: {images}; no blur"
    default = "VIRNet's SR test kernels" if task == "sisr" else "embedded default kernels"
    return f"images: {images}; kernels: {tcfg['kernel_path'] or default}, {tcfg['blur']} boundary"


def _precision_note(precision: str, device) -> str:
    mode = resolve_precision(precision, device)
    return f"auto -> {mode}" if precision == "auto" else mode


def _as_image(sigma: torch.Tensor) -> torch.Tensor:
    """A C×H×W σ-map (C = 1 or 3; per-image constants broadcast) clamped to [0, 1] for an 8-bit PNG."""
    if sigma.dim() == 2:
        sigma = sigma[None]
    if sigma.shape[0] not in (1, 3):
        sigma = sigma.mean(0, keepdim=True)
    return sigma.clamp(0, 1)


def _luma_or_rgb(img: torch.Tensor, color: str) -> torch.Tensor:
    if color == "rgb" or img.shape[0] == 1:
        return img
    from utils.metrics import rgb_to_luma, rgb_to_ycbcr_y
    return rgb_to_luma(img) if color == "luma" else rgb_to_ycbcr_y(img)


def _mean_curve(curves: List[List[float]]) -> List[float]:
    """Mean PSNR after each step over the images that ran that step (early stopping varies)."""
    longest = max(len(c) for c in curves)
    return [sum(c[i] for c in curves if len(c) > i) / sum(1 for c in curves if len(c) > i) for i in range(longest)]
