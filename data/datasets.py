"""Datasets for training (on-the-fly degradation), synthetic tests and real blurred photos.

Determinism: every item draws from `numpy.random.default_rng([seed, epoch, index])` (training) or
`default_rng([seed, image_index, kernel_index])` (tests), so samples do not depend on iteration
order, DataLoader worker count or resumption. A training item is addressed as `(epoch, index)` (what
the engine's sampler yields, so persistent DataLoader workers see every epoch) or as a plain `index` of
the epoch last given to `set_epoch` (a worker keeps the epoch it was started with).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.degrade import Degradation, build_degradation
from data.images import image_names, match_channels, list_images, read_image
from data.kernels import dihedral, load_kernels, validate_kernel
from data.noise import build_noise
from utils.config import DataError
from utils.operators import pad_kernel


class ImageSource:
    """Images given as a folder, a list of paths, a list of tensors, (name, tensor) pairs or a dict."""

    def __init__(self, images, gray: bool = False, cache: bool = False):
        if isinstance(images, (str, Path)):
            images = list_images(images)
        if isinstance(images, dict):
            images = list(images.items())
        items = list(images)
        if not items:
            raise ValueError("no images given")
        self.names, self.sources = [], []
        file_names = image_names([p for p in items if isinstance(p, (str, Path))])
        for i, item in enumerate(items):
            if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], int):
                name, src = item
            else:
                src = item
                name = file_names.pop(0) if isinstance(src, (str, Path)) else f"image{i:03d}"
            if torch.is_tensor(src) and (src.dim() != 3 or src.shape[0] not in (1, 3)):
                raise DataError(f"image '{name}': expected a C×H×W tensor with C = 1 or 3, got {tuple(src.shape)}")
            self.names.append(str(name))
            self.sources.append(src)
        self.gray, self.cache, self._cached = gray, cache, {}

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i in self._cached:
            return self._cached[i]
        src = self.sources[i]
        img = match_channels(src.float(), self.gray) if torch.is_tensor(src) else read_image(src, self.gray)
        if self.cache:
            self._cached[i] = img
        return img


def _own_storage(img: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """A copy when img is a view of a (possibly cached) source image, so callers may modify items."""
    return img.clone() if img.untyped_storage().data_ptr() == source.untyped_storage().data_ptr() else img


def random_crop(img: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """size×size crop at a random position; smaller images are first reflect-padded (bottom/right)."""
    h, w = img.shape[-2:]
    if h < size or w < size:
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        img = F.pad(img[None], (0, pad_w, 0, pad_h), mode=mode)[0]
        h, w = img.shape[-2:]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return img[..., top:top + size, left:left + size]


def centre_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central size×size window (the whole side where the image is smaller)."""
    h, w = img.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[..., top:top + size, left:left + size]


def augmented_copy(img: torch.Tensor, mode: int) -> torch.Tensor:
    """A new contiguous tensor holding `dihedral(img, mode)`: one strided copy (numpy views can flip
    and transpose for free, torch would copy for each flip), never aliasing a cached image."""
    view = dihedral(img.detach().cpu().numpy(), mode, copy=False)
    return torch.from_numpy(np.array(view, order="C"))


class EpochSeededDataset(Dataset):
    """`length` training items; item `index` of epoch e draws from default_rng([seed, e, index])."""

    def __init__(self, seed: int, length: int, augment: bool = True):
        self.seed, self.length, self.augment, self.epoch = int(seed), int(length), bool(augment), 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        return self.locate(index)[0]

    def locate(self, index):
        """(generator, index) of an item given as `index` (epoch from set_epoch) or `(epoch, index)`."""
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        return np.random.default_rng([self.seed, int(epoch), int(index)]), int(index)


class TrainDataset(EpochSeededDataset):
    """Random crop + 8-way augmentation + on-the-fly degradation of a set of training images."""

    def __init__(self, images, patch_size, degradation, seed: int = 123, gray: bool = False,
                 augment: bool = True, length: int | None = None, cache: bool = False):
        self.images = ImageSource(images, gray, cache)
        super().__init__(seed, len(self.images) if length is None else length, augment)
        self.patch_size = None if patch_size is None else int(patch_size)
        self.degradation = degradation if callable(degradation) else build_degradation(degradation)

    def __getitem__(self, index) -> dict:
        rng, index = self.locate(index)
        img = self.images[index % len(self.images)]
        if self.patch_size is not None:
            img = random_crop(img, self.patch_size, rng)
        mode = int(rng.integers(8)) if self.augment else 0
        return self.degradation(augmented_copy(img, mode), rng)


class TestDataset(Dataset):
    """images × kernels with a noise model; item i is kernel i // n_images, image i % n_images
    (kernel-major, as the published test loops) and draws from default_rng([seed, image, kernel])."""

    __test__ = False  # not a pytest class

    def __init__(self, images, kernels, noise, seed: int = 0, gray: bool = False, blur="circular",
                 scale: int = 1, clip: bool = False, cache: bool = True):
        self.images = ImageSource(images, gray, cache)
        if kernels is None or blur is None:
            kernels, names = [np.ones((1, 1))], ["none"]
            blur = None
        elif isinstance(kernels, (str, Path)):
            kernels, names = load_kernels(kernels, names=True)
        else:
            kernels = [validate_kernel(k, f"kernel {i}") for i, k in enumerate(kernels)]
            names = [f"k{i}" for i in range(len(kernels))]
        if not kernels:
            raise ValueError("TestDataset needs at least one kernel")
        self.kernels, self.kernel_names, self.seed = kernels, names, int(seed)
        self.noise = build_noise(noise)
        self.degradations = [Degradation(k, self.noise, blur=blur, scale=scale, clip=clip) for k in kernels]

    def __len__(self):
        return len(self.images) * len(self.kernels)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a test set of {len(self)}")
        kernel_index, image_index = divmod(int(index), len(self.images))
        rng = np.random.default_rng([self.seed, image_index, kernel_index])
        image = self.images[image_index]
        item = self.degradations[kernel_index](_own_storage(image, image), rng)
        item.update(name=f"{self.images.names[image_index]}_k{kernel_index}",
                    image_index=image_index, kernel_index=kernel_index)
        return item


class RealDataset(Dataset):
    """Real blurred photos with their kernels (no ground truth): a list of (image, kernel) path pairs,
    or an image folder plus a kernel folder / list, paired by equal file stems, else by sorted order."""

    def __init__(self, folder_or_pairs, kernels=None, gray: bool = False):
        if isinstance(folder_or_pairs, (str, Path)):
            images = list_images(folder_or_pairs)
            if kernels is None:
                raise ValueError(f"RealDataset({folder_or_pairs}): give the kernel folder as 'kernels'")
            pairs = self._pair(images, kernels)
        else:
            pairs = list(folder_or_pairs)
        self.pairs, self.gray = pairs, gray
        self.names = image_names([image if isinstance(image, (str, Path)) else f"image{i:03d}"
                                  for i, (image, _) in enumerate(pairs)])

    @staticmethod
    def _pair(images, kernels):
        if isinstance(kernels, (str, Path)):
            ks, names = load_kernels(kernels, names=True)
        else:
            ks = [validate_kernel(k, f"kernel {i}") for i, k in enumerate(kernels)]
            names = [None] * len(ks)
        by_name = dict(zip(names, ks))
        if all(p.stem in by_name for p in images):
            return [(p, by_name[p.stem]) for p in images]
        if len(ks) != len(images):
            raise DataError(f"cannot pair {len(images)} images with {len(ks)} kernels: "
                             f"names differ and counts differ")
        return list(zip(images, ks))

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image, kernel = self.pairs[index]
        k = load_kernels(kernel)[0] if isinstance(kernel, (str, Path)) else validate_kernel(kernel, str(image))
        y = read_image(image, self.gray) if isinstance(image, (str, Path)) else match_channels(image.float(), self.gray)
        return {"y": y, "k": torch.from_numpy(k).float()[None], "name": self.names[index], "image_index": index}


def collate(items: list) -> dict:
    """Batch dict items: tensors stacked (kernels zero-padded, centred, to a common size), ints as
    tensors, strings as lists; 'scale' stays an int."""
    keys = list(items[0])
    for it in items[1:]:
        if list(it) != keys:
            raise ValueError(f"collate: items have different keys {keys} vs {list(it)}")
    batch = {}
    for key in keys:
        vals = [it[key] for it in items]
        if key == "k":
            h, w = max(v.shape[-2] for v in vals), max(v.shape[-1] for v in vals)
            batch[key] = torch.stack([pad_kernel(v, h, w) for v in vals])
        elif torch.is_tensor(vals[0]):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise DataError(f"collate: '{key}' has different shapes {sorted(shapes)}; "
                                 f"use batch_size=1 for images of different sizes")
            batch[key] = torch.stack(vals)
        elif key == "scale":
            if len(set(vals)) > 1:
                raise ValueError(f"collate: mixed scales {sorted(set(vals))} in one batch")
            batch[key] = vals[0]
        elif isinstance(vals[0], (int, np.integer)):
            batch[key] = torch.tensor(vals)
        else:
            batch[key] = list(vals)
    return batch
