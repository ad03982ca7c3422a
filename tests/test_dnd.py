"""DND submission: blocks cut from the HDF5 release as its boxes say, bundles in the upload format."""
import os

import numpy as np
import pytest
import scipy.io
import torch

from engine.dnd import dnd_submission
from models import register_model
from utils.config import ConfigError, from_dict

h5py = pytest.importorskip("h5py")


class ShiftDown(torch.nn.Module):
    """Parameter-free stand-in denoiser: y − 0.25 (the clamp to [0, 1] must show in the bundle)."""
    input_keys = ("y",)

    def forward(self, y):
        return y - 0.25


register_model("test_shift_down", ShiftDown)


def make_dnd(folder, n_images=2, size=(40, 36)):
    """A tiny DND-layout folder: pixel values encode (row, col, channel), boxes are 1-based inclusive."""
    h, w = size
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "images_srgb"))
    images, boxes = [], []
    for i in range(n_images):
        r, c, ch = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
        img = ((r * w + c) * 3 + ch + i).astype(np.float32) / (h * w * 3 + n_images)
        with h5py.File(os.path.join(folder, "images_srgb", f"{i + 1:04d}.mat"), "w") as f:
            f["InoisySRGB"] = img.T                             # MATLAB v7.3 stores column-major
        top, left = rng.integers(1, h - 8, 20), rng.integers(1, w - 8, 20)
        box = np.stack([top, left, top + rng.integers(3, 8, 20), left + rng.integers(3, 8, 20)], 1).astype(float)
        images.append(img)
        boxes.append(box)
    with h5py.File(os.path.join(folder, "info.mat"), "w") as f:
        info = f.create_group("info")
        refs = []
        for i, box in enumerate(boxes):
            refs.append(info.create_dataset(f"bb{i}", data=box.T).ref)
        info.create_dataset("boundingboxes", data=np.array([refs], dtype=h5py.ref_dtype))
    return images, boxes


def _cfg(ensemble=False):
    return from_dict({"model": {"model_select": "test_shift_down"}, "train_options": {"disable_cuda": True},
                      "test_dataset": {"self_ensemble": ensemble}})


def test_bundles_hold_the_denoised_boxes_and_resume(tmp_path):
    images, boxes = make_dnd(str(tmp_path / "dnd"))
    out = str(tmp_path / "out")
    written = dnd_submission(_cfg(), str(tmp_path / "dnd"), out, verbose=False)
    assert [os.path.basename(p) for p in written] == ["0001.mat", "0002.mat"]
    for img, box, path in zip(images, boxes, written):
        bundle = scipy.io.loadmat(path)
        assert bundle["Idenoised"].shape == (1, 20) and not bundle["israw"].item()
        assert str(bundle["eval_version"][0]) == "1.0"
        for b, (t, l, bottom, r) in enumerate(box.astype(int)):
            block = img[t - 1:bottom, l - 1:r]                      # 1-based inclusive corners
            assert np.array_equal(bundle["Idenoised"][0, b], np.clip(block - 0.25, 0, 1).astype(np.float32))
    os.remove(written[1])
    again = dnd_submission(_cfg(ensemble=True), str(tmp_path / "dnd"), out, verbose=False)
    assert [os.path.basename(p) for p in again] == ["0002.mat"]         # image 1 was already bundled
    assert not [f for f in os.listdir(os.path.join(out, "bundled")) if f.endswith(".tmp")]


def test_a_folder_that_is_not_dnd_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"DND folder '.*nowhere': expected info.mat and images_srgb/"):
        dnd_submission(_cfg(), str(tmp_path / "nowhere"), str(tmp_path / "out"), verbose=False)
