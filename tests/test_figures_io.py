"""utils.io (atomic writes, PNG saving, grids) and utils.figures (figures are valid PNGs of the right shape)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from utils.figures import plot_psnr_per_step, side_by_side
from utils.io import (atomic_save, atomic_write_bytes, atomic_write_json, atomic_write_text, make_grid,
                      save_image)


class PicklingBomb:
    """An object whose pickling raises, as a checkpoint write that fails."""

    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def test_atomic_save_round_trip_and_failure_keeps_old_file(tmp_path):
    path = tmp_path / "ckpt" / "last.pth"                      # parent folder is created
    atomic_save({"step": 1, "w": torch.arange(4.0)}, path)
    old = path.read_bytes()
    assert torch.load(path)["step"] == 1
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"step": 2, "w": torch.zeros(100_000), "bad": PicklingBomb()}, path)
    assert path.read_bytes() == old                             # old checkpoint intact
    assert os.listdir(path.parent) == ["last.pth"]              # no temp file left behind
    atomic_save({"step": 3}, path)
    assert torch.load(path)["step"] == 3 and os.listdir(path.parent) == ["last.pth"]


def test_write_dying_after_partial_bytes_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"step": 1}, path)
    old = path.read_bytes()

    def half_then_crash(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["last.pth"]


def test_atomic_text_json_bytes(tmp_path):
    atomic_write_text(tmp_path / "log.txt", "épreuve\n")
    assert (tmp_path / "log.txt").read_text(encoding="utf-8") == "épreuve\n"
    atomic_write_json(tmp_path / "r.json", {"psnr": 28.5, "names": ["a", "b"]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"psnr": 28.5, "names": ["a", "b"]}
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "r.json", {"psnr": object()})
    assert json.loads((tmp_path / "r.json").read_text())["psnr"] == 28.5
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="expected bytes"):
        atomic_write_bytes(tmp_path / "b.bin", "text")
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "log.txt", "r.json"]


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_save_image_colour_and_gray_are_clamped_and_rounded(tmp_path):
    img = torch.tensor(np.random.default_rng(0).random((3, 5, 7)) * 1.4 - 0.2)      # some values out of [0, 1]
    save_image(tmp_path / "c.png", img)
    back = np.asarray(Image.open(tmp_path / "c.png"))
    assert back.shape == (5, 7, 3) and back.dtype == np.uint8
    expected = np.round(np.clip(img.numpy(), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(back, expected)
    save_image(tmp_path / "g.png", img[:1][None])                                    # 1×1×H×W
    gray = Image.open(tmp_path / "g.png")
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), expected[..., 0])
    with pytest.raises(ValueError, match="C in \\(1, 3\\)"):
        save_image(tmp_path / "bad.png", torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="suffix"):
        save_image(tmp_path / "bad.xyz", img)


def test_make_grid_geometry():
    imgs = torch.stack([torch.full((3, 2, 3), float(i + 1)) for i in range(5)])
    grid = make_grid(imgs, nrow=3, padding=1, pad_value=-1.0)
    assert grid.shape == (3, 2 * (2 + 1) + 1, 3 * (3 + 1) + 1)
    assert torch.all(grid[:, 1:3, 1:4] == 1) and torch.all(grid[:, 1:3, 5:8] == 2)
    assert torch.all(grid[:, 4:6, 5:8] == 5)                    # fifth image: row 1, column 1
    assert torch.all(grid[:, 4:6, 9:12] == -1)                  # empty sixth cell is padding
    assert torch.all(grid[:, 0] == -1) and torch.all(grid[:, :, 4] == -1)
    mixed = make_grid([torch.zeros(1, 4, 4), torch.ones(3, 4, 4)], nrow=2, padding=0)
    assert mixed.shape == (3, 4, 8) and torch.all(mixed[:, :, 4:] == 1)
    with pytest.raises(ValueError, match="differ in size"):
        make_grid([torch.zeros(3, 4, 4), torch.zeros(3, 4, 5)])


def _png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size, np.asarray(im.convert("RGB")).astype(int)


def test_side_by_side_figures(tmp_path):
    rng = np.random.default_rng(0)
    gt = torch.tensor(rng.random((3, 32, 32)), dtype=torch.float32)
    y = (gt + 0.2 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    k = torch.zeros(1, 1, 9, 9)
    k[..., 4, 1:8] = 1 / 7
    sigma = torch.linspace(0, 25 / 255, 32).repeat(32, 1)[None]

    full = side_by_side(tmp_path / "full.png", y, (gt + y) / 2, gt, kernel=k, sigma_map=sigma, title="img 1")
    plain = side_by_side(tmp_path / "plain.png", y, (gt + y) / 2, gt)
    real = side_by_side(tmp_path / "real.png", y[:1], y[:1], None, kernel=k[0, 0])  # gray photo, no ground truth
    (f_fmt, f_size, f_px), (_, p_size, p_px), (_, r_size, _) = _png(full), _png(plain), _png(real)
    assert f_fmt == "PNG"
    assert f_size[0] > f_size[1] and 700 <= f_size[0] <= 1000        # three ~300 px panels at 100 dpi
    assert r_size[0] < f_size[0] and 500 <= r_size[0] <= 700         # two panels without ground truth
    assert p_size[0] == f_size[0]
    w, h = p_size
    corner = (slice(int(0.15 * h), int(0.3 * h)), slice(0, int(0.12 * w)))
    assert np.abs(f_px[corner] - p_px[corner]).mean() > 5           # the kernel inset is drawn there
    assert sorted(os.listdir(tmp_path)) == ["full.png", "plain.png", "real.png"]


def test_plot_psnr_per_step(tmp_path):
    path = plot_psnr_per_step(tmp_path / "steps.png", {"uniform": [20, 24, 26.5, 26.4], "peaks": [19, 23, 25, 25.6]})
    fmt, (w, h), _ = _png(path)
    assert fmt == "PNG" and 400 <= w <= 600 and w > h
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_psnr_per_step(tmp_path / "x.png", {})
    with pytest.raises(ValueError, match="'peaks' is empty"):
        plot_psnr_per_step(tmp_path / "x.png", {"peaks": []})


def test_training_curves_keep_the_last_value_of_a_resumed_step(tmp_path):
    from utils.figures import plot_training_curves

    history = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}, {"step": 2, "psnr_val": 20.0},
               {"step": 2, "loss": 0.3}, {"step": 3, "loss": 0.2, "psnr_val": 21.5}, {"note": "no step"}]
    path, series = plot_training_curves(tmp_path / "curves.png", history, "run")
    assert series == {"loss": {1: 0.5, 2: 0.3, 3: 0.2}, "psnr_val": {2: 20.0, 3: 21.5}}
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no 'loss' or 'psnr_val' records"):
        plot_training_curves(tmp_path / "empty.png", [{"step": 1, "lr": 0.1}])
