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
from engine.modeling import (ModelSpec, build_for_evaluation, check_channels, default_weights_path, item_batch,
                             maybe_record_steps, run_model, spec_from_compare_entry, spec_from_model_section)
from engine.protocols import Protocol, build_protocols, metric_color
from engine.reporting import overall_markdown, protocol_markdown, summarize, write_photo_report, write_reports
from engine.tasks import check_model_for_task, task_of
from models import resolve_model, tiled, with_precision
from models.contract import hook
from models.precision import resolve_precision
from models.published import PUBLISHED
from utils.config import ConfigError, command_line, override_text, public
from utils.imresize import resize_to
from utils.io import WriteError, atomic_write_json, check_writable, move_aside, save_image
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
    photos: List[Dict[str, Any]] = field(default_factory=list)   # real photos: what was written for each


def missing_checkpoint_hint(cfg, spec: ModelSpec) -> str:
    """What to do about a missing checkpoint: where a published one comes from, the file name it must have,
    where to put it and the command that then evaluates it (the user's own, with what it needs added)."""
    published = PUBLISHED.get(spec.name)
    if published is None:
        return ("train one with `python deblurring.py --set train_dataset.is_train=true` (see README), or evaluate "
                "the training-free baselines only: `python deblurring.py --set test_dataset.baselines_only=true`")
    file = published.file_name(spec.options.get("scale") or cfg["test_dataset"]["scale"])
    intro = (f"{spec.name}'s published weights are the file {file} of the {published.project} project "
             f"({published.source})")
    if spec.key != "model":
        return intro + (f": save it as {spec.pretrained}" if spec.pretrained else f": set {spec.key}.pretrained to it")
    target = spec.pretrained if cfg["model"]["pretrained"] else os.path.join(cfg["model"]["model_save_file"], file)
    hint = f"{intro}: save it as {target}"
    overrides = [] if target == spec.pretrained else [override_text("model.pretrained", target)]
    overrides += [override_text(f"model.options.{k}", v) for k, v in published.options.items()
                  if cfg["model"]["options"].get(k) != v]
    command = command_line(cfg, overrides)
    return hint + (f" and run: {command}" if command else " (or set model.pretrained to your copy)")


def results_folder_name(tcfg) -> str:
    """test_dataset.run_name, else the test image folder's name, else 'default'; a baselines-only run gets
    its own folder (`<name>_baselines`), so it never replaces the full run's results."""
    data = os.path.join(tcfg["root_path"], tcfg["test_data"]) if tcfg["test_data"] else ""
    name = tcfg["run_name"] or (os.path.basename(os.path.normpath(data)) if data else "default")
    if not tcfg["run_name"] and os.path.isfile(data):
        name = os.path.splitext(name)[0]                  # one photo: results/<photo name>/
    return _safe(name + ("_baselines" if tcfg["baselines_only"] else ""))


def model_specs(cfg) -> List[ModelSpec]:
    """The model of the `model` section (weights: model.pretrained or <model_save_file>/<model_select>.pth)
    followed by test_dataset.compare_models; duplicates (same label) are dropped."""
    main = spec_from_model_section(cfg["model"])
    main.options.pop("grad_checkpointing", None)   # training-only
    if not main.pretrained:
        main.pretrained = default_weights_path(cfg["model"])
    stem = os.path.splitext(os.path.basename(main.pretrained))[0]
    trainable = hook(resolve_model(main.name), "trainable")   # baselines ignore weights files
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
    return [(spec, for_inference(build_for_evaluation(spec, device, missing_checkpoint_hint(cfg, spec)), cfg, device))
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
    degraded = resize_to(item["y"], restored[primary].shape[-2:])
    kernel = item.get("k")
    if kernel is not None and kernel.numel() == 1:
        kernel = None                                   # denoising: the identity kernel says nothing
    side_by_side(path, degraded, restored[primary], gt=item.get("x"), kernel=kernel, sigma_map=sigma,
                 title=title, metrics=scores.get(primary), degraded_metrics=scores.get(input_label), color=color)


def photo_row(item, written: Dict[str, str], run_dir: str) -> Dict[str, Any]:
    """One restored real photo for the report: its name, kernel size and the files written (relative)."""
    kh, kw = item["k"].shape[-2:]
    return {"photo": item["name"], "kernel": f"{kh}×{kw}",
            "files": {label: os.path.relpath(path, run_dir) for label, path in written.items()}}


def _safe(name: str) -> str:
    """A file or folder name from any label; never '.' or '..', so results stay inside their folder."""
    safe = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(name))
    return safe if safe.strip(".") else safe.replace(".", "_") or "_"


class _OutputNames:
    """One file-name base per input image, never shared: `_safe` maps 'x y' and 'x_y' alike, so a base
    already taken by another image gets _2, _3, ... Names that need no change are served first."""

    def __init__(self, names=()):
        self.bases, self.taken = {}, set()
        for name in sorted(names, key=lambda n: _safe(n) != n):
            self(name)

    def __call__(self, name: str) -> str:
        if name not in self.bases:
            base, n = _safe(name), 1
            while (base if n == 1 else f"{base}_{n}") in self.taken:
                n += 1
            self.bases[name] = base if n == 1 else f"{base}_{n}"
            self.taken.add(self.bases[name])
        return self.bases[name]


def evaluate(cfg: Dict[str, Any], verbose: bool = True) -> EvalResult:
    """Evaluate cfg's models on every protocol of cfg.test_dataset: per image restore → score → write, then
    the reports (summary.csv, report.md/json) in results/<run name>."""
    run = _Evaluation(cfg, verbose)
    for protocol in run.protocols:
        run.protocol(protocol)
    return run.finish()


class _Evaluation:
    """One evaluation run: its setup (device, models, protocols, results folder) and its three steps per
    image, `restore`, `score` and `write`."""

    def __init__(self, cfg: Dict[str, Any], verbose: bool):
        self.started, self.cfg = time.time(), cfg
        self.tcfg = tcfg = cfg["test_dataset"]
        self.device = _eval_device(cfg)
        self.run_name = results_folder_name(tcfg)
        self.run_dir = os.path.join(tcfg["result_save_file"], self.run_name)
        try:
            check_writable(tcfg["result_save_file"])
        except WriteError as err:
            raise ConfigError(f"test_dataset.result_save_file: {err} (checked before evaluating)") from None
        self.protocols = build_protocols(cfg)
        self.models = load_models(cfg, self.device)
        self.task = task_of(cfg, "test_dataset")
        for _, model in self.models:
            check_channels(model, tcfg["num_channels"], "test_dataset.num_channels")
            check_model_for_task(model, self.task, tcfg["scale"], "test_dataset.scale")
        self.input_label = BICUBIC if self.task == "sisr" else DEGRADED
        self.color = metric_color(tcfg)
        try:
            archived = move_aside(self.run_dir, RESULT_MARKERS)
        except ValueError as err:
            raise ConfigError(f"test_dataset.run_name: {err}") from None
        atomic_write_json(os.path.join(self.run_dir, "config.json"), public(cfg))
        self.result = EvalResult(run_dir=self.run_dir)
        self.stepping = {spec.title: maybe_record_steps(m, tcfg["record_steps"]) for spec, m in self.models}
        self.primary = self.models[0][0].title
        first = self.protocols[0]
        self.output_name = _OutputNames(first.image_names or getattr(first.dataset, "names", []))
        self.verbose = verbose
        self.say(f"evaluating {', '.join(s.title for s, _ in self.models)} on {len(self.protocols)} protocol(s) -> "
                 f"{self.run_dir}" + (f" (earlier results there moved to {archived})" if archived else ""))
        if tcfg["precision"] != "fp32" or tcfg["tile_size"]:
            self.say(f"precision {_precision_note(tcfg['precision'], self.device)}"
                     + (f", tiles of {tcfg['tile_size']}² pixels" if tcfg["tile_size"] else ""))

    def say(self, text: str) -> None:
        if self.verbose:
            print(text)

    def protocol(self, protocol: Protocol) -> None:
        folder = os.path.join(self.run_dir, _safe(protocol.name))
        step_sums: Dict[str, List[List[float]]] = {}
        bar = tqdm(protocol.items(), total=protocol.size, desc=protocol.name, unit="img", dynamic_ncols=True,
                   disable=not self.verbose)
        for item in bar:
            outs = self.restore(protocol, item)
            restored = {title: _restored_image(out) for title, out in outs.items()}
            scores = self.score(item, restored, outs, step_sums)
            self.write(protocol, folder, item, restored, outs, scores)
            if "x" in item and self.primary in scores:
                bar.set_postfix(psnr=f"{scores[self.primary]['psnr']:.2f}")
        if step_sums:
            self.result.step_curves[protocol.name] = {m: _mean_curve(c) for m, c in step_sums.items()}
            from utils.figures import plot_psnr_per_step
            plot_psnr_per_step(os.path.join(folder, "psnr_per_step.png"), self.result.step_curves[protocol.name],
                               title=f"PSNR after each step · {protocol.name}")
        if protocol.kind == "real":
            self.say(f"{protocol.name}: restored {protocol.size} photo(s) -> {folder} (no ground truth, no metrics)")

    def restore(self, protocol: Protocol, item: dict) -> Dict[str, dict]:
        """Every model's output on one image: {title: model output dict}."""
        batch = item_batch(item, self.device)
        outs = {}
        for spec, model in self.models:
            with torch.inference_mode():
                outs[spec.title] = restore(model, batch, protocol.pad(item), self.tcfg["self_ensemble"])
        return outs

    def _pair_scores(self, x: torch.Tensor, gt: torch.Tensor) -> dict:
        return evaluate_pair(x, gt, color=self.color, border=self.tcfg["border"], quantize=self.tcfg["quantize"])

    def score(self, item: dict, restored: Dict[str, torch.Tensor], outs: Dict[str, dict], step_sums: dict) -> dict:
        """PSNR/SSIM of the input and of every model ({} without ground truth); PSNR per step when recorded."""
        if "x" not in item:
            return {}
        gt = item["x"]
        scores = {self.input_label: self._pair_scores(resize_to(item["y"], gt.shape[-2:]), gt)}
        for title, x in restored.items():
            out = outs[title]
            if x.shape != gt.shape:
                raise ValueError(f"model '{title}' returned {tuple(x.shape)} for a {tuple(gt.shape)} image "
                                 f"({item['name']})")
            scores[title] = self._pair_scores(x, gt)
            if self.stepping[title] and isinstance(out.get("steps"), (list, tuple)):
                curve = [psnr(_luma_or_rgb(s[0].float().clamp(0, 1).cpu(), self.color),
                              _luma_or_rgb(gt, self.color), border=self.tcfg["border"]) for s in out["steps"]]
                step_sums.setdefault(title, []).append(curve)
        return scores

    def write(self, protocol: Protocol, folder: str, item: dict, restored: Dict[str, torch.Tensor],
              outs: Dict[str, dict], scores: dict) -> None:
        """The image's files (degraded, restored, σ maps, figure) and its records and photo row."""
        tcfg, base = self.tcfg, self.output_name(item["name"])
        sigmas = {title: out["sigma_map"][0].float().cpu() for title, out in outs.items()
                  if tcfg["save_sigma_map"] and torch.is_tensor(out.get("sigma_map"))}
        kdir = os.path.join(folder, f"kernel{item['kernel_label']}")
        written = {}
        if tcfg["save_images"]:
            save_image(os.path.join(kdir, f"{base}_degraded.png"), item["y"].clamp(0, 1))
            for title, x in restored.items():
                written[title] = save_image(os.path.join(kdir, f"{base}_{_safe(title)}.png"), x)
        for title, sigma in sigmas.items():     # σ on [0, 1] -> 8-bit pixel value = σ on the 0–255 scale
            save_image(os.path.join(kdir, f"{base}_{_safe(title)}_sigma.png"), _as_image(sigma))
        if tcfg["save_figures"]:
            written["figure"] = os.path.join(folder, "figures", f"{base}_kernel{item['kernel_label']}.png")
            _figure(written["figure"], protocol, item, restored, scores, self.primary, self.color,
                    sigmas.get(self.primary), self.input_label)
        if protocol.kind == "real":
            self.result.photos.append(photo_row(item, written, self.run_dir))
        for title, s in scores.items():
            self.result.records.append({"protocol": protocol.name, "model": title, "kernel": str(item["kernel_label"]),
                                        "image": item["name"], "psnr": s["psnr"], "ssim": s["ssim"]})

    def finish(self) -> EvalResult:
        """The reports and the printed tables."""
        result, run_dir = self.result, self.run_dir
        result.summary = summarize(result.records)
        result.seconds = time.time() - self.started
        notes = self._notes()
        if result.records or result.step_curves:
            result.files = write_reports(run_dir, result.records, f"Evaluation: {self.run_name}", notes,
                                         extra={"config": public(self.cfg), "psnr_per_step": result.step_curves})
        elif result.photos:
            result.files = write_photo_report(run_dir, result.photos, f"Restored photos: {self.run_name}", notes,
                                              extra={"config": public(self.cfg)})
            for row in result.photos:
                self.say(f"{row['photo']}: " + ", ".join(os.path.join(run_dir, f) for f in row["files"].values()))
        for name, table in result.summary.items():
            self.say(f"\n{name} (PSNR dB / SSIM, {self.color}):\n{protocol_markdown(table)}")
        if len(result.summary) > 1:
            self.say(f"\noverall:\n{overall_markdown(result.summary)}")
        self.say(f"\nresults written to {run_dir} ({result.seconds:.1f} s)")
        return result

    def _notes(self) -> List[str]:
        tcfg, task = self.tcfg, self.task
        return [f"models: {', '.join(s.title + (f' ({s.pretrained})' if s.pretrained else '') for s, _ in self.models)}",
                f"task {task}" + (f" ×{tcfg['scale']} (`{BICUBIC}`: bicubic-upsampled input)" if task == "sisr" else ""),
                f"metrics on {self.color}, border {tcfg['border']}, outputs clamped to [0, 1]"
                + (", 8-bit quantised" if tcfg["quantize"] else "")
                + (", ×8 self-ensemble" if tcfg["self_ensemble"] else ""),
                _data_note(tcfg, task, self.protocols),
                f"precision {_precision_note(tcfg['precision'], self.device)}"
                + (f", tiles of {tcfg['tile_size']}² pixels" if tcfg["tile_size"] else ", whole images"),
                f"wall time {self.result.seconds:.1f} s on {self.device}"]


def _eval_device(cfg) -> torch.device:
    device = dist.select_device(cfg["train_options"]["disable_cuda"], cfg["train_options"]["device_ids"])
    if device.type == "cuda":   # full float32 (no TF32) so GPU scores match the CPU's and the papers'
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def _restored_image(out: dict) -> torch.Tensor:
    """A model's restored image as the scores and files see it: C×H×W float32 in [0, 1] on the CPU."""
    return out["x"][0].float().clamp(0, 1).cpu()


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
