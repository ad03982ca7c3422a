"""DND sRGB benchmark submission: denoise the 50 × 20 blocks and write the bundles to upload.

DND (Plötz & Roth, CVPR 2017) keeps its ground truth private. Its folder holds `info.mat` (MATLAB
v7.3 / HDF5: `info/boundingboxes`, one 20×4 array per image of 1-based inclusive [top, left, bottom,
right] corners) and `images_srgb/0001.mat` … `0050.mat` (`InoisySRGB`, H×W×3 floats in [0, 1]).
The upload is `bundled/0001.mat` … with `Idenoised` (a 1×20 cell array of the denoised blocks),
`israw` = false and `eval_version` = "1.0". Each image's bundle is written atomically, and images
already bundled are skipped, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import io
import os
from typing import Iterator, List, Tuple

import numpy as np
import torch
from tqdm import tqdm

from utils.config import ConfigError
from utils.io import atomic_write_bytes

BLOCKS_PER_IMAGE = 20


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ConfigError("DND: reading its MATLAB v7.3 files needs h5py (pip install h5py)") from None
    return h5py


def _image_count(dnd_dir: str) -> int:
    folder = os.path.join(dnd_dir, "images_srgb")
    if not os.path.isfile(os.path.join(dnd_dir, "info.mat")) or not os.path.isdir(folder):
        raise ConfigError(f"DND folder '{dnd_dir}': expected info.mat and images_srgb/ (the DND sRGB release)")
    return len([f for f in os.listdir(folder) if f.endswith(".mat")])


def dnd_images(dnd_dir: str, skip=()) -> Iterator[Tuple[int, List[np.ndarray]]]:
    """(image number from 1, its noisy blocks as H×W×3 float32) for every image not in `skip`."""
    h5py = _h5py()
    count = _image_count(dnd_dir)
    with h5py.File(os.path.join(dnd_dir, "info.mat"), "r") as infos:
        info = infos["info"]
        refs = info["boundingboxes"]
        for i in range(count):
            if i + 1 in skip:
                continue
            boxes = np.array(info[refs[0][i]]).T                       # MATLAB column-major -> 20×4
            path = os.path.join(dnd_dir, "images_srgb", f"{i + 1:04d}.mat")
            if not os.path.isfile(path):
                raise ConfigError(f"DND folder '{dnd_dir}': missing images_srgb/{i + 1:04d}.mat")
            with h5py.File(path, "r") as f:
                noisy = np.float32(np.array(f["InoisySRGB"]).T)         # -> H×W×3
            if boxes.shape != (BLOCKS_PER_IMAGE, 4):
                raise ConfigError(f"DND info.mat: image {i + 1} has bounding boxes of shape {boxes.shape}, "
                                  f"expected ({BLOCKS_PER_IMAGE}, 4)")
            yield i + 1, [noisy[int(t) - 1:int(b), int(l) - 1:int(r)].copy() for t, l, b, r in boxes]


def write_bundle(out_dir: str, number: int, blocks: List[np.ndarray]) -> str:
    """bundled/<number>.mat in DND's upload format, written atomically."""
    import scipy.io

    folder = os.path.join(out_dir, "bundled")
    os.makedirs(folder, exist_ok=True)
    cells = np.empty((BLOCKS_PER_IMAGE,), dtype=object)
    for b, block in enumerate(blocks):
        cells[b] = np.float32(block)
    path = os.path.join(folder, f"{number:04d}.mat")
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"Idenoised": cells, "israw": False, "eval_version": "1.0"})
    atomic_write_bytes(path, buffer.getvalue())   # fsync'ed: a bundle on disk is always complete
    return path


def dnd_submission(cfg, dnd_dir: str, out_dir: str, verbose: bool = True) -> List[str]:
    """Denoise DND with the config's `model` section (test_dataset.self_ensemble applies); returns the
    bundle paths written by this call."""
    from engine import distributed as dist
    from engine.evaluate import load_models, restore

    device = dist.select_device(cfg["train_options"]["disable_cuda"], cfg["train_options"]["device_ids"])
    (spec, model), *others = load_models(cfg, device)
    if others:
        raise ConfigError("test_dataset.compare_models: a DND submission restores with one model; leave it empty")
    count = _image_count(dnd_dir)
    done = {n for n in range(1, count + 1) if os.path.isfile(os.path.join(out_dir, "bundled", f"{n:04d}.mat"))}
    written = []
    bar = tqdm(dnd_images(dnd_dir, done), total=count - len(done), desc=f"DND · {spec.title}", unit="img",
               disable=not verbose)
    for number, blocks in bar:
        restored = []
        for block in blocks:
            y = torch.from_numpy(np.ascontiguousarray(block.transpose(2, 0, 1)))[None].to(device)
            with torch.inference_mode():
                out = restore(model, {"y": y, "k": torch.ones(1, 1, 1, 1, device=device)}, 0,
                               cfg["test_dataset"]["self_ensemble"])
            restored.append(out["x"][0].float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0))
        written.append(write_bundle(out_dir, number, restored))
    return written
