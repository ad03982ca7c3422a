"""Real-noise training and validation pairs: `<root>/noisy/NAME` with `<root>/gt/NAME`.

This is the folder layout of VIRNet's SIDD training patches (noisy and ground-truth PNGs with equal
names in sibling folders). A training item is the same random crop and the same flip/rotation of both
images, drawn from `default_rng([seed, epoch, index])` like `TrainDataset`, so it does not depend on
worker count or resumption. Items carry y (noisy), x (clean) and k (the 1×1 identity: no blur).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch

from data.datasets import EpochSeededDataset, ImageSource, augmented_copy, centre_crop, random_crop
from data.images import list_images
from utils.config import DataError

NOISY_DIR = "noisy"
CLEAN_DIRS = ("gt", "clean")


def find_pairs(root) -> List[Tuple[Path, Path]]:
    """(noisy, clean) paths under `root`: every image in `root/noisy` with its namesake in `root/gt`
    (or `root/clean`)."""
    root = Path(root)
    noisy_dir = root / NOISY_DIR
    clean_dir = next((root / d for d in CLEAN_DIRS if (root / d).is_dir()), None)
    if not noisy_dir.is_dir() or clean_dir is None:
        raise FileNotFoundError(f"paired data in '{root}': expected sub-folders '{NOISY_DIR}/' and "
                                f"'{CLEAN_DIRS[0]}/' (or '{CLEAN_DIRS[1]}/') holding images with equal names")
    noisy = list_images(noisy_dir)
    clean = {p.name: p for p in list_images(clean_dir)}
    missing = [p.name for p in noisy if p.name not in clean]
    if missing:
        raise FileNotFoundError(f"paired data in '{root}': {len(missing)} noisy image(s) have no ground truth "
                                f"in '{clean_dir}', e.g. '{missing[0]}'")
    return [(p, clean[p.name]) for p in noisy]


class PairedImages:
    """Noisy/clean image pairs, read on demand (optionally cached) and checked for equal sizes."""

    def __init__(self, pairs, gray: bool = False, cache: bool = False):
        pairs = list(pairs)
        if not pairs:
            raise ValueError("no noisy/clean pairs given")
        self.noisy = ImageSource([n for n, _ in pairs], gray, cache)
        self.clean = ImageSource([c for _, c in pairs], gray, cache)
        self.names = self.noisy.names

    def __len__(self) -> int:
        return len(self.noisy)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        y, x = self.noisy[i], self.clean[i]
        if y.shape != x.shape:
            raise DataError(f"pair '{self.names[i]}': noisy image is {tuple(y.shape)} but its ground truth is "
                             f"{tuple(x.shape)}")
        return y, x


class PairedTrainDataset(EpochSeededDataset):
    """Random crops (shared by the noisy and the clean image) with shared 8-way augmentation."""

    def __init__(self, pairs, patch_size: int, seed: int = 123, gray: bool = False, augment: bool = True,
                 length: int | None = None, cache: bool = False):
        self.pairs = pairs if isinstance(pairs, PairedImages) else PairedImages(pairs, gray, cache)
        super().__init__(seed, len(self.pairs) if length is None else length, augment)
        self.patch_size = int(patch_size)

    def __getitem__(self, index) -> dict:
        rng, index = self.locate(index)
        y, x = self.pairs[index % len(self.pairs)]
        both = random_crop(torch.cat([y, x]), self.patch_size, rng)
        mode = int(rng.integers(8)) if self.augment else 0
        both = augmented_copy(both, mode)
        c = y.shape[0]
        return {"x": both[c:], "y": both[:c], "k": torch.ones(1, 1, 1)}


def paired_items(root, gray: bool = False, max_images: int = 0, patch_size: int = 0) -> List[dict]:
    """Validation/test items of a paired folder (whole images, or centre crops of `patch_size`)."""
    pairs = find_pairs(root)
    images = PairedImages(pairs[:max_images] if max_images else pairs, gray)
    items = []
    for i in range(len(images)):
        y, x = images[i]
        if patch_size:
            y, x = centre_crop(y, patch_size), centre_crop(x, patch_size)
        items.append({"x": x, "y": y, "k": torch.ones(1, 1, 1), "name": Path(images.names[i]).stem,
                      "image_index": i})
    return items
