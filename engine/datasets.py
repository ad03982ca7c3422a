"""Training and validation data from the config, and a sampler that can resume mid-epoch."""
from __future__ import annotations

import os
from typing import Iterator, List, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from data.datasets import centre_crop
from utils.config import ConfigError
from utils.config_normalise import require_normalised


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

    train = cfg["train_dataset"]
    items = _images(train["root_path"], "train_dataset.root_path", gray, train["max_images"], default_images)
    if train["holdout"] >= len(items):
        raise ConfigError(f"train_dataset.holdout: {train['holdout']} held-out images leave none of the "
                          f"{len(items)} training images to train on")
    cut = len(items) - train["holdout"]
    return items[:cut], items[cut:]


def _train_images(cfg, gray: bool):
    return _split_holdout(cfg, gray)[0]


def build_train_loader(cfg, batch_per_process: int, rank: int, world: int, worker_init_fn=None,
                       scale: Optional[int] = None):
    from data.datasets import TrainDataset, collate
    from engine.tasks import complete_spec

    require_normalised(cfg)
    train = cfg["train_dataset"]
    gray = train["num_channels"] == 1
    for key in ("paired", "mixup"):
        if train[key] and train["task"] != "denoise":
            raise ConfigError(f"train_dataset.{key}: needs task 'denoise' (no blur), the task is '{train['task']}'")
    try:
        if train["paired"]:
            dataset = _paired_train_set(train, gray, cfg["train_options"]["seed"])
        else:
            images = _train_images(cfg, gray)
            spec = complete_spec(train["task"], train["degradation"], "train_dataset.degradation", scale)
            dataset = TrainDataset(images, train["patch_size"], spec, seed=cfg["train_options"]["seed"], gray=gray,
                                   length=train["repeat"] * len(images))
    except ConfigError:
        raise
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"train_dataset: {err.args[0] if err.args else err}") from None
    sampler = ResumableSampler(len(dataset), world, rank, seed=cfg["train_options"]["seed"])
    # persistent workers: no restart per epoch (the epoch travels with the sampler's indices). A generator
    # of its own: each new iterator draws a worker base seed, which must not advance the global torch RNG
    # (a resumed run creates its iterators at other points than an uninterrupted one)
    loader = DataLoader(dataset, batch_size=batch_per_process, sampler=sampler, num_workers=train["num_workers"],
                        collate_fn=collate, drop_last=True, worker_init_fn=worker_init_fn,
                        persistent_workers=train["num_workers"] > 0,
                        generator=torch.Generator().manual_seed(cfg["train_options"]["seed"] + rank),
                        pin_memory=torch.cuda.is_available() and not cfg["train_options"]["disable_cuda"])
    return loader, sampler, dataset


def _paired_train_set(train, gray: bool, seed: int):
    from data.paired import PairedTrainDataset, find_pairs

    if not train["root_path"]:
        raise ConfigError("train_dataset.root_path: paired training needs a folder with noisy/ and gt/ images")
    try:
        pairs = find_pairs(train["root_path"])
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"train_dataset.root_path: {err}") from None
    pairs = pairs[:train["max_images"]] if train["max_images"] else pairs
    return PairedTrainDataset(pairs, train["patch_size"], seed=seed, gray=gray, length=train["repeat"] * len(pairs))


def _real_noise_val_items(val, gray: bool) -> List[dict]:
    """Validation pairs from a noisy/gt folder (val_dataset.paired) or from .mat blocks."""
    if val["paired"]:
        from data.paired import paired_items
        try:
            return paired_items(val["root_path"], gray, val["max_images"], val["patch_size"])
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"val_dataset.root_path: {err}") from None
    from engine.noisy_blocks import MatBlocks
    blocks = MatBlocks.from_config(val, gray, section="val_dataset")
    return [blocks[i] for i in range(len(blocks))]


def build_val_set(cfg, scale: Optional[int] = None):
    """A list of validation items (fixed noise); `scale` is the model's SR factor, if any."""
    require_normalised(cfg)
    val = cfg["val_dataset"]
    gray = val["num_channels"] == 1
    if val["paired"] or val["noisy_mat"] or val["clean_mat"]:
        return _real_noise_val_items(val, gray)
    images = _val_images(cfg, gray)
    if val["degradation"]:
        return _degraded_items(cfg, images, gray, scale)
    return _protocol_items(val, images, gray)


def _val_images(cfg, gray: bool):
    from data.default_data import default_test_images

    val = cfg["val_dataset"]
    if not val["use_holdout"]:
        return _images(val["root_path"], "val_dataset.root_path", gray, val["max_images"], default_test_images)
    if val["root_path"]:
        raise ConfigError("val_dataset.use_holdout: validation images come from the training folder; "
                          f"leave val_dataset.root_path empty (it is '{val['root_path']}')")
    if not cfg["train_dataset"]["holdout"]:
        raise ConfigError("val_dataset.use_holdout: set train_dataset.holdout to the number of training "
                          "images to keep out of training for validation")
    held = _split_holdout(cfg, gray)[1]
    return held[:val["max_images"]] if val["max_images"] else held


def _protocol_items(val, images, gray: bool) -> List[dict]:
    """Validation items of val_dataset.protocol: kernel kernel_index of kernel_path, seeded as a test set."""
    from data.datasets import TestDataset
    from data.default_data import default_kernels
    from data.kernels import load_kernels

    if val["kernel_path"]:
        if not os.path.exists(val["kernel_path"]):
            raise ConfigError(f"val_dataset.kernel_path: kernel file not found: '{val['kernel_path']}'")
        try:
            kernels = load_kernels(val["kernel_path"])
        except (KeyError, ValueError) as err:
            raise ConfigError(f"val_dataset.kernel_path: {err.args[0] if err.args else err}") from None
    else:
        kernels = default_kernels()
    if val["kernel_index"] >= len(kernels):
        raise ConfigError(f"val_dataset.kernel_index: {val['kernel_index']} is out of range for "
                          f"{len(kernels)} kernels in '{val['kernel_path'] or 'the embedded default kernels'}'")
    if val["patch_size"]:
        images = [(n, centre_crop(img, val["patch_size"])) for n, img in _named(images, gray)]
    protocol = val["protocol"]
    try:
        dataset = TestDataset(images, [kernels[val["kernel_index"]]], protocol["noise"], seed=0, gray=gray,
                              blur=protocol["blur"], scale=int(protocol["scale"]))
    except (KeyError, ValueError) as err:
        raise ConfigError(f"val_dataset: {err.args[0] if err.args else err}") from None
    return [dataset[i] for i in range(len(dataset))]


def _degraded_items(cfg, images, gray: bool, scale: Optional[int]) -> List[dict]:
    """Validation items of val_dataset.degradation: image i is degraded with default_rng([0, i])."""
    import numpy as np
    from data.degrade import build_degradation
    from engine.tasks import complete_spec

    val = cfg["val_dataset"]
    where = "val_dataset.degradation"
    try:
        degradation = build_degradation(complete_spec(val["task"], val["degradation"], where, scale))
    except ConfigError:
        raise
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{where}: {err.args[0] if err.args else err}") from None
    items = []
    for i, (name, img) in enumerate(_named(images, gray)):
        if val["patch_size"]:
            img = centre_crop(img, val["patch_size"])
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
