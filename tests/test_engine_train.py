"""Training engine on tiny data: exact resume after SIGINT and after a finished run, checkpoints,
validation/best, weights export, losses."""
import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from engine.checkpoint import read_checkpoint
from engine.train import train
from models.losses import build_loss
from utils.config import ConfigError, from_dict
from utils.io import save_image

TINY_NRLGDN = {"r_channels": [4, 8, 8, 8], "r_blocks": 1, "hd_channels": 4, "num_steps": 2}


def make_tiny_data(folder, n_images=4, size=40, seed=0):
    """Smooth random colour images and a .npy file with two small normalised kernels."""
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(folder, "images")
    for i in range(n_images):
        base = rng.random((3, size // 8, size // 8))
        img = torch.nn.functional.interpolate(torch.from_numpy(base)[None].float(), size=(size, size),
                                              mode="bilinear", align_corners=False)[0]
        save_image(os.path.join(img_dir, f"img{i}.png"), img)
    kernels = np.zeros((2, 5, 5))
    kernels[0, 2, :] = 1.0                                     # horizontal motion
    kernels[1] = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1])    # binomial blur
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    kernel_path = os.path.join(folder, "kernels.npy")
    np.save(kernel_path, kernels)
    return img_dir, kernel_path


def tiny_train_config(folder, img_dir, kernel_path, **train_options):
    options = {"epochs": 3, "seed": 7, "checkpoint_dir": os.path.join(folder, "ckpt"), "run_name": "tiny",
               "log_every": 1, "tensorboard": False, "disable_cuda": True}
    options.update(train_options)
    return from_dict({
        "train_dataset": {"root_path": img_dir, "kernel_path": kernel_path, "patch_size": 24, "batch_size": 2,
                          "num_workers": 0, "is_train": True},
        "val_dataset": {"root_path": img_dir, "kernel_path": kernel_path, "kernel_index": 1, "max_images": 2},
        "model": {"model_select": "NRL_GDN", "options": dict(TINY_NRLGDN),
                  "model_save_file": os.path.join(folder, "weights")},
        "optimizer": {"lr": 1e-3},
        "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5},
        "train_options": options,
    })


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)   # module-scoped: runs before the per-test fixture; same threads as the resumed runs
    folder = str(tmp_path_factory.mktemp("train"))
    img_dir, kernel_path = make_tiny_data(folder)
    reference = train(tiny_train_config(os.path.join(folder, "ref"), img_dir, kernel_path))
    return folder, img_dir, kernel_path, reference


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_uninterrupted_run_trains_validates_and_exports(tiny):
    folder, _, _, ref = tiny
    assert ref.status == "completed"
    assert [h["step"] for h in ref.history] == [1, 2, 3, 4, 5, 6]       # 4 images / batch 2 × 3 epochs
    assert all(np.isfinite(h["loss"]) for h in ref.history)
    state = read_checkpoint(ref.last_checkpoint)
    assert state["epoch"] == 3 and state["step"] == 6 and state["batch_in_epoch"] == 0
    assert state["scheduler"]["last_epoch"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 ** 3)
    assert state["config"]["model"]["options"]["hd_channels"] == 4
    assert os.path.isfile(ref.best_checkpoint)
    history = [json.loads(line) for line in open(os.path.join(ref.run_dir, "history.jsonl"))]
    assert sum("psnr_val" in h for h in history) == 3
    best = max(h["psnr_val"] for h in history if "psnr_val" in h)
    assert read_checkpoint(ref.best_checkpoint)["best_metric"] == pytest.approx(best)
    exported = read_checkpoint(ref.exported)
    assert set(exported["model"]) == set(ref.model.state_dict())
    assert exported["model_options"]["r_channels"] == [4, 8, 8, 8]
    assert os.path.getsize(os.path.join(ref.run_dir, "train_log.txt")) > 0


def test_sigint_saves_and_resume_continues_exactly(tiny):
    folder, img_dir, kernel_path, ref = tiny
    run = os.path.join(folder, "interrupted")

    def interrupt_at_3(step, loss):
        if step == 3:                       # mid-epoch: epoch 2 has one of its two batches done
            os.kill(os.getpid(), signal.SIGINT)

    first = train(tiny_train_config(run, img_dir, kernel_path), step_callback=interrupt_at_3)
    assert first.status == "interrupted"
    assert [h["step"] for h in first.history] == [1, 2, 3]
    state = read_checkpoint(first.last_checkpoint)
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (1, 3, 1)
    # resumed with a DataLoader worker this time: the data must not depend on the worker count
    cfg = tiny_train_config(run, img_dir, kernel_path, resume=True)
    cfg["train_dataset"]["num_workers"] = 1
    second = train(cfg)
    assert second.status == "completed"
    losses = [h["loss"] for h in first.history + second.history]
    assert losses == [h["loss"] for h in ref.history]          # bit-identical continuation
    for key, value in _weights(ref.model).items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_sigterm_also_saves_and_handlers_are_restored(tiny):
    folder, img_dir, kernel_path, _ = tiny
    before = signal.getsignal(signal.SIGTERM)
    result = train(tiny_train_config(os.path.join(folder, "term"), img_dir, kernel_path, epoch_val=0),
                   step_callback=lambda step, loss: os.kill(os.getpid(), signal.SIGTERM))
    assert result.status == "interrupted" and len(result.history) == 1
    assert read_checkpoint(result.last_checkpoint)["batch_in_epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_after_a_finished_shorter_run_matches(tiny):
    """A run stopped for good after epoch 1 (e.g. killed before its next save) resumes from last.pth."""
    folder, img_dir, kernel_path, ref = tiny
    run = os.path.join(folder, "short")
    train(tiny_train_config(run, img_dir, kernel_path, epochs=1))
    resumed = train(tiny_train_config(run, img_dir, kernel_path, resume=True))
    assert [h["step"] for h in resumed.history] == [3, 4, 5, 6]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history[2:]]


def test_resumed_run_replaces_only_its_own_export(tiny):
    folder, img_dir, kernel_path, _ = tiny
    run = os.path.join(folder, "own_export")
    first = train(tiny_train_config(run, img_dir, kernel_path, epochs=1, epoch_val=0))
    resumed = train(tiny_train_config(run, img_dir, kernel_path, resume=True, epoch_val=0))
    assert resumed.exported == first.exported and resumed.exported.endswith(os.path.join("weights", "tiny.pth"))
    assert read_checkpoint(resumed.exported)["step"] == 6
    assert read_checkpoint(resumed.exported)["run_id"] == read_checkpoint(first.last_checkpoint)["run_id"]


def test_new_run_keeps_earlier_runs_and_weights(tiny):
    """With train_options.overwrite a fresh run in a used run folder moves the old run aside; its export never
    replaces another run's weights (e.g. `python deblurring.py --set train_dataset.is_train=true` next to a
    shipped checkpoint)."""
    folder, img_dir, kernel_path, _ = tiny
    run = os.path.join(folder, "again")
    first = train(tiny_train_config(run, img_dir, kernel_path, epochs=1, epoch_val=0))
    shipped = read_checkpoint(first.exported)
    first_last = read_checkpoint(first.last_checkpoint)
    second = train(tiny_train_config(run, img_dir, kernel_path, epochs=2, epoch_val=0, overwrite=True))
    assert second.exported == first.exported.replace("tiny.pth", "tiny_2.pth")
    assert read_checkpoint(second.exported)["step"] == 4
    for key, value in shipped["model"].items():
        assert torch.equal(read_checkpoint(first.exported)["model"][key], value), key
    archived = [d for d in os.listdir(os.path.join(run, "ckpt")) if d.startswith("tiny_archived_")]
    assert len(archived) == 1
    old_last = read_checkpoint(os.path.join(run, "ckpt", archived[0], "last.pth"))
    assert old_last["step"] == 2 and old_last["run_id"] == first_last["run_id"]
    log = open(os.path.join(second.run_dir, "train_log.txt")).read()
    assert "moved to" in log and archived[0] in log and log.count("from epoch 1 step 0") == 1
    # a file the trainer did not write is never replaced either
    foreign = os.path.join(run, "weights", "tiny_3.pth")
    torch.save({"r.m_head.weight": torch.zeros(1)}, foreign)
    os.remove(second.exported)
    third = train(tiny_train_config(run, img_dir, kernel_path, epochs=1, epoch_val=0, overwrite=True))
    assert third.exported.endswith("tiny_2.pth") and list(torch.load(foreign, weights_only=True)) == ["r.m_head.weight"]


def test_an_error_mid_run_saves_progress_and_resume_is_exact(tiny):
    folder, img_dir, kernel_path, ref = tiny
    run = os.path.join(folder, "crash")

    def fail_after_3(step, loss):
        if step == 3:
            raise RuntimeError("simulated crash (a corrupt image, out of memory, ...)")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_train_config(run, img_dir, kernel_path), step_callback=fail_after_3)
    state = read_checkpoint(os.path.join(run, "ckpt", "tiny", "last.pth"))
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (1, 3, 1)
    assert "progress saved to" in open(os.path.join(run, "ckpt", "tiny", "train_log.txt")).read()
    resumed = train(tiny_train_config(run, img_dir, kernel_path, resume=True))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history[3:]]


def test_resume_into_another_model_or_a_bad_run_name_is_one_line(tiny):
    folder, img_dir, kernel_path, ref = tiny
    cfg = tiny_train_config(folder, img_dir, kernel_path, resume=True, resume_model_name=ref.last_checkpoint)
    cfg["model"]["options"]["hd_channels"] = 8
    with pytest.raises(ConfigError, match=r"^train_options.resume_model_name: '.*last.pth' holds a different model "
                                          r"\(NRL_GDN with options .*'hd_channels': 4"):
        train(cfg)
    for name in ("..", "../elsewhere", "a/b"):
        with pytest.raises(ConfigError, match="train_options.run_name: .* must be a plain folder name"):
            train(tiny_train_config(folder, img_dir, kernel_path, run_name=name))
    not_a_run = os.path.join(folder, "foreign", "ckpt", "tiny")
    os.makedirs(not_a_run)
    open(os.path.join(not_a_run, "notes.txt"), "w").write("mine")
    with pytest.raises(ConfigError, match="train_options.run_name: .*tiny' exists and was not written by a run"):
        train(tiny_train_config(os.path.join(folder, "foreign"), img_dir, kernel_path))
    assert os.listdir(not_a_run) == ["notes.txt"]


def test_iteration_budget_and_missing_resume_checkpoint(tiny):
    folder, img_dir, kernel_path, _ = tiny
    run = os.path.join(folder, "iters")
    result = train(tiny_train_config(run, img_dir, kernel_path, total_iters=3, epoch_val=0))
    assert [h["step"] for h in result.history] == [1, 2, 3]
    assert read_checkpoint(result.last_checkpoint)["batch_in_epoch"] == 1
    with pytest.raises(ConfigError, match=r"train_options.resume: no checkpoint to resume at '.*nothing.*last.pth'"):
        train(tiny_train_config(os.path.join(folder, "nothing"), img_dir, kernel_path, resume=True))


def test_parameter_free_model_cannot_be_trained(tiny):
    folder, img_dir, kernel_path, _ = tiny
    cfg = tiny_train_config(os.path.join(folder, "wiener"), img_dir, kernel_path)
    cfg["model"].update(model_select="wiener", options={})
    with pytest.raises(ConfigError, match="model.model_select: 'wiener' has no trainable parameters"):
        train(cfg)


def test_losses_match_direct_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    gt = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    outputs, batch = {"x": x}, {"x": gt}
    diff = (x - gt).numpy()
    loss, logs = build_loss("nrlgdn_l1")(outputs, batch)
    assert loss.item() == pytest.approx(np.abs(diff).mean() / (2 * 3), rel=1e-12)   # L1 / (2N)
    assert logs == {"nrlgdn_l1": pytest.approx(loss.item())}
    assert build_loss("l1")(outputs, batch)[0].item() == pytest.approx(np.abs(diff).mean(), rel=1e-12)
    assert build_loss("mse")(outputs, batch)[0].item() == pytest.approx((diff ** 2).mean(), rel=1e-12)
    eps = 1e-3
    expected = np.sqrt(diff ** 2 + eps ** 2).mean()
    assert build_loss("charbonnier", eps=eps)(outputs, batch)[0].item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(KeyError, match="unknown loss 'l2'"):
        build_loss("l2")


def test_optimizer_and_schedules_follow_their_formulas():
    from engine.train import build_optimizer, build_scheduler

    model = torch.nn.Linear(2, 2)
    cfg = from_dict({"optimizer": {"name": "adamw", "lr": 0.1, "weight_decay": 0.01},
                     "scheduler": {"name": "cosine", "eta_min": 0.001}})
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    sched = build_scheduler(cfg, opt, total_units=10)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    expected = [0.001 + (0.1 - 0.001) * (1 + np.cos(np.pi * t / 10)) / 2 for t in range(1, 11)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    cfg = from_dict({"optimizer": {"lr": 0.1}, "scheduler": {"name": "multistep"}, "multi_step_lr": {"milestone": 3}})
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, total_units=10)
    lrs = []
    for _ in range(5):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01])


def test_warmup_then_cosine_per_epoch_is_virnets_schedule():
    """VIRNet synthetic denoising: 120 epochs, 5 of linear warm-up, cosine to 1e-6 over the other 115
    (lr at epoch e, 0-based, as the published GradualWarmupScheduler + CosineAnnealingLR intend; run under
    torch 2.x their chaining differs from it by at most 2e-4 relative, at epoch 5)."""
    from engine.train import build_optimizer, build_scheduler

    model = torch.nn.Linear(2, 2)
    cfg = from_dict({"optimizer": {"lr": 1e-4}, "scheduler": {"name": "cosine", "eta_min": 1e-6, "warmup_epochs": 5}})
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, total_units=120)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:6] == pytest.approx([2e-5, 4e-5, 6e-5, 8e-5, 1e-4, 1e-4], rel=1e-12)   # 1e-4 twice
    cosine = [1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * k / 115)) for k in range(115)]
    assert lrs[5:] == pytest.approx(cosine, rel=1e-12)
    assert lrs[-1] == pytest.approx(1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * 114 / 115)))
    # the scheduler state round-trips (resume) and continues on the same curve
    state = sched.state_dict()
    opt2 = build_optimizer(cfg, model)
    sched2 = build_scheduler(cfg, opt2, total_units=120)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())


@pytest.mark.parametrize("scheduler, units, message", [
    ({"name": "step", "warmup_epochs": 2}, 10, "scheduler.warmup_epochs: warm-up is implemented for the cosine"),
    ({"name": "cosine", "warmup_epochs": 10}, 10, "scheduler.warmup_epochs: 10 leaves no cosine phase"),
])
def test_warmup_errors_are_one_line(scheduler, units, message):
    from engine.train import build_optimizer, build_scheduler

    cfg = from_dict({"scheduler": scheduler})
    with pytest.raises(ConfigError, match=message):
        build_scheduler(cfg, build_optimizer(cfg, torch.nn.Linear(2, 2)), total_units=units)
