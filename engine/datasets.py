"""Training and validation data from the config, and a sampler that can resume mid-epoch."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from data.datasets import centre_crop
from utils.config import ConfigError


class ResumableSampler(Sampler):
    """DistributedSampler-like: the epoch's permutation comes from (seed, epoch) only, every rank takes
    its strided share, and `skip` drops the first indices of this rank's share (resuming). It yields
    `(epoch, index)` pairs, so DataLoader workers that persist across epochs still draw each epoch's data."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.seed, self.shuffle, self.epoch, self.skip = seed, shuffle, 0, 0
        self.per_rank = size // num_replicas      # drop the remainder so ranks stay in step

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        mine = order[self.rank:self.per_rank * self.num_replicas:self.num_replicas]
        return mine[self.skip:]

    def __iter__(self) -> Iterator[tuple]:
        return iter([(self.epoch, i) for i in self.indices()])

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)


def _images(root: str, key: str, gray: bool, max_images: int, default):
    from data.images import list_images

    if not root:
        images = default(gray=gray)
        items = list(images.items())
    else:
        if not os.path.isdir(root):
            raise ConfigError(f"{key}: image folder not found: '{root}'")
        try:
            items = list_images(root, recursive=True)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
    return items[:max_images] if max_images else items


def _split_holdout(cfg, gray: bool):
    """The training folder's images split into (trained on, held out for validation): the last
    train_dataset.holdout images in name order are never trained on."""
    from data.images import default_images

    d = cfg["train_dataset"]
    items = _images(d["root_path"], "train_dataset.root_path", gray, d["max_images"], default_images)
    if d["holdout"] >= len(items):
        raise ConfigError(f"train_dataset.holdout: {d['holdout']} held-out images leave none of the "
                          f"{len(items)} training images to train on")
    cut = len(items) - d["holdout"]
    return items[:cut], items[cut:]


def _train_images(cfg, gray: bool):
    return _split_holdout(cfg, gray)[0]


def noise_spec(cfg) -> Dict[str, Any]:
    """Training noise from the published flags (train_options.is_train_*) and train_dataset keys."""
    d, o = cfg["train_dataset"], cfg["train_options"]
    sigma_range = [d["sigma_min"], d["sigma_max"]]
    if sigma_range[0] > sigma_range[1]:
        raise ConfigError(f"train_dataset.sigma_min ({sigma_range[0]}) is larger than sigma_max ({sigma_range[1]})")
    if o["is_train_poisson_gaussian"]:
        return {"type": "poisson_gaussian", "peak": d["poisson_peak"], "sigma": d["sigma_max"]}
    if o["is_train_impulse"]:
        return {"type": "impulse", "fraction": d["noise_intensity"]}
    if not o["is_train_gauss"]:
        raise ConfigError("train_options: no training noise selected; set is_train_gauss, is_train_poisson_gaussian "
                          "or is_train_impulse to true (or give train_dataset.degradation)")
    if d["noise_type"] == "uniform":
        return {"type": "uniform", "sigma_range": sigma_range}
    return {"type": "mixture", "components": [
        {"weight": 6, "noise": {"type": "regions", "layout": "one", "sigma_range": sigma_range}},
        {"weight": 3, "noise": {"type": "regions", "layout": "four", "sigma_range": sigma_range}}]}


def degradation_spec(cfg, scale: Optional[int] = None) -> Dict[str, Any]:
    """The training degradation for train_dataset.task; `scale` is the model's SR factor, if any."""
    from engine.tasks import complete_spec, sisr_default_spec

    d = cfg["train_dataset"]
    task = d["task"]
    if d["degradation"]:
        return complete_spec(task, d["degradation"], "train_dataset.degradation", scale)
    if task == "denoise":
        return {"noise": noise_spec(cfg), "blur": None}
    if task == "sisr":
        return sisr_default_spec(cfg, scale)
    if d["kernel_path"] and not os.path.exists(d["kernel_path"]):
        raise ConfigError(f"train_dataset.kernel_path: kernel file not found: '{d['kernel_path']}'")
    kernels = {"type": "file", "path": d["kernel_path"], "augment": True} if d["kernel_path"] else {"type": "random"}
    return {"kernels": kernels, "noise": noise_spec(cfg), "blur": "circular", "quantize_blur": d["quantize_blur"]}


def build_train_loader(cfg, batch_per_process: int, rank: int, world: int, worker_init_fn=None,
                       scale: Optional[int] = None):
    from data.datasets import TrainDataset, collate
    from data.images import default_images

    d = cfg["train_dataset"]
    gray = d["num_channels"] == 1
    for key in ("paired", "mixup"):
        if d[key] and d["task"] != "denoise":
            raise ConfigError(f"train_dataset.{key}: needs task 'denoise' (no blur), the task is '{d['task']}'")
    try:
        if d["paired"]:
            dataset = _paired_train_set(d, gray, cfg["train_options"]["seed"])
        else:
            images = _train_images(cfg, gray)
            dataset = TrainDataset(images, d["patch_size"], degradation_spec(cfg, scale),
                                   seed=cfg["train_options"]["seed"], gray=gray, length=d["repeat"] * len(images))
    except ConfigError:
        raise
    except (KeyError, ValueError) as err:
        raise ConfigError(f"train_dataset: {err.args[0] if err.args else err}") from None
    sampler = ResumableSampler(len(dataset), world, rank, seed=cfg["train_options"]["seed"])
    # persistent workers: no restart per epoch (the epoch travels with the sampler's indices). A generator
    # of its own: each new iterator draws a worker base seed, which must not advance the global torch RNG
    # (a resumed run creates its iterators at other points than an uninterrupted one)
    loader = DataLoader(dataset, batch_size=batch_per_process, sampler=sampler, num_workers=d["num_workers"],
                        collate_fn=collate, drop_last=True, worker_init_fn=worker_init_fn,
                        persistent_workers=d["num_workers"] > 0,
                        generator=torch.Generator().manual_seed(cfg["train_options"]["seed"] + rank),
                        pin_memory=torch.cuda.is_available() and not cfg["train_options"]["disable_cuda"])
    return loader, sampler, dataset


def _paired_train_set(d, gray: bool, seed: int):
    from data.paired import PairedTrainDataset, find_pairs

    if not d["root_path"]:
        raise ConfigError("train_dataset.root_path: paired training needs a folder with noisy/ and gt/ images")
    try:
        pairs = find_pairs(d["root_path"])
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"train_dataset.root_path: {err}") from None
    pairs = pairs[:d["max_images"]] if d["max_images"] else pairs
    return PairedTrainDataset(pairs, d["patch_size"], seed=seed, gray=gray, length=d["repeat"] * len(pairs))


def _real_noise_val_items(v, gray: bool) -> List[dict]:
    """Validation pairs from a noisy/gt folder (val_dataset.paired) or from .mat blocks."""
    if v["paired"]:
        from data.paired import paired_items
        try:
            return paired_items(v["root_path"], gray, v["max_images"], v["patch_size"])
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"val_dataset.root_path: {err}") from None
    from engine.noisy_blocks import MatBlocks
    blocks = MatBlocks.from_config(v, gray, section="val_dataset")
    return [blocks[i] for i in range(len(blocks))]


def build_val_set(cfg, scale: Optional[int] = None):
    """A list of validation items (one kernel, fixed noise); `scale` is the model's SR factor, if any."""
    from data.datasets import TestDataset
    from data.default_data import default_kernels, default_test_images
    from data.kernels import load_kernels
    from engine.tasks import task_of

    v = cfg["val_dataset"]
    gray = v["num_channels"] == 1
    if v["paired"] or v["noisy_mat"] or v["clean_mat"]:
        return _real_noise_val_items(v, gray)
    if v["use_holdout"]:
        if v["root_path"]:
            raise ConfigError("val_dataset.use_holdout: validation images come from the training folder; "
                              f"leave val_dataset.root_path empty (it is '{v['root_path']}')")
        if not cfg["train_dataset"]["holdout"]:
            raise ConfigError("val_dataset.use_holdout: set train_dataset.holdout to the number of training "
                              "images to keep out of training for validation")
        held = _split_holdout(cfg, gray)[1]
        images = held[:v["max_images"]] if v["max_images"] else held
    else:
        images = _images(v["root_path"], "val_dataset.root_path", gray, v["max_images"], default_test_images)
    task = task_of(cfg, "val_dataset")
    if task != "deblur" or v["degradation"]:
        return _degraded_items(cfg, task, images, gray, scale)
    if v["kernel_path"]:
        if not os.path.exists(v["kernel_path"]):
            raise ConfigError(f"val_dataset.kernel_path: kernel file not found: '{v['kernel_path']}'")
        kernels = load_kernels(v["kernel_path"])
    else:
        kernels = default_kernels()
    if v["kernel_index"] >= len(kernels):
        raise ConfigError(f"val_dataset.kernel_index: {v['kernel_index']} is out of range for "
                          f"{len(kernels)} kernels in '{v['kernel_path'] or 'the embedded default kernels'}'")
    if v["patch_size"]:
        images = [(n, centre_crop(img, v["patch_size"])) for n, img in _named(images, gray)]
    noise = ({"type": "sigma_map", "map": v["sigma_map_type"], "range": cfg["test_dataset"]["sigma_map_range"]}
             if v["sigma_map_type"] else {"type": "uniform", "sigma": v["noise_level"]})
    protocol = dict(v["protocol"])
    unknown = set(protocol) - {"noise", "blur", "scale"}
    if unknown:
        raise ConfigError(f"val_dataset.protocol: unknown field(s) {sorted(unknown)}; expected noise, blur, scale")
    try:
        dataset = TestDataset(images, [kernels[v["kernel_index"]]], protocol.get("noise", noise), seed=0, gray=gray,
                              blur=protocol.get("blur", "circular"), scale=int(protocol.get("scale", 1)))
    except (KeyError, ValueError) as err:
        raise ConfigError(f"val_dataset: {err.args[0] if err.args else err}") from None
    return [dataset[i] for i in range(len(dataset))]


def _degraded_items(cfg, task: str, images, gray: bool, scale: Optional[int]) -> List[dict]:
    """Validation items of a degradation spec: image i is degraded with default_rng([0, i])."""
    import numpy as np
    from engine.tasks import val_degradation

    v = cfg["val_dataset"]
    degradation = val_degradation(cfg, task, scale)
    items = []
    for i, (name, img) in enumerate(_named(images, gray)):
        if v["patch_size"]:
            img = centre_crop(img, v["patch_size"])
        try:
            item = degradation(img.clone(), np.random.default_rng([0, i]))
        except ValueError as err:
            raise ConfigError(f"val_dataset ({name}): {err}") from None
        item["name"] = name
        items.append(item)
    return items


def _named(images, gray: bool):
    from data.images import read_image

    for item in images:
        if isinstance(item, tuple):
            yield item
        else:
            yield os.path.splitext(os.path.basename(str(item)))[0], read_image(item, gray)
