"""Evaluation engine end to end on tiny data: every protocol, tables, files, real photos, steps."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from engine.evaluate import evaluate
from models import build_model, register_model
from utils.config import ConfigError, from_dict
from utils.io import save_image

from tests.test_engine_train import TINY_NRLGDN, make_tiny_data


class ShapeSpy(torch.nn.Module):
    """Identity restorer that remembers the input sizes it saw (to check padding)."""
    input_keys = ("y", "k")
    seen = []

    def forward(self, y, k):
        ShapeSpy.seen.append(tuple(y.shape[-2:]))
        return y


register_model("test_shape_spy", ShapeSpy)


def _png(path):
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def _config(folder, img_dir, kernel_path, **test):
    base = {"root_path": os.path.dirname(img_dir), "test_data": os.path.basename(img_dir),
            "kernel_path": kernel_path, "result_save_file": os.path.join(folder, "results"), "run_name": "tiny",
            "save_figures": False}
    base.update(test)
    return from_dict({"model": {"model_select": "wiener", "options": {}},
                      "train_options": {"disable_cuda": True}, "test_dataset": base})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("eval"))
    img_dir, kernel_path = make_tiny_data(folder, n_images=2, size=40)
    return folder, img_dir, kernel_path


@pytest.fixture(scope="module")
def all_protocols(data):
    folder, img_dir, kernel_path = data
    cfg = _config(folder, img_dir, kernel_path, is_test_gauss=True, test_noise_level=[2.55, 7.65],
                  is_test_nonuniform=True, sigma_map_type=["peaks", "gauss", "gauss-mix"],
                  is_test_poisson_gaussian=True, is_test_impulse=True, test_noise_intensity=0.1,
                  compare_models=["eq22_init"])
    cfg["test_dataset"]["test_noise_level"] = [2.55, 7.65]
    return cfg, evaluate(cfg, verbose=False)


PROTOCOLS = ["uniform_2.55", "uniform_7.65", "sigma_map_peaks_5-25", "sigma_map_gauss_5-25",
             "sigma_map_gauss_mix_5-25", "poisson_gaussian_peak128_2.55", "poisson_gaussian_peak128_7.65",
             "impulse_0.1"]


def test_every_protocol_runs_and_is_tabulated(all_protocols):
    cfg, result = all_protocols
    assert list(result.summary) == PROTOCOLS
    # 2 images × 2 kernels × (degraded + wiener + eq22_init) per protocol
    assert len(result.records) == len(PROTOCOLS) * 2 * 2 * 3
    for protocol, table in result.summary.items():
        assert list(table) == ["degraded", "wiener", "eq22_init"]
        for model, kernels in table.items():
            rows = [r for r in result.records if r["protocol"] == protocol and r["model"] == model]
            per_kernel = {k: np.mean([r["psnr"] for r in rows if r["kernel"] == k]) for k in ("0", "1")}
            assert kernels["0"]["psnr"] == pytest.approx(per_kernel["0"])
            assert kernels["all"]["psnr"] == pytest.approx(np.mean(list(per_kernel.values())))
    files = result.files
    summary_md = open(files["markdown"]).read()
    assert all(f"## {p}" in summary_md for p in PROTOCOLS)
    rows = list(csv.DictReader(open(files["per_image_csv"])))
    assert len(rows) == len(result.records)
    saved = json.load(open(files["json"]))
    assert saved["summary"]["uniform_2.55"]["wiener"]["all"]["psnr"] == pytest.approx(
        result.summary["uniform_2.55"]["wiener"]["all"]["psnr"])


def test_saved_images_reproduce_the_table(all_protocols, data):
    """PSNR recomputed with scikit-image from the written PNGs and the ground-truth files."""
    cfg, result = all_protocols
    _, img_dir, _ = data
    gt = _png(os.path.join(img_dir, "img1.png"))
    restored = _png(os.path.join(result.run_dir, "uniform_7.65", "kernel1", "img1_wiener.png"))
    table = next(r["psnr"] for r in result.records if r["protocol"] == "uniform_7.65" and r["model"] == "wiener"
                 and r["kernel"] == "1" and r["image"] == "img1")
    assert peak_signal_noise_ratio(gt, restored, data_range=1.0) == pytest.approx(table, abs=0.05)


def _residual(result, protocol, img_dir, kernel_path, image="img0", kernel=0):
    """Degraded PNG minus the circular blur of the ground truth (scipy.ndimage.convolve, mode='wrap')."""
    gt = _png(os.path.join(img_dir, f"{image}.png"))
    k = np.load(kernel_path)[kernel]
    blurred = np.stack([ndimage.convolve(gt[..., c], k, mode="wrap") for c in range(3)], axis=-1)
    degraded = _png(os.path.join(result.run_dir, protocol, f"kernel{kernel}", f"{image}_degraded.png"))
    return degraded - blurred, blurred


def test_degradations_follow_the_protocol_parameters(all_protocols, data):
    _, img_dir, kernel_path = data
    _, result = all_protocols
    std = lambda p: _residual(result, p, img_dir, kernel_path)[0].std() * 255
    assert std("uniform_2.55") == pytest.approx(2.55, rel=0.15)
    assert std("uniform_7.65") == pytest.approx(7.65, rel=0.1)
    for protocol in ("sigma_map_peaks_5-25", "sigma_map_gauss_5-25", "sigma_map_gauss_mix_5-25"):
        assert 5 < std(protocol) < 25
    residual, blurred = _residual(result, "poisson_gaussian_peak128_2.55", img_dir, kernel_path)
    expected = np.sqrt(np.mean(blurred) / 128 + (2.55 / 255) ** 2) * 255
    assert residual.std() * 255 == pytest.approx(expected, rel=0.15)
    residual, _ = _residual(result, "impulse_0.1", img_dir, kernel_path)
    hit = (np.abs(residual) > 0.5 / 255).any(axis=-1).mean()   # pixels replaced by a random value
    assert 0.05 < hit < 0.12


def test_luma_metrics_and_border_crop(data):
    folder, img_dir, kernel_path = data
    cfg = _config(folder, img_dir, kernel_path, is_gray_scale=True, border=3, kernel_indices=[1],
                  run_name="luma")
    result = evaluate(cfg, verbose=False)
    gt = _png(os.path.join(img_dir, "img0.png"))
    restored = _png(os.path.join(result.run_dir, "uniform_2.55", "kernel1", "img0_wiener.png"))
    luma = lambda a: (a @ np.array([0.299, 0.587, 0.114]))[3:-3, 3:-3]
    table = next(r["psnr"] for r in result.records if r["model"] == "wiener" and r["image"] == "img0")
    assert peak_signal_noise_ratio(luma(gt), luma(restored), data_range=1.0) == pytest.approx(table, abs=0.05)
    assert {r["kernel"] for r in result.records} == {"1"}


def test_real_photos_are_padded_restored_and_cropped(data):
    folder, img_dir, _ = data
    photos, kernels = os.path.join(folder, "photos"), os.path.join(folder, "photo_kernels")
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(36, 44), (40, 40)]):
        save_image(os.path.join(photos, f"p{i}.png"), torch.from_numpy(rng.random((3, h, w))).float())
        k = np.zeros((7, 7)) if i == 0 else np.zeros((9, 5))
        k[k.shape[0] // 2, :] = 1.0
        save_image(os.path.join(kernels, f"p{i}.png"), torch.from_numpy(k / k.max())[None].float())
    cfg = _config(folder, photos, kernels, is_test_real=True, is_test_gauss=False, save_figures=True,
                  run_name="real")
    cfg["model"]["model_select"] = "test_shape_spy"
    cfg["test_dataset"]["compare_models"] = ["wiener"]
    ShapeSpy.seen.clear()
    result = evaluate(cfg, verbose=False)
    assert result.records == []                      # no ground truth, no metrics
    # 2·floor(ks/2) on every side: 7×7 -> 6, 9×5 -> 8
    assert ShapeSpy.seen == [(36 + 12, 44 + 12), (40 + 16, 40 + 16)]
    for i in range(2):
        out = _png(os.path.join(result.run_dir, "real", "kernel_real", f"p{i}_test_shape_spy.png"))
        assert np.array_equal(out, _png(os.path.join(photos, f"p{i}.png")))   # identity, cropped back
        assert os.path.isfile(os.path.join(result.run_dir, "real", "figures", f"p{i}_kernel_real.png"))
        assert _png(os.path.join(result.run_dir, "real", "kernel_real", f"p{i}_wiener.png")).shape == out.shape


def test_trained_model_and_baselines_in_one_table_with_steps_and_figures(data):
    folder, img_dir, kernel_path = data
    torch.manual_seed(0)
    model = build_model("NRL_GDN", **TINY_NRLGDN)
    ckpt = os.path.join(folder, "tiny_nrlgdn.pth")
    torch.save({"model": model.state_dict(), "model_select": "NRL_GDN", "model_options": TINY_NRLGDN}, ckpt)
    cfg = _config(folder, img_dir, kernel_path, record_steps=True, save_figures=True, kernel_indices=[0],
                  max_images=1, run_name="steps",
                  compare_models=["eq22_init", {"model_select": "wiener", "options": {"balance": 0.1},
                                                "label": "wiener_0.1"}])
    cfg["model"].update(model_select="NRL_GDN", pretrained=ckpt, options={})   # options read from the file
    result = evaluate(cfg, verbose=False)
    assert list(result.summary["uniform_2.55"]) == ["degraded", "tiny_nrlgdn", "eq22_init", "wiener_0.1"]
    curve = result.step_curves["uniform_2.55"]["tiny_nrlgdn"]
    assert len(curve) == TINY_NRLGDN["num_steps"]
    final = result.summary["uniform_2.55"]["tiny_nrlgdn"]["all"]["psnr"]
    assert curve[-1] == pytest.approx(final, abs=1e-6)            # last step is the output
    folder_out = os.path.join(result.run_dir, "uniform_2.55")
    assert os.path.isfile(os.path.join(folder_out, "psnr_per_step.png"))
    assert os.path.isfile(os.path.join(folder_out, "figures", "img0_kernel0.png"))


def test_missing_checkpoint_is_one_line_with_a_hint(data):
    folder, img_dir, kernel_path = data
    cfg = _config(folder, img_dir, kernel_path)
    cfg["model"].update(model_select="NRL_GDN", pretrained=os.path.join(folder, "absent.pth"), options={})
    with pytest.raises(ConfigError) as info:
        evaluate(cfg, verbose=False)
    message = str(info.value)
    absent = os.path.join(folder, "absent.pth")
    assert message == (f"model.pretrained: checkpoint not found: '{absent}'; NRL_GDN's published weights are the file "
                       "NRL_GDN.pth of the kongsjsj/NRL-GDN project (the Google Drive link in its README): save it as "
                       f"{absent} (or set model.pretrained to your copy)")
    cfg["model"].update(model_select="DRUNet")                    # no published weights: train or use baselines
    with pytest.raises(ConfigError) as info:
        evaluate(cfg, verbose=False)
    message = str(info.value)
    assert message.startswith(f"model.pretrained: checkpoint not found: '{absent}'; train one with ")
    assert "test_dataset.baselines_only=true" in message and "\n" not in message


def test_bad_kernel_index_and_folder_are_config_errors(data):
    folder, img_dir, kernel_path = data
    with pytest.raises(ConfigError, match=r"test_dataset.kernel_indices: \[5\] out of range for 2 kernels"):
        evaluate(_config(folder, img_dir, kernel_path, kernel_indices=[5]), verbose=False)
    with pytest.raises(ConfigError, match="test_dataset.test_data: image folder not found"):
        evaluate(_config(folder, img_dir + "_nope", kernel_path), verbose=False)


def test_a_second_evaluation_moves_the_first_aside(data):
    folder, img_dir, kernel_path = data
    out = os.path.join(folder, "again")
    first = evaluate(_config(out, img_dir, kernel_path, max_images=1), verbose=False)
    second = evaluate(_config(out, img_dir, kernel_path, max_images=1), verbose=False)
    assert second.run_dir == first.run_dir
    archived = [d for d in os.listdir(os.path.join(out, "results")) if d.startswith("tiny_archived_")]
    assert len(archived) == 1
    kept = os.path.join(out, "results", archived[0])
    assert json.load(open(os.path.join(kept, "config.json")))["test_dataset"]["max_images"] == 1
    assert os.path.isfile(os.path.join(kept, "summary.md")) and os.path.isfile(os.path.join(second.run_dir, "summary.md"))
    mine = os.path.join(out, "results", "mine")
    os.makedirs(mine)
    open(os.path.join(mine, "notes.txt"), "w").write("not results")
    with pytest.raises(ConfigError, match="test_dataset.run_name: .*mine' exists and was not written by a run"):
        evaluate(_config(out, img_dir, kernel_path, run_name="mine"), verbose=False)


def test_result_names_stay_inside_the_results_folder(data):
    folder, img_dir, kernel_path = data
    out = os.path.join(folder, "dots")
    result = evaluate(_config(out, img_dir, kernel_path, run_name="..", max_images=1), verbose=False)
    assert os.path.dirname(result.run_dir) == os.path.join(out, "results")
    assert os.path.isfile(os.path.join(result.run_dir, "summary.md"))
