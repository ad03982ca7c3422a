"""What a first GPU training would hit, checked on the CPU by emulating CUDA's rules: host-device syncs per
step, the autocast dtype in DataParallel replicas, non-finite losses, step intervals and persistent
DataLoader workers (with exact resume), the measured FFT-vs-direct choice, evaluation under
inference_mode, no CUDA generator touched by a CPU run. Two-process (gloo) checks are in tests/test_ddp.py."""
import json
import os
import shutil
import signal
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import distributed as dist
from engine.checkpoint import read_checkpoint
from engine.train import train
from models.losses import LossTerms, register_loss
from tests.host_syncs import HostSyncs
from tests.test_engine_train import make_tiny_data, tiny_train_config
from utils import operators as ops
from utils.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = ("tolist", "utils/operators.py:check_blur_inputs")     # the input flags, read in one sync
READ = ("tolist", "engine/loop.py:read")


class NanAtSteps:
    """L1 loss that turns NaN on the given calls (= training steps) of the given DDP rank."""

    def __init__(self, nan_steps=(), nan_rank=0):
        self.nan_steps, self.nan_rank, self.calls = set(nan_steps), nan_rank, 0

    def __call__(self, outputs, batch):
        self.calls += 1
        loss = F.l1_loss(outputs["x"].float(), batch["x"])
        if self.calls in self.nan_steps and dist.rank() == self.nan_rank:
            loss = loss * float("nan")
        return loss, LossTerms(l1=loss)


register_loss("test_nan_at_steps", "tests.test_gpu_ready:NanAtSteps")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    folder = str(tmp_path_factory.mktemp("gpu_ready"))
    img_dir, kernel_path = make_tiny_data(folder)
    reference = train(tiny_train_config(os.path.join(folder, "ref"), img_dir, kernel_path))
    return folder, img_dir, kernel_path, reference


def _syncs_per_step(cfg):
    """Host syncs between consecutive step callbacks, i.e. of every step but the first: {step: calls}."""
    marks = []
    with HostSyncs() as syncs:
        train(cfg, step_callback=lambda step, loss: marks.append(len(syncs.calls)))
    return {i + 2: syncs.calls[a:b] for i, (a, b) in enumerate(zip(marks, marks[1:]))}


# ------------------------------------------------------------------------------------------ syncs
def test_an_nrlgdn_training_step_syncs_once_and_logging_once_more(tmp_path):
    """Was 6 per step: the kernel checks ran twice (model and Eq. (22)) with two syncs each, then
    isfinite(loss) and float(loss). Now one kernel check per forward; the losses are read every log_every."""
    img_dir, kernel_path = make_tiny_data(str(tmp_path), n_images=8)
    cfg = tiny_train_config(str(tmp_path), img_dir, kernel_path, epochs=1, epoch_val=0, log_every=2)
    cfg["model"]["options"]["early_stop"] = False
    cfg["train_dataset"]["num_workers"] = 1        # the (CPU-only) data pipeline runs in a worker
    assert _syncs_per_step(cfg) == {2: [CHECK, READ], 3: [CHECK], 4: [CHECK, READ]}
    # the published early stop keeps its one sync per unrolled step from step 5 (0-based) on
    cfg = tiny_train_config(str(tmp_path / "stop"), img_dir, kernel_path, epochs=1, epoch_val=0, log_every=100)
    cfg["model"]["options"].update(early_stop=True, num_steps=8)
    cfg["train_dataset"]["num_workers"] = 1
    for calls in _syncs_per_step(cfg).values():
        assert calls[0] == CHECK and 1 <= len(calls) <= 1 + (8 - 5)
        assert set(calls[1:]) <= {("_local_scalar_dense", "models/nrlgdn.py:should_stop")}


@pytest.mark.parametrize("name, options, per_step", [
    ("dsdnet_tiny", ['model.options={"nf_p": 4, "nf_d": 4, "adjoint": "exact"}', "train_dataset.batch_size=1"],
     [CHECK]),
    ("virnet_sisr_tiny", ["train_dataset.repeat=4"], []), ("virnet_denoise_tiny", ["train_dataset.repeat=4"], [])])
def test_dsdnet_and_virnet_steps_sync_only_to_check_kernels(tmp_path, name, options, per_step):
    """DSDNet: 4 float() in its loss and a nonzero() per exact adjoint, now only the (y, k) input check that
    every (y, k) model makes; VIRNet-SR: Gamma argument checks, a digamma .item() and a singular-matrix test
    per step, float() of 8 loss terms and 3 gradient norms, now none."""
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.json"), None, [
        f"train_options.checkpoint_dir={tmp_path}", f"model.model_save_file={tmp_path / 'w'}",
        "train_options.epoch_val=0", "train_options.total_iters=4", "train_options.log_every=100",
        "train_options.max_steps_per_epoch=0", "train_options.disable_cuda=true", "train_dataset.num_workers=1",
        "train_dataset.max_images=4"] + options)
    assert _syncs_per_step(cfg) == {2: per_step, 3: per_step, 4: per_step}


# -------------------------------------------------------------------------------------- DataParallel
class _DtypeProbe(torch.nn.Module):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(torch.get_autocast_dtype("cpu"))
        return x


def _in_replica_thread(replica, x):
    """What torch.nn.parallel.parallel_apply does per replica: a new thread re-entering autocast with
    `enabled=` only (the dtype is thread-local, so it falls back to the device's default)."""
    enabled = torch.is_autocast_enabled("cpu")

    def work():
        with torch.amp.autocast("cpu", enabled=enabled):
            replica(x)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


def test_dataparallel_replicas_keep_the_autocast_dtype(monkeypatch):
    """On CUDA a bf16 run fell back to fp16 in the replicas; on the CPU the default is bf16, so the mirror
    image (fp16 falling back to bf16) shows the same mechanism."""
    seen, x = [], torch.ones(2)
    with torch.autocast("cpu", dtype=torch.float16):
        _in_replica_thread(_DtypeProbe(seen), x)                     # plain DataParallel: the default dtype
        captured = {}
        monkeypatch.setattr(torch.nn.DataParallel, "parallel_apply",
                            lambda self, replicas, inputs, kwargs: captured.setdefault("replicas", replicas))
        wrapped = dist.wrap_model(_DtypeProbe(seen), torch.device("cuda", 0), [0, 1])
        assert isinstance(wrapped, dist.AutocastDataParallel)
        wrapped.src_device_obj = torch.device("cpu")                 # set by DataParallel when GPUs exist
        wrapped.parallel_apply([_DtypeProbe(seen)], [(x,)], [{}])
        _in_replica_thread(captured["replicas"][0], x)
    assert seen == [torch.bfloat16, torch.float16]


# ---------------------------------------------------------------------------------- non-finite loss
def _nan_config(tiny_args, run, nan_steps, **options):
    folder, img_dir, kernel_path = tiny_args
    cfg = tiny_train_config(os.path.join(folder, run), img_dir, kernel_path, epoch_val=0, **options)
    cfg["model"].update(loss="test_nan_at_steps", loss_options={"nan_steps": nan_steps})
    return cfg


def test_a_nonfinite_loss_checked_before_its_update_saves_the_state_before_it(tiny):
    folder, img_dir, kernel_path, ref = tiny
    cfg = _nan_config((folder, img_dir, kernel_path), "nan1", [3], log_every=1)
    with pytest.raises(FloatingPointError, match=r"^loss became nan at step 3 \(epoch 2\); the state before that "
                                                 r"step is saved to .*nan1.*nonfinite.pth$"):
        train(cfg)
    state = read_checkpoint(os.path.join(folder, "nan1", "ckpt", "tiny", "nonfinite.pth"))
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 1, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_nonfinite_loss_found_later_is_not_saved(tiny):
    """Checked every 4 steps: the NaN of step 3 is seen at step 4, after the weights took it; last.pth
    keeps the state of step 2 (end of epoch 1) and nothing poisoned is written."""
    folder, img_dir, kernel_path, _ = tiny
    cfg = _nan_config((folder, img_dir, kernel_path), "nan4", [3], log_every=4)
    run_dir = os.path.join(folder, "nan4", "ckpt", "tiny")
    with pytest.raises(FloatingPointError, match=r"^loss became nan at step 3 \(epoch 2\); losses are checked every "
                                                 r"4 steps .*not saved; the last checkpoint is .*last.pth \(step 2\)$"):
        train(cfg)
    assert read_checkpoint(os.path.join(run_dir, "last.pth"))["step"] == 2
    assert not os.path.exists(os.path.join(run_dir, "nonfinite.pth"))


# ------------------------------------------------------------------------ intervals, workers, resume
def test_persistent_workers_draw_each_epochs_own_samples(tiny):
    """The loader keeps its 2 workers across epochs, and epoch e still yields the samples (e, i)."""
    from data.datasets import collate
    from engine.datasets import build_train_loader

    folder, img_dir, kernel_path, _ = tiny
    cfg = tiny_train_config(os.path.join(folder, "loader"), img_dir, kernel_path)
    cfg["train_dataset"]["num_workers"] = 2
    loader, sampler, dataset = build_train_loader(cfg, 2, 0, 1)
    assert loader.persistent_workers
    firsts, workers = [], set()
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(loader)
        workers.add(id(loader._iterator))
        expected = [collate([dataset[(epoch, i)] for i in sampler.indices()[j:j + 2]]) for j in (0, 2)]
        assert all(torch.equal(b["y"], e["y"]) for b, e in zip(batches, expected))
        firsts.append(dataset[(epoch, 0)]["y"])
    assert len(workers) == 1 and not torch.equal(firsts[0], firsts[1])


def test_persistent_workers_draw_every_epoch_and_resume_exactly(tiny):
    """Two DataLoader workers kept alive for 3 epochs: the same batches as no workers at all (the epoch
    travels with the sampler's indices), also across an interruption and a resume."""
    folder, img_dir, kernel_path, ref = tiny
    cfg = tiny_train_config(os.path.join(folder, "workers"), img_dir, kernel_path)
    cfg["train_dataset"]["num_workers"] = 2
    assert [h["loss"] for h in train(cfg).history] == [h["loss"] for h in ref.history]

    def interrupt_at_3(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    run = os.path.join(folder, "workers_resumed")
    cfg = tiny_train_config(run, img_dir, kernel_path)
    cfg["train_dataset"]["num_workers"] = 2
    first = train(cfg, step_callback=interrupt_at_3)
    cfg = tiny_train_config(run, img_dir, kernel_path, resume=True)
    cfg["train_dataset"]["num_workers"] = 2
    second = train(cfg)
    assert first.status == "interrupted"
    assert [h["loss"] for h in first.history + second.history] == [h["loss"] for h in ref.history]


def test_step_intervals_validate_and_save_inside_epochs(tiny):
    """val_every_steps=2, save_every_steps=3 on 3 epochs of 2 steps: validation at steps 2, 4, 6; last.pth
    first written at step 3, in the middle of epoch 2, and a resume from it continues exactly."""
    folder, img_dir, kernel_path, ref = tiny
    run = os.path.join(folder, "intervals")
    saved = {}

    def watch(step, loss):
        last = os.path.join(run, "ckpt", "tiny", "last.pth")
        saved[step] = read_checkpoint(last)["step"] if os.path.isfile(last) else None
        if step == 4:
            shutil.copy(last, os.path.join(run, "step3.pth"))
    cfg = tiny_train_config(run, img_dir, kernel_path, val_every_steps=2, save_every_steps=3)
    result = train(cfg, step_callback=watch)
    assert saved == {1: None, 2: None, 3: None, 4: 3, 5: 3, 6: 3}       # the callback runs before the save
    assert read_checkpoint(result.last_checkpoint)["step"] == 6
    history = [json.loads(line) for line in open(os.path.join(result.run_dir, "history.jsonl"))]
    assert [h["step"] for h in history if "psnr_val" in h] == [2, 4, 6]
    state = read_checkpoint(os.path.join(run, "step3.pth"))
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 1)
    resumed = train(tiny_train_config(run, img_dir, kernel_path, resume=True, epoch_val=0,
                                      resume_model_name=os.path.join(run, "step3.pth")))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history[3:]]


def test_logged_loss_is_the_mean_of_the_steps_since_the_last_log(tiny):
    folder, img_dir, kernel_path, ref = tiny
    result = train(tiny_train_config(os.path.join(folder, "log3"), img_dir, kernel_path, log_every=3, epoch_val=0))
    logged = [json.loads(line) for line in open(os.path.join(result.run_dir, "history.jsonl"))]
    losses = [h["loss"] for h in ref.history]
    assert [(h["step"], h["loss"]) for h in logged] == [
        (1, pytest.approx(losses[0])), (3, pytest.approx(np.mean(losses[1:3]))), (6, pytest.approx(np.mean(losses[3:6])))]
    assert [h["loss"] for h in result.history] == losses          # every step's loss is still recorded


def test_a_cpu_run_never_initialises_cuda_generators(tiny, monkeypatch):
    """Checkpoints stored torch.cuda.get_rng_state_all() whenever CUDA existed, even with disable_cuda."""
    folder, img_dir, kernel_path, _ = tiny

    def refuse(*args, **kwargs):
        raise AssertionError("a CPU run touched a CUDA generator")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    run = os.path.join(folder, "no_cuda")
    train(tiny_train_config(run, img_dir, kernel_path, epochs=1, epoch_val=0))
    result = train(tiny_train_config(run, img_dir, kernel_path, epochs=2, epoch_val=0, resume=True))
    assert result.status == "completed" and "cuda" not in read_checkpoint(result.last_checkpoint)["rng"]


# ------------------------------------------------------------------------------ GPU settings
def test_fft_or_direct_is_measured_once_per_size_on_measured_devices(monkeypatch):
    """The CPU cost model does not describe a GPU: there both paths are timed once per size (emulated on
    the CPU by listing it among the measured device types, with made-up timings)."""
    timings, timed = {"conv_direct": 1.0, "conv_fft": 2.0}, []

    def fake_seconds(fn, device, repeats=3):
        name = fn.__code__.co_names[0]
        timed.append(name)
        return timings[name]
    monkeypatch.setattr(ops, "MEASURED_DEVICE_TYPES", {"cpu"})
    monkeypatch.setattr(ops, "_measured_choice", {})
    monkeypatch.setattr(ops, "_seconds", fake_seconds)
    x, k = torch.rand(1, 3, 40, 40), torch.full((1, 1, 9, 9), 1 / 81)
    assert ops.fft_is_faster(40, 40, 9, 9, 3)                      # the CPU cost model would take the FFT
    calls = []
    for name in ("conv_fft", "conv_direct"):
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _n=name, _f=original, **kw: (calls.append(_n), _f(*a, **kw))[1])
    ops.conv(x, k)
    ops.conv(x, k)
    assert timed == ["conv_direct", "conv_fft"] and calls == ["conv_direct", "conv_direct"]   # timed once, kept
    timings.update(conv_direct=3.0)                                  # another size is measured anew
    ops.conv(torch.rand(1, 3, 32, 32), k)
    assert timed[2:] == ["conv_direct", "conv_fft"] and calls[-1] == "conv_fft"


def test_a_real_measurement_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(ops, "_measured_choice", {})
    assert ops.measured_fft_is_faster(24, 24, 7, 7, 3, torch.device("cpu")) in (True, False)
    assert list(ops._measured_choice) == [("cpu", None, 24, 24, 7, 7, 3)]


def test_validation_and_evaluation_run_under_inference_mode(tiny, monkeypatch, tmp_path):
    from engine import evaluate as evaluation
    from engine.validate import validate
    from utils.config import from_dict

    seen = []
    original = evaluation.restore

    def spy(*args, **kwargs):
        seen.append(("evaluate", torch.is_inference_mode_enabled()))
        return original(*args, **kwargs)
    monkeypatch.setattr(evaluation, "restore", spy)
    cfg = from_dict({"test_dataset": {"baselines_only": True, "compare_models": ["wiener"], "max_images": 1,
                                      "kernel_indices": [0], "is_test_nonuniform": False, "save_images": False,
                                      "save_figures": False, "result_save_file": str(tmp_path)},
                     "train_options": {"disable_cuda": True}})
    evaluation.evaluate(cfg, verbose=False)

    class Probe(torch.nn.Module):
        input_keys = ("y",)

        def forward(self, y):
            seen.append(("validate", torch.is_inference_mode_enabled()))
            return y
    x = torch.rand(3, 16, 16)
    validate(Probe(), [{"x": x, "y": x}], torch.device("cpu"))
    assert seen == [("evaluate", True), ("validate", True)]


# ------------------------------------------------------------------------------------- the GPU check
@pytest.mark.slow
def test_gpu_check_dry_run_passes_and_writes_its_table(tmp_path):
    """`python benchmarks/gpu_check.py --dry-run`: every section of the GPU check, tiny, on the CPU."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.load(open(tmp_path / "gpu_check.json"))
    assert [s["name"] for s in report["sections"]] == ["info", "precision", "curves", "parallel", "speed", "device_tests"]
    assert all(s["status"] == "PASS" for s in report["sections"]), report["sections"]
    checks = [r for r in report["table"] if r["status"] != "info"]
    assert len(checks) >= 10 and all(r["status"] == "PASS" for r in checks)
    assert {r["section"] for r in report["table"]} == {"precision", "curves", "parallel", "speed", "device_tests"}
    assert "section       metric" in proc.stdout and "total " in proc.stdout      # the one printed table
    if not torch.cuda.is_available():
        plain = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "plain")], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=120)
        assert plain.returncode != 0 and plain.stderr.strip().splitlines()[-1] == (
            "error: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")


def test_find_unused_parameters_reaches_ddp_and_early_stop_sync_is_checked(tiny, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        for flag in (False, True):
            wrapped = dist.wrap_model(torch.nn.Linear(2, 2), torch.device("cpu"), [], find_unused_parameters=flag)
            assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
            assert wrapped.find_unused_parameters is flag
    finally:
        torch.distributed.destroy_process_group()
    folder, img_dir, kernel_path, _ = tiny
    cfg = tiny_train_config(os.path.join(folder, "sync"), img_dir, kernel_path, early_stop_sync=True)
    monkeypatch.setattr(dist, "usable_device_ids", lambda device, ids: [0, 1])      # as with 2 GPUs listed
    with pytest.raises(ConfigError, match=r"^train_options.early_stop_sync: needs DDP \(torchrun\); DataParallel "
                                        r"replicas each stop on their own share"):
        train(cfg)
    cfg["model"].update(model_select="DSDplus_e", options={"nf_p": 4, "nf_d": 4})
    with pytest.raises(ConfigError, match=r"^train_options.early_stop_sync: DSDplus_e has no early stop to synchronise"):
        train(cfg)
