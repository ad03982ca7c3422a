"""Real-noise test data stored as blocks in two .mat files (the SIDD validation layout).

SIDD ships `ValidationNoisyBlocksSrgb.mat` / `ValidationGtBlocksSrgb.mat`, each one uint8 array of
40 images × 32 blocks × 256 × 256 × 3. Any `…×H×W×C` array pair works (C = 1 or 3; uint8 levels or
floats in [0, 1]); every leading index is one block. Items follow the batch contract of the test
protocols: x (clean), y (noisy), k (the 1×1 identity kernel: no blur), name, image_index.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
import torch

from utils.config import ConfigError


_SIDD_FILES = {"noisy_mat": "ValidationNoisyBlocksSrgb.mat", "clean_mat": "ValidationGtBlocksSrgb.mat"}


def _read_blocks(path: str, key: str, hint: tuple, section: str = "test_dataset") -> np.ndarray:
    import scipy.io

    sidd_file, key = _SIDD_FILES[key], f"{section}.{key}"
    if not path:
        raise ConfigError(f"{key}: real-noise evaluation reads noisy/clean blocks; set it to a .mat file "
                          f"(SIDD: {sidd_file})")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: .mat file of blocks not found: '{path}'")
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:
        raise ConfigError(f"{key}: {path} is a MATLAB v7.3 (HDF5) file; save it with '-v7'") from None
    except Exception as err:  # scipy raises several types for corrupt files
        raise ConfigError(f"{key}: cannot read {path} ({err})") from None
    names = [n for n in data if not n.startswith("__")]
    if len(names) != 1:
        named = [n for n in names if any(h in n.lower() for h in hint)]
        if len(named) != 1:
            raise ConfigError(f"{key}: {path} holds variables {names}; expected one, or one whose "
                              f"name contains {' or '.join(repr(h) for h in hint)}")
        names = named
    blocks = np.asarray(data[names[0]])
    if blocks.ndim < 4 or blocks.shape[-1] not in (1, 3):
        raise ConfigError(f"{key}: variable '{names[0]}' in {path} has shape {blocks.shape}; "
                          "expected …×H×W×C blocks with C = 1 or 3 (SIDD: 40×32×256×256×3)")
    if not (blocks.dtype == np.uint8 or np.issubdtype(blocks.dtype, np.floating)):
        raise ConfigError(f"{key}: variable '{names[0]}' in {path} is {blocks.dtype}; "
                          "expected uint8 or float in [0, 1]")
    return blocks


class MatBlocks:
    """Noisy/clean block pairs from two .mat files, one test item per block."""

    def __init__(self, noisy: np.ndarray, clean: np.ndarray, gray: bool = False, max_images: int = 0,
                 section: str = "test_dataset"):
        if noisy.shape != clean.shape:
            raise ConfigError(f"{section}.noisy_mat / clean_mat: block arrays differ in shape "
                              f"({noisy.shape} vs {clean.shape})")
        self.grid = noisy.shape[:-3]                           # e.g. (40, 32) for SIDD
        self.noisy = noisy.reshape((-1,) + noisy.shape[-3:])
        self.clean = clean.reshape((-1,) + clean.shape[-3:])
        self.count = len(self.noisy) if not max_images else min(max_images, len(self.noisy))
        self.gray = gray

    @classmethod
    def from_config(cls, tcfg, gray: bool, section: str = "test_dataset") -> "MatBlocks":
        noisy = _read_blocks(tcfg["noisy_mat"], "noisy_mat", ("noisy",), section)
        clean = _read_blocks(tcfg["clean_mat"], "clean_mat", ("gt", "clean"), section)
        return cls(noisy, clean, gray, tcfg["max_images"], section)

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        position = np.unravel_index(index, self.grid)
        if len(position) == 1:
            return f"block{position[0]:04d}"
        return "img{:02d}_block".format(position[0]) + "_".join(f"{p:02d}" for p in position[1:])

    def _image(self, block: np.ndarray) -> torch.Tensor:
        from data.images import match_channels

        t = torch.from_numpy(np.ascontiguousarray(block.transpose(2, 0, 1)))
        t = t.float() / 255.0 if block.dtype == np.uint8 else t.float()
        return match_channels(t, self.gray)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(f"block {index} out of range for {self.count} blocks")
        return {"x": self._image(self.clean[index]), "y": self._image(self.noisy[index]),
                "k": torch.ones(1, 1, 1), "name": self.name(index), "image_index": index}

    @property
    def names(self) -> List[str]:
        return [self.name(i) for i in range(self.count)]
