"""Configuration: one schema (defaults, types, docs) for the published JSON configs and our additions.

A run reads a *train config* (sections train_dataset, val_dataset, model, optimizer, multi_step_lr,
scheduler, train_options — the published `configs/traincolor.json` layout) and a *test config*
(section test_dataset — the published `configs/test_*.json` layout). Both are merged into one dict
`{section: {key: value}}`, missing keys take their defaults, and `--set section.key=value` overrides
are applied on top. Every problem becomes a one-line `ConfigError` naming the key or file; nested
specs (degradation, noise, kernels, protocols) are checked key by key too. Finally `normalise`
(utils/config_normalise.py) translates the published flags into those specs, once: the engine reads
only the specs.

Paths are checked where they are used (`require_file`, `require_dir`), so a test-only run does not
need the training folders of the published config to exist.
"""
from __future__ import annotations

import copy
import difflib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple



class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key/file and what was expected."""


class DataError(ValueError):
    """Unreadable or invalid input data (an image, a kernel, a .mat file, the inputs of `net(y, k)`); the
    message is one line naming the file or argument. A ValueError so API callers may catch either."""


@dataclass(frozen=True)
class Key:
    default: Any
    type: str            # bool | int | float | str | dict | list[...] | a|b
    doc: str
    choices: Optional[tuple] = None
    min: Optional[float] = None
    spec: str = ""       # nested spec checked key by key: degradation | val_protocol | protocols


_PUB = "(published key) "
_COMPAT = "(published key, kept so published configs load; not used: {why}) "
NOISE_TYPES = ("nonuniform", "uniform")
SIGMA_MAPS = ("peaks", "gauss", "gauss_mix")
TASKS = ("deblur", "denoise", "sisr")
TEST_BLURS = ("circular", "replicate", "reflect", "symmetric", "constant", "valid")
_TASK_DOC = ("`deblur`: y = k ⊛ x + n; `denoise`: y = x + n (no blur, k is the 1×1 identity); `sisr`: "
             "y = (k ⊛ x)↓s + n, batches carry `scale` (and `kinfo` from `sr_gaussian` kernels); models "
             "with input_keys (\"y\",) get no kernel and upsample themselves.")

SCHEMA: Dict[str, Dict[str, Key]] = {
    "train_dataset": {
        "root_path": Key("", "str", _PUB + "Folder of training images (searched recursively). "
                         "Empty: the embedded default images (`data.images.default_images()`)."),
        "kernel_path": Key("", "str", _PUB + "Kernel file to sample training kernels from (.mat/.npy, a kernel "
                           "image or a folder of kernel PNGs). Empty: random motion/Gaussian kernels as published."),
        "patch_size": Key(256, "int", _PUB + "Side of the random training crop in pixels.", min=8),
        "is_train": Key(False, "bool", _PUB + "true: `python deblurring.py` trains with this config; "
                        "false: it evaluates (test config) as in the published workflow."),
        "num_channels": Key(3, "int", _PUB + "3: colour training patches; 1: grayscale.", choices=(1, 3)),
        "num_workers": Key(2, "int", _PUB + "DataLoader worker processes.", min=0),
        "sigma_min": Key(0.0, "float", _PUB + "Smallest training noise level (0–255 scale).", min=0),
        "sigma_max": Key(12.75, "float", _PUB + "Largest training noise level (0–255 scale).", min=0),
        "batch_size": Key(8, "int", _PUB + "Global batch size (split over DDP processes; DataParallel "
                          "splits it over device_ids as published).", min=1),
        "noise_type": Key("nonuniform", "str", "Gaussian training noise: `nonuniform` = NRL-GDN recipe "
                          "(6/9 one σ per patch, else four quadrants each with its own σ); `uniform` = one "
                          "σ ~ U(sigma_min, sigma_max) per patch. Used when train_options.is_train_gauss.",
                          choices=NOISE_TYPES),
        "noise_intensity": Key(0.1, "float", "Impulse training noise: fraction of replaced pixels "
                               "(train_options.is_train_impulse).", min=0),
        "poisson_peak": Key(128.0, "float", "Poisson–Gaussian training noise: photon scale χ "
                            "(train_options.is_train_poisson_gaussian).", min=0),
        "max_images": Key(0, "int", "Use only the first N training images (0: all).", min=0),
        "holdout": Key(0, "int", "Keep the last N training images (in name order) out of training; "
                       "val_dataset.use_holdout validates on them, so no test image is used to choose a step.",
                       min=0),
        "repeat": Key(1, "int", "An epoch visits every training image this many times (different crops).", min=1),
        "quantize_blur": Key(False, "bool", "Round the blurred image down to 8-bit levels before the noise "
                             "(the published training blurs uint8 images)."),
        "degradation": Key({}, "dict", "Full `data.degrade.build_degradation` spec (kernels, noise, blur, "
                           "scale, clip); non-empty replaces the one built from the keys above and the "
                           "train_options.is_train_* flags (e.g. DSDNet/VIRNet recipes). Task defaults: `deblur` "
                           "blur circular; `denoise` blur null; `sisr` blur `symmetric`, clip true, scale and "
                           "`sr_gaussian` kernel scale the model's (and, when empty, VIRNet's SR recipe: "
                           "`sr_gaussian` 21×21 kernels, noise U(sigma_min, sigma_max)).", spec="degradation"),
        "task": Key("deblur", "str", "Restoration task. " + _TASK_DOC, choices=TASKS),
        "paired": Key(False, "bool", "Task `denoise`, real noise: root_path holds `noisy/` and `gt/` (or `clean/`) "
                      "folders of images with equal names (VIRNet's SIDD patches); both get the same crop and "
                      "flip/rotation and no synthetic degradation is applied (VIRNet loss: prior `residual`)."),
        "mixup": Key(False, "bool", "Task `denoise`: MixUp each batch, λ ~ Beta(0.6, 0.6) per sample with a "
                     "permuted partner, on y and x (a true σ-map becomes sqrt(λ²σ² + (1−λ)²σ'²)); VIRNet's "
                     "real-noise training uses it."),
    },
    "val_dataset": {
        "root_path": Key("", "str", _PUB + "Folder of validation images. Empty: the embedded default "
                         "test images."),
        "kernel_path": Key("", "str", _PUB + "Kernel file of the validation kernel. Empty: the embedded "
                           "default kernels."),
        "num_channels": Key(3, "int", _PUB + "3: colour; 1: grayscale validation images.", choices=(1, 3)),
        "noise_level": Key(2.55, "float", _PUB + "Uniform validation noise level (0–255 scale).", min=0),
        "kernel_index": Key(0, "int", _PUB + "Index of the validation kernel in kernel_path.", min=0),
        "sigma_map_type": Key("", "str", "Non-empty: validate under this σ-map instead of noise_level.",
                              choices=("",) + SIGMA_MAPS),
        "max_images": Key(0, "int", "Validate on the first N images only (0: all).", min=0),
        "use_holdout": Key(False, "bool", "Validate on the images train_dataset.holdout keeps out of training "
                           "(root_path must be empty)."),
        "patch_size": Key(0, "int", "Centre-crop validation images to this side (0: full images).", min=0),
        "protocol": Key({}, "dict", "Task `deblur`: explicit validation degradation {noise, blur, scale} as in "
                        "test_dataset.protocols (e.g. {\"noise\": 25, \"blur\": null} for denoising); "
                        "fields left out come from noise_level/sigma_map_type, circular blur, scale 1; the "
                        "kernel is still kernel_index of kernel_path. Other tasks: use degradation.",
                        spec="val_protocol"),
        "task": Key("", "str", "Validation task (empty: train_dataset.task). `denoise`: noise from "
                    "noise_level/sigma_map_type, no blur; `sisr`: VIRNet's validation (isotropic 21×21 "
                    "Gaussian, std 1.6, symmetric blur, noise_level, clipped) at the model's scale.",
                    choices=("",) + TASKS),
        "degradation": Key({}, "dict", "Full `data.degrade.build_degradation` spec for validation (task "
                           "defaults as train_dataset.degradation); non-empty replaces kernel_path, "
                           "kernel_index, noise_level and sigma_map_type (and excludes protocol). Image i is "
                           "degraded with the generator seeded by (0, i), so validation data never changes.",
                           spec="degradation"),
        "paired": Key(False, "bool", "Real-noise validation: root_path holds `noisy/` and `gt/` folders of "
                      "images with equal names (see train_dataset.paired); max_images and patch_size apply."),
        "noisy_mat": Key("", "str", "Real-noise validation on .mat blocks (SIDD `ValidationNoisyBlocksSrgb.mat`, "
                         "as test_dataset.noisy_mat); needs clean_mat; max_images limits the blocks."),
        "clean_mat": Key("", "str", "The ground-truth blocks matching val_dataset.noisy_mat."),
    },
    "model": {
        "model_select": Key("NRL_GDN", "str", _PUB + "Registered model name (`models.list_models()`): "
                            "NRL_GDN, NRL_GDN_Y0, rgdn_uniform, eq22_init, wiener, richardson_lucy, DSD_*, VIRNet_*."),
        "model_save_file": Key("pretrainedmodels", "str", _PUB + "Folder of model weights: evaluation "
                               "loads `<model_save_file>/<model_select>.pth` unless `pretrained` is set; "
                               "training exports `<run_name>.pth` here."),
        "num_channels": Key(3, "int", _COMPAT.format(why="image channels are set by train_dataset/"
                            "test_dataset.num_channels and checked against the model's in_nc"), choices=(1, 3)),
        "iter_num": Key(1, "int", _COMPAT.format(why="the number of unrolled steps is options.num_steps")),
        "options": Key({}, "dict", "Constructor options passed to `build_model` (e.g. num_steps, "
                       "early_stop, r_channels, boundary). Evaluating a checkpoint that stores its options "
                       "(ours do): those are the defaults and these override them key by key."),
        "pretrained": Key("", "str", "Weights to evaluate (empty: `<model_save_file>/<model_select>.pth`, "
                          "the published location). Not used for training."),
        "init_from": Key("", "str", "Training only: start from these weights (fine-tuning); empty: fresh "
                         "initialisation. To continue a stopped run use train_options.resume instead."),
        "init_grow": Key(False, "bool", "With init_from: the file may come from the same model with fewer "
                         "DRUNet ResBlocks per scale (r_blocks); its blocks come first and each extra block "
                         "starts as the identity, so training starts at the smaller model's quality."),
        "grad_checkpointing": Key(False, "bool", "Recompute activations in the backward pass (passed to the "
                                  "model): training memory flat in the number of unrolled steps (0.29× / 0.15× "
                                  "peak, 1.12× / 1.35× time at 6 / 12 steps, measured on the CPU); on in "
                                  "configs/paper_nrlgdn.json."),
        "loss": Key("", "str", "Loss name from `models/losses.py` (empty: the model's default_loss, "
                    "`nrlgdn_l1` for NRL-GDN)."),
        "loss_options": Key({}, "dict", "Keyword options for the loss."),
        "init": Key("model", "str", "`model`: the model's own initialisation (NRL-GDN: Xavier-normal convs, "
                    "what the published `weights_init_kaiming` really does); `kaiming`: Kaiming-normal "
                    "conv weights.", choices=("model", "kaiming")),
    },
    "optimizer": {
        "name": Key("adam", "str", _PUB + "Optimizer.", choices=("adam", "adamw")),
        "lr": Key(1e-4, "float", _PUB + "Learning rate.", min=0),
        "weight_decay": Key(0.0, "float", "Weight decay (AdamW: decoupled).", min=0),
        "betas": Key([0.9, 0.999], "list[float]", "Adam betas."),
        "grad_clip": Key(0.0, "float", "Clip the global gradient norm to this value (0: off). A model "
                         "with a `clip_gradients()` method clips itself instead.", min=0),
    },
    "multi_step_lr": {
        "milestone": Key(1400, "int", _PUB + "Epoch (or iteration) after which lr is divided by 10 "
                         "when scheduler.name is `multistep` (the published, commented-out rule).", min=0),
    },
    "scheduler": {
        "name": Key("step", "str", "`step`: StepLR(step_size, gamma) as published; `cosine`: cosine "
                    "annealing to eta_min over the run; `multistep`: see multi_step_lr; `none`.",
                    choices=("step", "cosine", "multistep", "none")),
        "step_size": Key(30, "int", "StepLR period, in epochs (in iterations when train_options.total_iters > 0).", min=1),
        "gamma": Key(0.9, "float", "StepLR decay factor.", min=0),
        "eta_min": Key(0.0, "float", "Final lr of the cosine schedule.", min=0),
        "warmup_epochs": Key(0, "int", "Cosine only: linear warm-up lr·(e+1)/W for epochs e < W, then "
                             "cosine from lr to eta_min over the remaining epochs, stepped per epoch (in "
                             "iterations when train_options.total_iters > 0); VIRNet: 5 (synthetic), 10 "
                             "(real noise), 0 (SR).", min=0),
    },
    "train_options": {
        "epoch_val": Key(1, "int", _PUB + "Validate every N epochs (0: never; see val_every_steps).", min=0),
        "epoch_save": Key(1, "int", _PUB + "Write the `last` checkpoint every N epochs (also at the end "
                          "and on SIGINT/SIGTERM; see save_every_steps).", min=1),
        "val_every_steps": Key(0, "int", "Validate every N optimizer steps, also inside an epoch, instead of "
                               "every epoch_val epochs (0: use epoch_val; epoch_val=0 still turns validation "
                               "off).", min=0),
        "save_every_steps": Key(0, "int", "Write the `last` checkpoint every N optimizer steps, also inside "
                                "an epoch (resume continues mid-epoch), instead of every epoch_save epochs "
                                "(0: use epoch_save).", min=0),
        "epochs": Key(1500, "int", _PUB + "Number of epochs (ignored when total_iters > 0).", min=0),
        "total_iters": Key(0, "int", "Train for this many optimizer steps instead of `epochs` (0: use epochs).", min=0),
        "resume": Key(False, "bool", _PUB + "Continue a stopped run from its checkpoint (model, optimizer, "
                      "scheduler, position in the epoch, RNG states)."),
        "resume_model_name": Key("", "str", _PUB + "Checkpoint to resume: a file name inside the run folder "
                                 "or a path (empty: `<checkpoint_dir>/<run_name>/last.pth`)."),
        "overwrite": Key(False, "bool", "A fresh run (resume false) whose run folder holds an earlier run: false "
                         "refuses to start; true moves that folder to `<run_name>_archived_<time>/` first (nothing "
                         "is deleted; the earlier export stays, the new one goes to `<run_name>_2.pth`, `_3`, ...)."),
        "is_train_gauss": Key(True, "bool", _PUB + "Train with Gaussian noise (see train_dataset.noise_type)."),
        "is_train_jpeg_compression": Key(False, "bool", _PUB + "Not supported (as in the published "
                                         "code); true is an error."),
        "is_train_poisson_gaussian": Key(False, "bool", _PUB + "Train with Poisson–Gaussian noise."),
        "is_train_impulse": Key(False, "bool", _PUB + "Train with random-valued impulse noise."),
        "seed": Key(123, "int", _PUB + "Seed of weights init, data synthesis and shuffling."),
        "disable_cuda": Key(False, "bool", _PUB + "true: run on the CPU even when CUDA is available."),
        "device_ids": Key([0], "list[int]", _PUB + "GPUs; several ids use nn.DataParallel (under "
                          "torchrun each process uses its LOCAL_RANK GPU instead)."),
        "log_file": Key("train_log.txt", "str", _PUB + "Text log, written inside the run folder."),
        "run_name": Key("", "str", "Name of the run folder `<checkpoint_dir>/<run_name>/` (empty: model_select)."),
        "checkpoint_dir": Key("checkpoints", "str", "Parent folder of run folders (checkpoints, logs, TensorBoard)."),
        "log_every": Key(10, "int", "Log loss/PSNR/lr every N steps (text log and TensorBoard): the loss "
                         "is the mean of those N steps, kept on the device until then (no host sync per "
                         "step). Non-finite losses are detected at these steps (with 1, before the update, "
                         "and the state before the step is saved to nonfinite.pth); under DDP SIGINT/SIGTERM "
                         "are acted on at these steps too.", min=1),
        "tensorboard": Key(True, "bool", "Write TensorBoard scalars and image grids to `<run folder>/tb`."),
        "precision": Key("fp32", "str", "Training precision (`models.precision`): `fp32` exact; `bf16` / `fp16` "
                         "run the model under autocast (fp16: CUDA only, with a gradient scaler) while the blur "
                         "operators, FFTs, Eq. (22) init, early-stop test and the loss stay float32; `auto`: bf16 "
                         "when a short probe finds bf16 convolutions faster on this device, else fp32.",
                         choices=("fp32", "bf16", "fp16", "auto")),
        "amp": Key("none", "str", "Older name of `precision`, kept so earlier configs load: `bf16` / `fp16` apply "
                   "on a GPU only (ignored on CPU), `none` = fp32; set one of the two, not both.",
                   choices=("none", "bf16", "fp16")),
        "max_steps_per_epoch": Key(0, "int", "Cut every epoch after N steps (0: full epochs).", min=0),
        "early_stop_sync": Key(False, "bool", "DDP only: NRL-GDN's early stop all-reduces ‖Ax − y‖² over "
                               "the processes, so all stop after the steps one process would take on the "
                               "global batch (false: each process stops on its own share, as the published "
                               "DataParallel code does per GPU)."),
        "find_unused_parameters": Key(False, "bool", "Passed to DistributedDataParallel (needed by models "
                                      "whose forward leaves some parameters unused)."),
    },
    "test_dataset": {
        "is_gray_scale": Key(False, "bool", _PUB + "Report metrics on luma Y = 0.299R+0.587G+0.114B "
                             "(Set12 rows of the paper) instead of RGB."),
        "is_test_real": Key(False, "bool", _PUB + "Real blurred photos + kernel PNGs (no ground truth, "
                            "no metrics); when true the synthetic protocols are not run."),
        "is_test_nonuniform": Key(False, "bool", _PUB + "Non-uniform Gaussian noise from σ-maps (sigma_map_type)."),
        "is_test_gauss": Key(True, "bool", _PUB + "Uniform AWGN at test_noise_level."),
        "is_test_jpeg_compression": Key(False, "bool", _PUB + "Not supported (as in the published code); true is an error."),
        "is_test_poisson_gaussian": Key(False, "bool", _PUB + "Poisson–Gaussian noise: Poisson(χ·y)/χ + "
                                        "N(0, test_noise_level²), clipped to [0, 1]."),
        "is_test_impulse": Key(False, "bool", _PUB + "Random-valued impulse noise with test_noise_intensity."),
        "sigma_map_type": Key("gauss", "str|list[str]", _PUB + "σ-map(s) for is_test_nonuniform "
                              "('gauss-mix' is read as gauss_mix).", choices=SIGMA_MAPS + ("gauss-mix",)),
        "sigma_map_path": Key("", "str", _COMPAT.format(why="maps are generated")),
        "sigma_map_av": Key(2, "int", _COMPAT.format(why="maps are generated")),
        "sigma_map_index": Key(1, "int", _COMPAT.format(why="maps are generated")),
        "sigma_map_range": Key([5.0, 25.0], "list[float]", "σ-maps are min-max scaled to this range (0–255 scale)."),
        "result_save_file": Key("results", "str", _PUB + "Results folder; a run writes to `<result_save_file>/<run_name>/`."),
        "root_path": Key("", "str", _PUB + "Parent folder of test_data."),
        "test_data": Key("", "str", _PUB + "Image folder under root_path (real protocol: the blurred "
                         "photos, or one photo file). Empty: the embedded default test images."),
        "kernel_path": Key("", "str", _PUB + "Kernel file (.mat/.npy, a kernel image or a folder of them; real protocol: "
                           "folder of kernel PNGs matched to photos by equal names, else by sorted order, or the one "
                           "kernel file of one photo). Empty: embedded default kernels "
                           "(task `sisr`: VIRNet's seven SR test kernels at `scale`)."),
        "test_noise_level": Key(2.55, "float|list[float]", _PUB + "Uniform AWGN level(s) on the 0–255 scale "
                                "(also the Gaussian part of Poisson–Gaussian). A list runs each level."),
        "test_noise_intensity": Key(0.1, "float|list[float]", _PUB + "Impulse noise: fraction(s) of replaced pixels."),
        "jpeg_quality_factor": Key(60, "int", _COMPAT.format(why="JPEG protocol not supported")),
        "num_channels": Key(3, "int", _PUB + "3: images read as RGB (gray replicated); 1: gray.", choices=(1, 3)),
        "sigma_min": Key(0.0, "float", _COMPAT.format(why="see sigma_map_range")),
        "sigma_max": Key(25.0, "float", _COMPAT.format(why="see sigma_map_range")),
        "batch_size": Key(1, "int", _COMPAT.format(why="test images are restored one at a time, as published "
                          "with batch_size 1"), min=1),
        "poisson_peak": Key(128.0, "float", "Poisson–Gaussian photon scale χ (published: 128).", min=0),
        "compare_models": Key([], "list", "Extra models in the same table: names (e.g. \"eq22_init\", "
                              "\"wiener\") or objects {model_select, options, pretrained, label}."),
        "baselines_only": Key(False, "bool", "true: evaluate only compare_models (skip the `model` section; "
                              "no checkpoint needed)."),
        "run_name": Key("", "str", "Results sub-folder (empty: test_data, or `default`); a baselines_only run "
                        "writes to `<run_name>_baselines`, so it never replaces the full run's results."),
        "kernel_indices": Key([], "list[int]", "Evaluate only these kernels (empty: all)."),
        "max_images": Key(0, "int", "Evaluate only the first N images (0: all).", min=0),
        "border": Key(0, "int", "Pixels cropped from every side before PSNR/SSIM.", min=0),
        "metric_color": Key("auto", "str", "`auto`: luma when is_gray_scale else rgb; `ycbcr_y`: "
                            "MATLAB Y (SR protocol).", choices=("auto", "rgb", "luma", "ycbcr_y")),
        "quantize": Key(False, "bool", "Round outputs to 8-bit levels before the metrics."),
        "save_images": Key(True, "bool", "Write restored and degraded PNGs."),
        "save_figures": Key(True, "bool", "Write one side-by-side figure per image (degraded | restored | "
                            "ground truth, kernel and σ-map insets)."),
        "record_steps": Key(False, "bool", "Record PSNR after every unrolled step (models with "
                            "`record_steps`) and plot it per protocol."),
        "seed": Key(0, "int", "Noise seed (the published scripts reseed 0 before every image)."),
        "protocols": Key([], "list", "Explicit protocols replacing the is_test_* flags: objects {name, noise "
                         "(a `data.noise.build_noise` spec), blur (default circular; task `denoise`: null, "
                         "`sisr`: symmetric), scale (default test_dataset.scale)}.", spec="protocols"),
        "task": Key("", "str", "Test task (empty: train_dataset.task). `denoise`: the noise protocols "
                    "without blur (is_test_real: real noisy/clean .mat blocks, see noisy_mat); `sisr`: "
                    "blur (`blur`), ×1/scale MATLAB bicubic, noise; the `bicubic` column scores the "
                    "bicubic-upsampled input; kernel_path empty: VIRNet's seven SR test kernels.",
                    choices=("",) + TASKS),
        "scale": Key(1, "int", "Super-resolution factor of task `sisr` (VIRNet: 2, 3, 4; must equal the "
                     "model's scale).", min=1),
        "blur": Key("circular", "str", "Boundary of the synthetic blur (`data.degrade.blur`): `circular` "
                    "(the deblurring papers), `symmetric` (VIRNet SR, scipy 'reflect'), `replicate`, "
                    "`reflect`, `constant`, `valid`.", choices=TEST_BLURS),
        "clip_noisy": Key(False, "bool", "Clip the degraded input to [0, 1] (VIRNet: its denoising tests "
                          "do not clip, its SR test does). Poisson–Gaussian inputs are always clipped."),
        "save_sigma_map": Key(False, "bool", "Write the model's estimated noise σ-map (outputs[\"sigma_map\"], "
                              "8-bit, pixel value = σ on the 0–255 scale) as `<image>_<model>_sigma.png` "
                              "beside each result; the figure's σ inset then shows true | estimated."),
        "sigma_map_interpolation": Key("bilinear", "str", "How the 256×256 test σ-maps are resized to an "
                                       "image: `bilinear` (cv2.resize default, NRL-GDN) or `nearest` "
                                       "(INTER_NEAREST_EXACT, VIRNet).", choices=("bilinear", "nearest")),
        "noisy_mat": Key("", "str", "Task `denoise` with is_test_real: .mat file of noisy blocks "
                         "(SIDD `ValidationNoisyBlocksSrgb.mat`: 40×32×256×256×3 uint8; any …×H×W×C array, "
                         "uint8 or float in [0, 1]); the only variable, or the one whose name contains 'noisy'. "
                         "Empty: the paired folder root_path/test_data with `noisy/` and `gt/` images."),
        "clean_mat": Key("", "str", "The matching ground-truth blocks (SIDD `ValidationGtBlocksSrgb.mat`), "
                         "same shape as noisy_mat."),
        "precision": Key("fp32", "str", "Precision every model runs in (`models.precision`): `fp32` exact "
                         "(the published numbers); `bf16` (`fp16`: CUDA only) runs the CNNs under autocast while "
                         "blur operators, FFTs, the Eq. (22) init and the early-stop test stay float32; `auto`: "
                         "bf16 when a short probe finds bf16 convolutions faster on this device, else fp32.",
                         choices=("fp32", "bf16", "fp16", "auto")),
        "tile_size": Key(0, "int", "Restore images larger than this in tiles of tile_size² pixels (a multiple of "
                         "8, at least 16), blended without seams, so memory stays bounded (`models.tiled`; "
                         "NRL-GDN: within ~1e-5 of the whole-image result). 0: whole images.", min=0),
        "self_ensemble": Key(False, "bool", "Restore each input under the 8 flips/rotations (the kernel "
                             "transformed alike) and average the inverse-transformed outputs "
                             "(VIRNet's `--flip` real-noise results); 8× the time."),
    },
}
TRAIN_SECTIONS = ("train_dataset", "val_dataset", "model", "optimizer", "multi_step_lr", "scheduler",
                  "train_options")
TEST_SECTIONS = ("test_dataset",)


# ----------------------------------------------------------------------------------------- types
def _type_ok(value: Any, kind: str) -> bool:
    if kind == "any":
        return True
    if "|" in kind:
        return any(_type_ok(value, k) for k in kind.split("|"))
    if kind == "null":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, dict)
    if kind.startswith("list[") and kind.endswith("]"):
        inner = kind[5:-1]
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if kind == "list":
        return isinstance(value, list)
    raise AssertionError(f"unknown schema type {kind}")


_TYPE_WORDS = {"bool": "true/false", "int": "an integer", "float": "a number", "str": "a string",
               "dict": "a JSON object", "list": "a list", "null": "null", "any": "any value"}


def _describe(kind: str) -> str:
    if "|" in kind:
        return " or ".join(_describe(k) for k in kind.split("|"))
    if kind.startswith("list["):
        return f"a list of {_describe(kind[5:-1]).replace('an ', '').replace('a ', '')}s"
    return _TYPE_WORDS[kind]


def _suggest(name: str, options: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _suggest_key(section: str, key: str) -> str:
    """Closest key of the section, or the section where this exact key lives."""
    hint = _suggest(key, SCHEMA[section], f"{section}.")
    if hint:
        return hint
    homes = [s for s, spec in SCHEMA.items() if key in spec]
    return f" (did you mean '{homes[0]}.{key}'?)" if homes else ""


# ----------------------------------------------------------------------------------------- checks
def check_value(section: str, key: str, value: Any, origin: str = "") -> Any:
    """Validate one value against the schema; returns it (ints are accepted where floats are)."""
    where = f" in {origin}" if origin else ""
    if section not in SCHEMA:
        raise ConfigError(f"unknown section '{section}'{where}{_suggest(section, SCHEMA)}; "
                          f"sections: {', '.join(SCHEMA)}")
    spec = SCHEMA[section]
    if key not in spec:
        raise ConfigError(f"unknown key '{section}.{key}'{where}{_suggest_key(section, key)}")
    entry = spec[key]
    if not _type_ok(value, entry.type):
        raise ConfigError(f"{section}.{key}{where}: expected {_describe(entry.type)}, "
                          f"got {json.dumps(value)}")
    if entry.choices is not None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in entry.choices:
                raise ConfigError(f"{section}.{key}{where}: '{v}' is not one of "
                                  f"{', '.join(map(str, entry.choices))}{_suggest(str(v), map(str, entry.choices))}")
    if entry.min is not None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (int, float)) and v < entry.min:
                raise ConfigError(f"{section}.{key}{where}: expected a value >= {entry.min}, got {v}")
    if entry.spec:
        check_spec(entry.spec, value, f"{section}.{key}", where)
    return value


# ----------------------------------------------------------------------------------------- nested specs
# Degradation, noise, kernel and protocol specs are checked key by key at load, against the key tables
# of the data modules that build them; their values (ranges, sizes) are checked when the data is built.
def check_spec(kind: str, value: Any, name: str, where: str = "") -> None:
    """Check a nested spec (`kind`: degradation | val_protocol | protocols) of the config entry `name`."""
    if kind == "protocols":
        for i, entry in enumerate(value):
            _check_protocol(entry, f"{name}[{i}]", where, named=True)
    elif kind == "val_protocol":
        if value:
            _check_protocol(value, name, where, named=False)
    elif value:
        _check_degradation(value, name, where)


def _check_keys(value: Any, name: str, allowed: Iterable[str], where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{name}{where}: expected a JSON object, got {json.dumps(value)}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"unknown key '{name}.{key}'{where}{_suggest(key, allowed, f'{name}.')}")


def _check_field(value: Any, name: str, kind: str, where: str, choices: Optional[tuple] = None) -> None:
    if not _type_ok(value, kind):
        raise ConfigError(f"{name}{where}: expected {_describe(kind)}, got {json.dumps(value)}")
    if choices is not None and value not in choices:
        words = [json.dumps(c) if c is None else str(c) for c in choices]
        raise ConfigError(f"{name}{where}: '{value}' is not one of {', '.join(words)}{_suggest(str(value), words)}")


def _spec_type(spec: dict, name: str, types: Iterable[str], where: str, default: Any = None) -> str:
    kind = spec.get("type", default)
    if kind is None:
        raise ConfigError(f"{name}{where}: missing 'type' (one of {', '.join(types)})")
    _check_field(kind, f"{name}.type", "str", where, tuple(types))
    return kind


def _check_degradation(spec: Any, name: str, where: str) -> None:
    from data.degrade import BLUR_MODES, SPEC_KEYS

    _check_keys(spec, name, sorted(SPEC_KEYS), where)
    if isinstance(spec.get("blur"), list):   # one mode drawn per sample
        if not spec["blur"]:
            raise ConfigError(f"{name}.blur{where}: expected a blur mode or a non-empty list of them, got []")
        for i, mode in enumerate(spec["blur"]):
            _check_field(mode, f"{name}.blur[{i}]", "str", where, BLUR_MODES[:-1])
    elif "blur" in spec:
        _check_field(spec["blur"], f"{name}.blur", "str|null", where, BLUR_MODES)
    for key, kind in (("scale", "int"), ("clip", "bool"), ("quantize_blur", "bool")):
        if key in spec:
            _check_field(spec[key], f"{name}.{key}", kind, where)
    if spec.get("kernels") is not None:
        _check_kernels(spec["kernels"], f"{name}.kernels", where)
    _check_noise(spec.get("noise"), f"{name}.noise", where)


def _check_kernels(spec: Any, name: str, where: str) -> None:
    from data.kernels import KERNEL_SAMPLERS

    if isinstance(spec, str):
        return  # a kernel file path
    _check_registered(spec, name, where, KERNEL_SAMPLERS, default="random")


def _check_noise(spec: Any, name: str, where: str) -> None:
    from data.noise import NOISE

    if spec is None or _type_ok(spec, "float"):
        return  # no noise / AWGN of that σ
    kind = _check_registered(spec, name, where, NOISE)
    for i, component in enumerate(spec.get("components", []) if kind == "mixture" else []):
        _check_keys(component, f"{name}.components[{i}]", ("weight", "noise"), where)
        _check_noise(component.get("noise"), f"{name}.components[{i}].noise", where)


def _check_registered(spec: Any, name: str, where: str, registry, default: Optional[str] = None) -> str:
    """A {"type": ..., keys} spec of a registry (noise, kernels): a known type and only the keys its factory
    takes (types registered by files under data/ and models/ included)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{name}{where}: expected a JSON object with a 'type', got {json.dumps(spec)}")
    kind = _spec_type(spec, name, registry.names(), where, default=default)
    allowed = registry.options(kind)
    if allowed is not None:
        _check_keys(spec, name, ["type"] + sorted(allowed), where)
    return kind


def _check_protocol(entry: Any, name: str, where: str, named: bool) -> None:
    from data.degrade import BLUR_MODES

    _check_keys(entry, name, ("name", "noise", "blur", "scale") if named else ("noise", "blur", "scale"), where)
    if named:
        _check_field(entry.get("name"), f"{name}.name", "str", where)
    if "blur" in entry:
        _check_field(entry["blur"], f"{name}.blur", "str|null", where, BLUR_MODES)
    if "scale" in entry:
        _check_field(entry["scale"], f"{name}.scale", "int", where)
    _check_noise(entry.get("noise"), f"{name}.noise", where)


def defaults(sections: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, Any]]:
    names = list(sections) if sections is not None else list(SCHEMA)
    return {section: {key: copy.deepcopy(entry.default) for key, entry in SCHEMA[section].items()} for section in names}


def merge(base: Dict[str, Dict[str, Any]], update: Dict[str, Any], origin: str = "") -> None:
    """Validate `update` ({section: {key: value}}) and write it into `base` in place."""
    if not isinstance(update, dict):
        raise ConfigError(f"{origin}: the top level must be a JSON object of sections")
    for section, values in update.items():
        if _is_comment(section):
            continue  # JSON has no comments; keys starting with // are ignored like KAIR's
        if section not in SCHEMA:
            where = f" in {origin}" if origin else ""
            raise ConfigError(f"unknown section '{section}'{where}{_suggest(section, SCHEMA)}; "
                              f"sections: {', '.join(SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"section '{section}' in {origin}: expected a JSON object of keys")
        for key, value in values.items():
            if not _is_comment(key):
                base.setdefault(section, {})[key] = check_value(section, key, _without_comments(value), origin)


def _is_comment(key: str) -> bool:
    return key.startswith("//") or key.startswith("_comment")


def _without_comments(value: Any) -> Any:
    """`//` notes may sit inside object values too (model options, noise specs): drop them at every depth."""
    if isinstance(value, dict):
        return {k: _without_comments(v) for k, v in value.items() if not _is_comment(k)}
    if isinstance(value, list):
        return [_without_comments(v) for v in value]
    return value


def load_json(path: str, what: str = "config") -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"{what} file not found: {path}")
    with open(path, "r", encoding="utf-8") as fh:
        text = fh.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def parse_override(text: str) -> Tuple[str, str, List[str], Any]:
    """'section.key=value' or 'section.key.sub=value' -> (section, key, [sub...], value).

    The value is read as JSON when it parses (numbers, true/false, lists, objects, "quoted"),
    otherwise taken as a plain string, so `--set test_dataset.test_data=Set12` works unquoted.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected section.key=value")
    name, raw = text.split("=", 1)
    parts = name.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {text}: expected section.key=value (e.g. train_options.epochs=10)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return parts[0], parts[1], parts[2:], value


def apply_overrides(cfg: Dict[str, Dict[str, Any]], overrides: Iterable[str]) -> None:
    for text in overrides or []:
        section, key, sub, value = parse_override(text)
        if sub:  # nested key inside a dict-valued entry, e.g. model.options.num_steps=6
            if section not in SCHEMA or key not in SCHEMA[section]:
                check_value(section, key, None, "--set")  # raises the unknown section/key error
            if SCHEMA[section][key].type != "dict":
                raise ConfigError(f"--set {text}: {section}.{key} is not a JSON object")
            target = cfg[section].setdefault(key, {})
            for part in sub[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"--set {text}: '{part}' is not a JSON object")
            target[sub[-1]] = value
            check_value(section, key, cfg[section][key], "--set")
        else:
            cfg[section][key] = check_value(section, key, value, "--set")


def load_config(train_config: Optional[str] = None, test_config: Optional[str] = None,
                overrides: Iterable[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Defaults <- train config file <- test config file <- overrides. Either file may be None.

    A file may hold any sections (e.g. a test config with its own `model` section); later files win.
    """
    cfg = defaults()
    for path, what in ((train_config, "train config"), (test_config, "test config")):
        if path:
            update = load_json(path, what)
            merge(cfg, update, origin=path)
            foreign = [s for s in update if s in TRAIN_SECTIONS] if what == "test config" else []
            if foreign and train_config:   # said once, so a test config never silently swaps the model
                print(f"note: test config {path} sets {', '.join(foreign)}, replacing the train config's values "
                      "for those keys", file=sys.stderr)
    apply_overrides(cfg, overrides)
    cfg["_sources"] = {"train_config": train_config, "test_config": test_config,
                       "overrides": list(overrides or [])}
    return normalise(cfg)


def override_text(key: str, value: Any) -> str:
    """'section.key=value' that `--set` reads back as `value` (strings stay unquoted when they can)."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def command_line(cfg: Dict[str, Any], overrides: Iterable[str] = ()) -> str:
    """The `python deblurring.py ...` command that loaded `cfg` (its own --train_config/--test_config and
    other flags, its --set overrides) with `overrides` appended, replacing the user's --set of the same
    keys. Empty for a config that was not loaded from the command line or load_config."""
    sources = cfg.get("_sources")
    if not sources:
        return ""
    cli = sources.get("cli")
    if cli is None:
        cli = [part for flag in ("train_config", "test_config") if sources.get(flag)
               for part in (f"--{flag}", sources[flag])]
    replaced = {o.split("=", 1)[0].strip() for o in overrides}
    kept = [o for o in sources.get("overrides", []) if o.split("=", 1)[0].strip() not in replaced]
    parts = ["python", "deblurring.py", *cli] + [arg for o in [*kept, *overrides] for arg in ("--set", o)]
    return " ".join(shlex.quote(str(p)) for p in parts)


def from_dict(update: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Defaults merged with a nested dict (for tests and scripts), normalised as load_config's."""
    cfg = defaults()
    merge(cfg, update, origin="dict")
    return normalise(cfg)


def normalise(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The published flags translated into the nested specs the engine reads (utils/config_normalise.py)."""
    from utils.config_normalise import normalise as translate

    return translate(cfg)


# ----------------------------------------------------------------------------------------- paths
def require_file(cfg, section: str, key: str, what: str = "file") -> str:
    path = cfg[section][key]
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{section}.{key}: {what} not found: '{path}'")
    return path


def require_dir(cfg, section: str, key: str, what: str = "folder") -> str:
    path = cfg[section][key]
    if not path or not os.path.isdir(path):
        raise ConfigError(f"{section}.{key}: {what} not found: '{path}'")
    return path


def public(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The config without bookkeeping entries (what checkpoints and results store)."""
    return {k: copy.deepcopy(v) for k, v in cfg.items() if not k.startswith("_")}


def describe_schema() -> str:
    """Markdown tables of every section and key (used to write the README key tables)."""
    lines = []
    for section, spec in SCHEMA.items():
        lines += [f"#### `{section}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, entry in spec.items():
            doc = entry.doc.replace("|", "\\|")
            if entry.choices:
                doc += " One of: " + ", ".join(f"`{c}`" if c != "" else '`""`' for c in entry.choices) + "."
            lines.append(f"| `{key}` | {entry.type.replace('|', ' or ')} | `{json.dumps(entry.default)}` | {doc} |")
        lines.append("")
    return "\n".join(lines)
