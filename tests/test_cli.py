"""deblurring.py: exit status 2 and one line for bad configs; train/evaluate chosen by is_train."""
import json
import os
import subprocess
import sys

import pytest
import torch

import deblurring
from tests.test_engine_train import make_tiny_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "deblurring.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_unknown_key_exits_2_with_one_line_and_no_traceback():
    proc = _run("--set", "train_options.epoch=3")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: unknown key 'train_options.epoch' in --set "
                                   "(did you mean 'train_options.epochs'?)")
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args, expected", [
    (["--train_config", "configs/nope.json"], "error: train config file not found: configs/nope.json"),
    (["--set", "model.pretrained=/no/such/weights.pth"], "error: model.pretrained: checkpoint not found: "
                                                          "'/no/such/weights.pth'"),
    (["--set", "test_dataset.kernel_path=/no/kernels.mat"], "error: test_dataset.kernel_path: kernel file "
                                                             "not found: '/no/kernels.mat'"),
    (["--set", "train_dataset.is_train=true", "--set", "train_dataset.root_path=/no/images"],
     "error: train_dataset.root_path: image folder not found: '/no/images'"),
    (["--set", "optimizer.lr=fast"], "error: optimizer.lr in --set: expected a number, got \"fast\""),
])
def test_config_errors_in_process(capsys, args, expected):
    assert deblurring.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected)
    assert "\n" not in err


def test_evaluate_then_train_through_the_cli(tmp_path, capsys):
    img_dir, kernel_path = make_tiny_data(str(tmp_path), n_images=2, size=32)
    test_config = tmp_path / "test.json"
    test_config.write_text(json.dumps({"test_dataset": {
        "root_path": str(tmp_path), "test_data": "images", "kernel_path": kernel_path, "is_test_gauss": True,
        "is_test_nonuniform": False, "compare_models": ["eq22_init"], "save_figures": False,
        "result_save_file": str(tmp_path / "results"), "run_name": "cli"}}))
    args = ["--test_config", str(test_config), "--set", "model.model_select=wiener", "--set", "model.options={}"]
    assert deblurring.main(args) == 0
    out = capsys.readouterr().out
    assert "| kernel | degraded | wiener | eq22_init |" in out
    assert os.path.isfile(tmp_path / "results" / "cli" / "summary.md")

    train_args = ["--test_config", str(test_config),
                  "--set", "train_dataset.is_train=true", "--set", f"train_dataset.root_path={img_dir}",
                  "--set", f"train_dataset.kernel_path={kernel_path}", "--set", "train_dataset.patch_size=16",
                  "--set", "train_dataset.degradation={}",   # kernels from kernel_path, not the 25×25 recipe
                  "--set", "train_dataset.batch_size=2", "--set", "train_dataset.num_workers=0",
                  "--set", "model.options={\"r_channels\": [4, 8, 8, 8], \"r_blocks\": 1, \"hd_channels\": 4, \"num_steps\": 1}",
                  "--set", f"model.model_save_file={tmp_path / 'weights'}",
                  "--set", "train_options.epochs=1", "--set", "train_options.epoch_val=0",
                  "--set", f"train_options.checkpoint_dir={tmp_path / 'ckpt'}", "--set", "train_options.run_name=cli",
                  "--set", "train_options.tensorboard=false"]
    assert deblurring.main(train_args) == 0
    assert os.path.isfile(tmp_path / "ckpt" / "cli" / "last.pth")
    assert os.path.isfile(tmp_path / "weights" / "cli.pth")


def test_a_corrupt_training_image_read_by_a_worker_is_one_line(tmp_path, capsys):
    img_dir, kernel_path = make_tiny_data(str(tmp_path), n_images=2, size=32)
    with open(os.path.join(img_dir, "img0.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not an image")
    args = ["--set", "train_dataset.is_train=true", "--set", f"train_dataset.root_path={img_dir}",
            "--set", f"train_dataset.kernel_path={kernel_path}", "--set", "train_dataset.patch_size=16",
            "--set", "train_dataset.degradation={}", "--set", "train_dataset.batch_size=2",
            "--set", "train_dataset.num_workers=1", "--set", "train_options.epoch_val=0",
            "--set", "model.options={\"r_channels\": [4, 8, 8, 8], \"r_blocks\": 1, \"hd_channels\": 4, \"num_steps\": 1}",
            "--set", f"model.model_save_file={tmp_path / 'weights'}", "--set", "train_options.tensorboard=false",
            "--set", f"train_options.checkpoint_dir={tmp_path / 'ckpt'}", "--set", "train_options.run_name=bad"]
    assert deblurring.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]     # the lines before it are the progress bar
    assert last.startswith("error: ") and "img0.png" in last and "worker" not in last, last
