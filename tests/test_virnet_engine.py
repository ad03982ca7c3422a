"""VIRNet on the engine: the shipped tiny configs train and evaluate end to end (denoise and sisr),
σ-maps are written, SR batches carry scale/kinfo, SIDD-style .mat blocks, task errors."""
import os

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from engine.datasets import build_train_loader
from engine.evaluate import evaluate
from engine.protocols import build_protocols
from engine.train import train
from models import build_model, load_pretrained, register_model
from utils.config import ConfigError, from_dict, load_config

from tests.test_engine_train import make_tiny_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


class NoisyIdentity(torch.nn.Module):
    """Parameter-free blind 'denoiser': returns its input and a constant σ-map of 10/255."""
    input_keys = ("y",)

    def forward(self, y):
        return {"x": y, "sigma_map": torch.full_like(y[:, :1], 10 / 255)}


register_model("test_noisy_identity", NoisyIdentity)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    torch.set_num_threads(1)
    folder = str(tmp_path_factory.mktemp("virnet_engine"))
    img_dir, _ = make_tiny_data(folder, n_images=2, size=40)
    return folder, img_dir


def _config(folder, img_dir, task, *extra):
    overrides = [f"train_dataset.root_path={img_dir}", f"val_dataset.root_path={img_dir}",
                 f"train_options.checkpoint_dir={os.path.join(folder, 'ckpt')}",
                 f"model.model_save_file={os.path.join(folder, 'weights')}", "train_options.disable_cuda=true",
                 f"test_dataset.root_path={os.path.dirname(img_dir)}",
                 f"test_dataset.test_data={os.path.basename(img_dir)}", "test_dataset.max_images=1",
                 f"test_dataset.result_save_file={os.path.join(folder, 'results')}"]
    return load_config(os.path.join(CONFIGS, f"virnet_{task}_tiny.json"),
                       os.path.join(CONFIGS, f"virnet_{task}_test.json"), overrides + list(extra))


def _png(path):
    return np.asarray(Image.open(path))


def _trained(cfg):
    result = train(cfg)
    assert result.status == "completed"
    assert len(result.history) == 4 and all(np.isfinite(h["loss"]) for h in result.history)  # 2 epochs × 2 steps
    assert os.path.isfile(result.best_checkpoint)                                          # validation ran
    cfg["model"]["pretrained"] = result.exported
    return result


def test_denoise_tiny_trains_and_evaluates_with_the_estimated_sigma_map(tiny_data):
    folder, img_dir = tiny_data
    cfg = _config(folder, img_dir, "denoise", "test_dataset.test_noise_level=[25]",
                  'test_dataset.sigma_map_type=["peaks"]')
    run = _trained(cfg)
    result = evaluate(cfg, verbose=False)
    assert list(result.summary) == ["uniform_25", "sigma_map_peaks_10-75"]
    model = build_model("VIRNet_denoise_syn", **cfg["model"]["options"])
    load_pretrained(model, run.exported)
    model.eval()
    for protocol in build_protocols(cfg):
        item = next(protocol.items())
        assert item["k"].numel() == 1                         # denoising: no blur
        assert item["y"].min() < 0 or item["y"].max() > 1       # published: noisy inputs are not clipped
        kdir = os.path.join(result.run_dir, protocol.name, "kernel0")
        with torch.no_grad():
            out = model(item["y"][None])
        expected = np.round(out["sigma_map"][0, 0].clamp(0, 1).double().numpy() * 255)
        assert np.array_equal(_png(os.path.join(kdir, "img0_virnet_denoise_tiny_sigma.png")), expected)
        restored = _png(os.path.join(kdir, "img0_virnet_denoise_tiny.png"))
        gt = _png(os.path.join(img_dir, "img0.png"))
        record = [r for r in result.records if r["protocol"] == protocol.name and r["model"] == "virnet_denoise_tiny"]
        assert record[0]["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, restored, data_range=255), abs=1e-9)
        assert os.path.isfile(os.path.join(result.run_dir, protocol.name, "figures", "img0_kernel0.png"))
    clipped = build_protocols(_config(folder, img_dir, "denoise", "test_dataset.clip_noisy=true"))[0]
    y = next(clipped.items())["y"]
    assert 0 <= y.min() and y.max() <= 1


def test_sisr_batches_carry_scale_and_the_generators_kinfo(tiny_data):
    folder, img_dir = tiny_data
    cfg = _config(folder, img_dir, "sisr")
    loader, _, _ = build_train_loader(cfg, 2, 0, 1, scale=2)
    batch = next(iter(loader))
    assert batch["scale"] == 2
    assert batch["x"].shape == (2, 3, 32, 32) and batch["y"].shape == (2, 3, 16, 16)
    assert 0 <= batch["y"].min() and batch["y"].max() <= 1                      # SR inputs are clipped
    assert batch["kinfo"].shape == (2, 3)
    for k, (v1, v2, rho) in zip(batch["k"][:, 0].double().numpy(), batch["kinfo"].double().numpy()):
        cov = np.array([[v1, rho * np.sqrt(v1 * v2)], [rho * np.sqrt(v1 * v2), v2]])
        cols, rows = np.meshgrid(np.arange(21) - 10.0, np.arange(21) - 10.0)
        d = np.stack([cols, rows], -1)                       # first coordinate along the columns (x)
        g = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d))
        np.testing.assert_allclose(k, g / g.sum(), atol=1e-6)
    with pytest.raises(ConfigError, match=r"train_dataset.degradation.scale: 2, but the model upsamples by 3"):
        build_train_loader(cfg, 2, 0, 1, scale=3)


def test_sisr_tiny_trains_and_evaluates_on_y_with_the_published_border(tiny_data):
    folder, img_dir = tiny_data
    cfg = _config(folder, img_dir, "sisr", "test_dataset.test_noise_level=[2.55]",
                  "test_dataset.kernel_indices=[0, 4]", "test_dataset.save_figures=false")
    _trained(cfg)
    result = evaluate(cfg, verbose=False)
    table = result.summary["x2_uniform_2.55"]
    assert list(table) == ["bicubic", "virnet_sisr_tiny"] and list(table["bicubic"]) == ["0", "4", "all"]
    gt = _png(os.path.join(img_dir, "img0.png"))

    def y_channel(u8):   # MATLAB rgb2ycbcr on uint8, rounded; border = scale² = 4
        return np.round(16 + u8.astype(float) @ np.array([65.481, 128.553, 24.966]) / 255)[4:-4, 4:-4]

    for kernel in ("0", "4"):
        kdir = os.path.join(result.run_dir, "x2_uniform_2.55", f"kernel{kernel}")
        sr = _png(os.path.join(kdir, "img0_virnet_sisr_tiny.png"))
        assert sr.shape == gt.shape and _png(os.path.join(kdir, "img0_degraded.png")).shape == (20, 20, 3)
        record = [r for r in result.records if r["kernel"] == kernel and r["model"] == "virnet_sisr_tiny"][0]
        expected = peak_signal_noise_ratio(y_channel(gt), y_channel(sr), data_range=255)
        assert record["psnr"] == pytest.approx(expected, abs=1e-9)
        sigma = _png(os.path.join(kdir, "img0_virnet_sisr_tiny_sigma.png"))
        assert sigma.shape == (20, 20) and len(np.unique(sigma)) == 1       # one σ per LR image
    with pytest.raises(ConfigError, match=r"test_dataset.scale: scale 3, but model VIRNet_sisr upsamples by 2"):
        evaluate(_config(folder, img_dir, "sisr", "test_dataset.scale=3",
                         f"model.pretrained={cfg['model']['pretrained']}"), verbose=False)


def _blocks(tmp_path, noisy_name="ValidationNoisyBlocksSrgb", clean_name="ValidationGtBlocksSrgb"):
    rng = np.random.default_rng(3)
    clean = rng.integers(30, 220, size=(2, 3, 16, 16, 3), dtype=np.uint8)
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).round().astype(np.uint8)
    scipy.io.savemat(tmp_path / "noisy.mat", {noisy_name: noisy})
    scipy.io.savemat(tmp_path / "clean.mat", {clean_name: clean})
    return noisy, clean


def _real_noise_config(tmp_path, **test):
    base = {"task": "denoise", "is_test_real": True, "noisy_mat": str(tmp_path / "noisy.mat"),
            "clean_mat": str(tmp_path / "clean.mat"), "result_save_file": str(tmp_path / "results"),
            "run_name": "sidd", "save_figures": False, "save_images": False, "save_sigma_map": True,
            "quantize": True}
    base.update(test)
    return from_dict({"model": {"model_select": "test_noisy_identity"}, "train_options": {"disable_cuda": True},
                      "test_dataset": base})


def test_real_noise_mat_blocks_are_scored_block_by_block(tmp_path):
    noisy, clean = _blocks(tmp_path)
    result = evaluate(_real_noise_config(tmp_path, max_images=5), verbose=False)
    rows = [r for r in result.records if r["model"] == "test_noisy_identity"]
    assert [r["image"] for r in rows] == ["img00_block00", "img00_block01", "img00_block02", "img01_block00",
                                          "img01_block01"]
    flat_noisy, flat_clean = noisy.reshape(-1, 16, 16, 3), clean.reshape(-1, 16, 16, 3)
    for i, r in enumerate(rows):
        assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(flat_clean[i], flat_noisy[i], data_range=255),
                                          abs=1e-9)
    assert result.summary["real_noise"]["degraded"]["all"]["psnr"] == pytest.approx(
        np.mean([r["psnr"] for r in rows]), abs=1e-9)
    sigma = _png(os.path.join(result.run_dir, "real_noise", "kernel0", "img01_block01_test_noisy_identity_sigma.png"))
    assert sigma.shape == (16, 16) and (sigma == 10).all()


@pytest.mark.parametrize("change, message", [
    ({"clean_mat": "missing.mat"}, r"test_dataset.clean_mat: .mat file of blocks not found: 'missing.mat'"),
    ({"task": "sisr", "scale": 2}, "test_dataset.is_test_real: there is no real-photo protocol for task 'sisr'"),
])
def test_real_noise_config_errors(tmp_path, change, message):
    _blocks(tmp_path)
    with pytest.raises(ConfigError, match=message):
        evaluate(_real_noise_config(tmp_path, **change), verbose=False)


def test_mat_files_with_ambiguous_or_mismatched_blocks(tmp_path):
    _blocks(tmp_path)
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.zeros((1, 8, 8, 3)), "b": np.zeros((1, 8, 8, 3))})
    with pytest.raises(ConfigError, match=r"test_dataset.noisy_mat: .*two.mat holds variables \['a', 'b'\]"):
        evaluate(_real_noise_config(tmp_path, noisy_mat=str(tmp_path / "two.mat")), verbose=False)
    scipy.io.savemat(tmp_path / "small.mat", {"gt": np.zeros((1, 8, 8, 3), dtype=np.uint8)})
    with pytest.raises(ConfigError, match=r"block arrays differ in shape \(\(2, 3, 16, 16, 3\) vs \(1, 8, 8, 3\)\)"):
        evaluate(_real_noise_config(tmp_path, clean_mat=str(tmp_path / "small.mat")), verbose=False)


@pytest.mark.parametrize("overrides, message", [
    (['train_dataset.degradation={"blur": "circular", "noise": 25}'],
     "train_dataset.degradation.blur: task 'denoise' has no blur; set it to null"),
    (['train_dataset.degradation={"noise": 25, "scale": 2}'],
     "train_dataset.degradation.scale: task 'denoise' keeps the image size"),
    (["train_dataset.task=sisr", 'train_dataset.degradation={"noise": 25, "scale": 1}',
      "model.options.scale=2"], "train_dataset.degradation.scale: task 'sisr' needs an integer scale >= 2, got 1"),
    (["train_dataset.task=sisr", 'train_dataset.degradation={"kernels": {"type": "sr_gaussian", "scale": 3}, '
      '"noise": 25, "scale": 2}'], "train_dataset.degradation.kernels.scale: 3 differs from the degradation scale 2"),
])
def test_task_and_degradation_mismatches_are_one_line(tiny_data, overrides, message):
    folder, img_dir = tiny_data
    cfg = _config(folder, img_dir, "denoise", *overrides)
    with pytest.raises(ConfigError, match=message):
        build_train_loader(cfg, 2, 0, 1, scale=cfg["model"]["options"].get("scale"))


def test_test_task_checks_the_scale():
    with pytest.raises(ConfigError, match="test_dataset.scale: task 'sisr' needs a scale >= 2, got 1"):
        build_protocols(from_dict({"test_dataset": {"task": "sisr"}}))
    with pytest.raises(ConfigError, match="test_dataset.scale: 2 needs task 'sisr' \\(the task is 'denoise'\\)"):
        build_protocols(from_dict({"test_dataset": {"task": "denoise", "scale": 2}}))
