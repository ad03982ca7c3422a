"""Real-noise training and testing: paired noisy/gt folders, MixUp, ×8 self-ensemble."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from data.mixup import mixup_batch
from data.paired import PairedTrainDataset, find_pairs, paired_items
from engine.ensemble import self_ensemble
from engine.evaluate import evaluate
from engine.train import train
from models import build_model
from utils.config import ConfigError, load_config
from utils.operators import conv_circular

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def make_pairs(folder, n=3, size=(40, 48), sigmas=(5, 15, 30), clean_dir="gt"):
    rng = np.random.default_rng(7)
    os.makedirs(os.path.join(folder, "noisy"), exist_ok=True)
    os.makedirs(os.path.join(folder, clean_dir), exist_ok=True)
    pairs = []
    for i in range(n):
        clean = rng.integers(40, 215, size=(*size, 3)).astype(np.uint8)
        noisy = np.clip(clean + rng.normal(0, sigmas[i % len(sigmas)], clean.shape), 0, 255).round().astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(folder, "noisy", f"im{i}.png"))
        Image.fromarray(clean).save(os.path.join(folder, clean_dir, f"im{i}.png"))
        pairs.append((noisy, clean))
    return pairs


def test_pairs_are_matched_by_name_and_gaps_are_named(tmp_path):
    make_pairs(tmp_path, n=2, clean_dir="clean")
    assert [(n.name, c.parent.name) for n, c in find_pairs(tmp_path)] == [("im0.png", "clean"), ("im1.png", "clean")]
    os.remove(tmp_path / "clean" / "im1.png")
    with pytest.raises(FileNotFoundError, match=r"1 noisy image\(s\) have no ground truth .* e.g. 'im1.png'"):
        find_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"expected sub-folders 'noisy/' and 'gt/'"):
        find_pairs(tmp_path / "clean")


def test_paired_crops_share_position_and_flip(tmp_path):
    make_pairs(tmp_path, n=2)
    pairs = find_pairs(tmp_path)
    # replace the noisy image by clean + a ramp: any misaligned crop or flip breaks y − x == ramp
    clean = np.asarray(Image.open(pairs[0][1])).astype(np.int64)
    ramp = (np.arange(clean.shape[1]) % 7)[None, :, None]
    Image.fromarray((clean + ramp).astype(np.uint8)).save(pairs[0][0])
    ds = PairedTrainDataset(pairs[:1], patch_size=16, seed=3, length=16)
    seen = set()
    for i in range(16):
        item = ds[i]
        diff = np.round((item["y"] - item["x"]).numpy() * 255).astype(np.int64)
        assert item["y"].shape == (3, 16, 16) and item["k"].shape == (1, 1, 1)
        vertical = (diff == diff[:, :1, :]).all()       # ramp along columns (transposed modes: along rows)
        horizontal = (diff == diff[:, :, :1]).all()
        assert vertical != horizontal
        seen.add((bool(vertical), tuple(diff[0, 0, :3]), tuple(diff[0, :3, 0])))
        assert torch.equal(ds[i]["y"], item["y"])          # deterministic per (seed, epoch, index)
    assert len(seen) > 4                                   # crops and flips vary
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["y"], PairedTrainDataset(pairs[:1], 16, seed=3, length=16)[0]["y"])


def test_mixup_blends_pairs_and_their_noise_std():
    rng = np.random.default_rng(0)
    n, size = 6, 96
    x = torch.rand(n, 3, size, size, dtype=torch.float64)
    sigma = torch.tensor([0.02, 0.05, 0.1, 0.15, 0.2, 0.3], dtype=torch.float64).view(n, 1, 1, 1)
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigma
    batch = {"x": x, "y": x + noise, "sigma": sigma.expand(n, 1, size, size), "k": torch.ones(n, 1, 1, 1)}
    out = mixup_batch(batch, np.random.default_rng(5))
    check = np.random.default_rng(5)
    perm, lam = check.permutation(n), check.beta(0.6, 0.6, size=n)
    for i in range(n):
        assert torch.allclose(out["x"][i], lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])
        mixed_noise = out["y"][i] - out["x"][i]
        # the empirical std of the blended noise matches the mixed σ-map
        assert float(mixed_noise.std()) == pytest.approx(float(out["sigma"][i].mean()), rel=0.03)
    assert torch.equal(out["k"], batch["k"])
    with pytest.raises(ValueError, match=r"needs a blur-free \(denoising\) batch; this batch has \(5, 5\) kernels"):
        mixup_batch(dict(batch, k=torch.ones(n, 1, 5, 5)), np.random.default_rng(0))


class AsymmetricFilter(torch.nn.Module):
    """Not flip/rotation equivariant: a fixed asymmetric 3×3 filter per channel."""
    input_keys = ("y",)

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.arange(9.0).view(1, 1, 3, 3).repeat(3, 1, 1, 1) / 36)

    def forward(self, y):
        return {"x": F.conv2d(F.pad(y, [1] * 4, mode="replicate"), self.w, groups=3),
                "sigma_map": y[:, :1] * 0 + y[:, :1, :1, :1], "kinfo": torch.ones(y.shape[0], 3)}


def test_self_ensemble_averages_the_eight_transforms():
    y = torch.rand(1, 3, 10, 14)
    model = AsymmetricFilter()
    out = self_ensemble(model, {"y": y})
    expected = torch.zeros_like(y)
    for flip in (False, True):
        for r in range(4):           # g = rot90^r ∘ (flip): apply, filter, undo
            g = torch.rot90(y.flip(-1) if flip else y, r, dims=(-2, -1))
            back = torch.rot90(model(g)["x"], -r, dims=(-2, -1))
            expected += (back.flip(-1) if flip else back) / 8
    assert torch.allclose(out["x"], expected, atol=1e-6)
    assert not torch.allclose(out["x"], model(y)["x"], atol=1e-3)
    corners = torch.stack([y[0, 0, 0, 0], y[0, 0, 0, -1], y[0, 0, -1, 0], y[0, 0, -1, -1]])
    assert torch.allclose(out["sigma_map"], corners.mean().expand(1, 1, 10, 14))   # each corner twice
    assert torch.equal(out["kinfo"], torch.ones(1, 3))


def test_self_ensemble_leaves_an_equivariant_deconvolution_unchanged():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 24, 30, generator=g)
    k = torch.rand(1, 1, 7, 5, generator=g)
    k /= k.sum()
    y = conv_circular(x, k) + 0.01 * torch.randn(x.shape, generator=g)
    wiener = build_model("wiener")
    plain = wiener(y, k)
    plain = plain["x"] if isinstance(plain, dict) else plain
    assert torch.allclose(self_ensemble(wiener, {"y": y, "k": k})["x"], plain, atol=1e-5)


def _real_config(tmp_path, *extra):
    data = tmp_path / "pairs"
    overrides = [f"train_dataset.root_path={data}", "train_dataset.patch_size=24", "train_dataset.batch_size=2",
                 "train_dataset.num_workers=0", "train_dataset.repeat=2", "val_dataset.paired=true",
                 f"val_dataset.root_path={data}", "val_dataset.noisy_mat=", "val_dataset.clean_mat=",
                 "val_dataset.max_images=1", "val_dataset.patch_size=24",
                 'model.options={"clip_grad_R": 500.0, "clip_grad_S": 100.0, "n_feat": [8, 16], "dep_S": 3, '
                 '"n_resblocks": 1, "snet_width": 8}',
                 "scheduler.warmup_epochs=1", "train_options.epochs=2", "train_options.max_steps_per_epoch=2",
                 "train_options.log_every=1",
                 "train_options.tensorboard=false", "train_options.disable_cuda=true",
                 f"train_options.checkpoint_dir={tmp_path / 'ckpt'}", f"model.model_save_file={tmp_path / 'w'}",
                 "test_dataset.noisy_mat=", "test_dataset.clean_mat=", f"test_dataset.root_path={tmp_path}",
                 "test_dataset.test_data=pairs", f"test_dataset.result_save_file={tmp_path / 'results'}",
                 "test_dataset.save_images=true"]
    return load_config(os.path.join(CONFIGS, "virnet_denoise_real_train.json"),
                       os.path.join(CONFIGS, "virnet_denoise_real_test.json"), overrides + list(extra))


def test_real_noise_config_trains_with_mixup_and_tests_with_self_ensemble(tmp_path):
    pairs = make_pairs(tmp_path / "pairs")
    cfg = _real_config(tmp_path)
    assert cfg["train_dataset"]["mixup"] and cfg["model"]["loss_options"]["prior"] == "residual"
    result = train(cfg)
    assert result.status == "completed" and len(result.history) == 4
    assert all(np.isfinite(h["loss"]) for h in result.history) and os.path.isfile(result.best_checkpoint)
    assert os.path.isfile(os.path.join(result.run_dir, "curves.png"))          # drawn at each validation
    cfg["model"]["pretrained"] = result.exported
    evaluated = evaluate(cfg, verbose=False)
    rows = [r for r in evaluated.records if r["model"] == "virnet_denoise_real"]
    assert [r["image"] for r in rows] == ["im0", "im1", "im2"]
    for (noisy, clean), row in zip(pairs, rows):
        restored = np.asarray(Image.open(os.path.join(evaluated.run_dir, "real_noise", "kernel0",
                                                      f"{row['image']}_virnet_denoise_real.png")))
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(clean, restored, data_range=255), abs=1e-9)
    degraded = [r for r in evaluated.records if r["model"] == "degraded"]
    assert degraded[2]["psnr"] == pytest.approx(peak_signal_noise_ratio(pairs[2][1], pairs[2][0], data_range=255),
                                                abs=1e-6)
    notes = open(os.path.join(evaluated.run_dir, "summary.md")).read()
    assert "×8 self-ensemble" in notes


@pytest.mark.parametrize("extra, message", [
    (["train_dataset.task=deblur"], r"train_dataset.paired: needs task 'denoise' \(no blur\), the task is 'deblur'"),
    (["train_dataset.paired=false", "train_dataset.task=deblur"], r"train_dataset.mixup: needs task 'denoise'"),
    (["train_dataset.root_path=nowhere"], r"train_dataset.root_path: paired data in 'nowhere': expected sub-folders"),
])
def test_real_noise_training_errors_are_one_line(tmp_path, extra, message):
    make_pairs(tmp_path / "pairs", n=1)
    with pytest.raises(ConfigError, match=message):
        train(_real_config(tmp_path, *extra))


def test_paired_items_crop_and_name(tmp_path):
    make_pairs(tmp_path, n=2, size=(20, 30))
    items = paired_items(tmp_path, max_images=1, patch_size=12)
    assert len(items) == 1 and items[0]["name"] == "im0" and items[0]["y"].shape == (3, 12, 12)
    assert sorted(items[0]) == ["image_index", "k", "name", "x", "y"]


def test_validation_reads_mat_blocks_and_names_the_val_keys(tmp_path):
    import scipy.io
    from engine.datasets import build_val_set

    clean = np.random.default_rng(1).integers(0, 255, size=(2, 2, 8, 8, 3), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "n.mat", {"ValidationNoisyBlocksSrgb": clean[::-1].copy()})
    scipy.io.savemat(tmp_path / "c.mat", {"ValidationGtBlocksSrgb": clean})
    cfg = _real_config(tmp_path, f"val_dataset.noisy_mat={tmp_path / 'n.mat'}", "val_dataset.paired=false",
                       f"val_dataset.clean_mat={tmp_path / 'c.mat'}", "val_dataset.max_images=3")
    items = build_val_set(cfg)
    assert len(items) == 3 and torch.equal(items[2]["x"], torch.from_numpy(clean[1, 0]).permute(2, 0, 1) / 255.0)
    cfg["val_dataset"]["clean_mat"] = str(tmp_path / "gone.mat")
    with pytest.raises(ConfigError, match=r"val_dataset.clean_mat: .mat file of blocks not found: '.*gone.mat'"):
        build_val_set(cfg)
