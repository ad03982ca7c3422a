"""Fault injection (issue 13): nothing runs that shouldn't, nothing hangs, nothing is lost.

One test (or one group) per defect: pickled code through every load path, an unreadable training image
with DataLoader workers, re-running a run, `net(y, k)` input rules, two inputs and one output file,
one-line write failures, leftovers after a crash, the smaller items, and which errors keep their traceback.
"""
import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import deblurring
from engine.checkpoint import read_checkpoint
from engine.train import train
from models import build_model, load_pretrained
from tests.test_engine_train import TINY_NRLGDN, make_tiny_data, tiny_train_config
from utils.config import ConfigError, DataError
from utils.io import save_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OPTIONS = json.dumps({**TINY_NRLGDN, "num_steps": 1})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults_data")
    return make_tiny_data(str(folder), n_images=2, size=32)


def _config(folder, data, **options):
    img_dir, kernel_path = data
    cfg = tiny_train_config(str(folder), img_dir, kernel_path, **{"epochs": 1, "epoch_val": 0, **options})
    cfg["model"]["options"]["num_steps"] = 1
    return cfg


def _cli_train(folder, data, *sets):
    """deblurring.py arguments of a tiny training run in `folder` (run name 'r')."""
    img_dir, kernel_path = data
    args = ["train_dataset.is_train=true", f"train_dataset.root_path={img_dir}",
            f"train_dataset.kernel_path={kernel_path}", "train_dataset.patch_size=16", "train_dataset.degradation={}",
            "train_dataset.batch_size=2", "train_dataset.num_workers=0", f"model.options={TINY_OPTIONS}",
            f"model.model_save_file={folder / 'weights'}", "train_options.epoch_val=0", "train_options.epochs=1",
            "train_options.tensorboard=false", f"train_options.checkpoint_dir={folder / 'ckpt'}",
            "train_options.run_name=r", *sets]
    return [a for s in args for a in ("--set", s)]


def _snapshot(folder):
    """{relative path: sha256} of every file under `folder`."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _last_error_line(err: str) -> str:
    return err.strip().splitlines()[-1]      # the lines before it are progress bars


# 1 --------------------------------------------------------------------------------------- pickled code
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):            # unpickling this runs a shell command
        return os.system, (f"touch '{self.marker}'",)


def _evil_checkpoint(path, marker):
    net = build_model("NRL_GDN", **{**TINY_NRLGDN, "num_steps": 1})
    torch.save({"model": net.state_dict(), "optimizer": {}, "epoch": 1, "step": 1, "run_id": "x",
                "hook": _Payload(marker)}, path)
    return str(path)


def test_pickled_code_never_runs_through_any_load_path(tmp_path, data, capsys):
    marker = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "evil.pth", marker)
    refused = r"\.pth: cannot be read with torch.load\(weights_only=True\): Trying to load unsupported GLOBAL"
    # evaluation: model.pretrained through the CLI (the repro)
    assert deblurring.main(["--set", f"model.pretrained={evil}", "--set", "test_dataset.max_images=1",
                            "--set", f"test_dataset.result_save_file={tmp_path / 'results'}"]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    # resume (last.pth of the run folder) and resume_model_name
    run = tmp_path / "resume" / "ckpt" / "tiny"
    run.mkdir(parents=True)
    shutil.copyfile(evil, run / "last.pth")
    with pytest.raises(ConfigError, match=refused):
        train(_config(tmp_path / "resume", data, resume=True))
    with pytest.raises(ConfigError, match=refused):
        train(_config(tmp_path / "named", data, resume=True, resume_model_name=evil))
    # fine-tuning: init_from, and init_grow
    for grow in (False, True):
        cfg = _config(tmp_path / f"init{grow}", data)
        cfg["model"].update(init_from=evil, init_grow=grow)
        with pytest.raises(ConfigError, match=r"^model.init_from: .*" + refused):
            train(cfg)
    # the end-of-training check whether an existing export is this run's own
    cfg = _config(tmp_path / "export", data)
    os.makedirs(cfg["model"]["model_save_file"])
    shutil.copyfile(evil, os.path.join(cfg["model"]["model_save_file"], "tiny.pth"))
    assert train(cfg).exported.endswith("tiny_2.pth")
    # the Python API and the DND tool
    with pytest.raises(ValueError, match=refused):
        load_pretrained(build_model("NRL_GDN", **TINY_NRLGDN), evil)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import dnd_submission
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    assert dnd_submission.main(["--dnd", str(tmp_path / "dnd"), "--out", str(tmp_path / "out"),
                                "--set", f"model.pretrained={evil}"]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert not marker.exists()
    control = tmp_path / "control"                     # the payload is live: plain unpickling runs it
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()


def test_no_code_unpickles_checkpoints_fully():
    """No conversion tool either: our training checkpoints never held more than weights_only=True reads."""
    needle = "weights_only=" + "False"
    sources = [os.path.join(root, f) for root, dirs, files in os.walk(ROOT) for f in files
               if f.endswith(".py") and not any(part.startswith(".") for part in root[len(ROOT):].split(os.sep))]
    assert len(sources) > 50
    assert [path for path in sources if needle in open(path, encoding="utf-8").read()] == []


# 2 ------------------------------------------------------------------ unreadable image, DataLoader workers
def test_unreadable_training_image_with_workers_ends_in_seconds_with_one_line(tmp_path):
    img_dir, kernel_path = make_tiny_data(str(tmp_path), n_images=4, size=32)
    first = train(_config(tmp_path, (img_dir, kernel_path), run_name="r"))      # a checkpoint to keep intact
    before = read_checkpoint(first.last_checkpoint)
    bad = os.path.join(img_dir, "img2.png")
    open(bad, "wb").write(b"\x89PNG\r\n\x1a\n not an image")
    sets = ["train_dataset.num_workers=2", "train_options.resume=true", "train_options.epochs=3",
            "train_options.tensorboard=false"]
    args = [sys.executable, os.path.join(ROOT, "deblurring.py")] + _cli_train(tmp_path, (img_dir, kernel_path), *sets)
    started = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120,   # a hang fails here
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert time.time() - started < 60                  # about 10 s on a busy CPU, mostly start-up
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert _last_error_line(proc.stderr) == (f"error: cannot read image {bad}: cannot identify image file '{bad}' "
                                             "(set DEBLURRING_TRACEBACK=1 for the traceback)")
    after = read_checkpoint(first.last_checkpoint)
    assert after["step"] == before["step"] == 2
    for key, value in before["model"].items():
        assert torch.equal(after["model"][key], value), key


# 3 ------------------------------------------------------------------------------------------ re-run
def test_rerun_refuses_before_any_work_and_overwrite_keeps_everything(tmp_path, data, capsys):
    assert deblurring.main(_cli_train(tmp_path, data)) == 0
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert deblurring.main(_cli_train(tmp_path, data)) == 2
    run = tmp_path / "ckpt" / "r"
    assert capsys.readouterr().err == (
        f"error: train_options.run_name: '{run}' holds an earlier run; continue it with train_options.resume=true, "
        "start a new one with another train_options.run_name, or set train_options.overwrite=true to move it to "
        "r_archived_<time>/\n")
    assert _snapshot(tmp_path) == before                                  # nothing of the old run changed

    assert deblurring.main(_cli_train(tmp_path, data, "train_options.overwrite=true")) == 0
    out = capsys.readouterr().out
    archived = [d for d in os.listdir(tmp_path / "ckpt") if d.startswith("r_archived_")]
    assert len(archived) == 1
    assert f"train_options.overwrite: the earlier run in {run} was moved to {run}_archived_" in out
    assert f"{tmp_path / 'weights' / 'r.pth'} holds another run's weights and was kept; this run's weights: " \
           f"{tmp_path / 'weights' / 'r_2.pth'}" in out
    after = _snapshot(tmp_path)
    for path, digest in before.items():                                   # moved or untouched, never changed
        moved = path.replace(os.path.join("ckpt", "r"), os.path.join("ckpt", archived[0]), 1)
        assert after.get(moved) == digest, path
    with pytest.raises(ConfigError, match="train_options.overwrite: true together with resume=true"):
        train(_config(tmp_path / "both", data, resume=True, overwrite=True))


# 4 ----------------------------------------------------------------------------------- net(y, k) rules
API_MODELS = [("NRL_GDN", TINY_NRLGDN), ("DSD_light", {"n_iter": 1, "nf_p": 4, "nf_d": 4}), ("wiener", {}),
              ("eq22_init", {}), ("richardson_lucy", {"num_iter": 2})]


@pytest.mark.parametrize("name, options", API_MODELS)
def test_every_yk_model_refuses_bad_inputs_in_one_line_and_pads_kernel_lists(name, options):
    torch.manual_seed(0)
    net = build_model(name, **options).eval()
    y = torch.rand(2, 3, 20, 20)
    cases = [((y, torch.ones(5, 5) / 5), r"^k\[0\] sums to 5, not 1: a blur kernel must be normalised; "
                                         r"pass k / k\.sum\(dim=\(-2, -1\), keepdim=True\)$"),
             ((y, torch.ones(3, 3, dtype=torch.int64)), r"^k\[0\] sums to 9, not 1"),
             ((y.numpy(), torch.ones(3, 3) / 9), r"^y: expected a torch\.Tensor, got ndarray$")]
    for args, message in cases:
        with pytest.raises(DataError, match=message):
            net(*args)
    small, large = torch.ones(3, 3) / 9, torch.zeros(4, 4)
    large[1:3, 0:3] = 1 / 6
    padded = torch.zeros(2, 1, 4, 4)                       # centres (1, 1) and (2, 2) aligned at (2, 2)
    padded[0, 0, 1:4, 1:4], padded[1, 0] = small, large
    with torch.no_grad():
        out, ref = net(y, [small, large]), net(y, padded)
        out, ref = (o["x"] if isinstance(o, dict) else o for o in (out, ref))
        assert torch.equal(out, ref)
        if any(p.is_floating_point() for p in net.parameters()):    # a float64 y runs in the weights' dtype
            out64 = net(y.double(), padded)
            out64 = out64["x"] if isinstance(out64, dict) else out64
            assert out64.dtype == torch.float32 and torch.equal(out64, ref)


# 5 ---------------------------------------------------------------------------- one output per input
def test_inputs_whose_names_collide_get_their_own_output_files(tmp_path, data, capsys):
    folder = tmp_path / "images"
    rng = np.random.default_rng(3)
    names = ["x y.png", "x_y.png", "a.png", "a.jpg"]
    for name in names:
        save_image(folder / name, torch.from_numpy(rng.random((3, 24, 24))).float())
    args = ["model.model_select=wiener", "model.options={}", f"test_dataset.root_path={tmp_path}",
            "test_dataset.test_data=images", f"test_dataset.kernel_path={data[1]}", "test_dataset.kernel_indices=[0]",
            "test_dataset.max_images=0",
            "test_dataset.is_test_nonuniform=false", "test_dataset.compare_models=[]",
            f"test_dataset.result_save_file={tmp_path / 'results'}", "test_dataset.run_name=n"]
    assert deblurring.main([a for s in args for a in ("--set", s)]) == 0
    results = tmp_path / "results" / "n"
    kdir = results / "uniform_2.55" / "kernel0"
    restored = sorted(f for f in os.listdir(kdir) if f.endswith("_wiener.png"))
    assert restored == ["a.jpg_wiener.png", "a.png_wiener.png", "x_y_2_wiener.png", "x_y_wiener.png"]
    assert (kdir / "x_y_degraded.png").read_bytes() != (kdir / "x_y_2_degraded.png").read_bytes()
    assert len(os.listdir(results / "uniform_2.55" / "figures")) == 4
    images = {r["image"] for r in json.load(open(results / "results.json"))["records"]}
    assert images == {"x y", "x_y", "a.png", "a.jpg"}
    digests = {hashlib.sha256(open(kdir / f, "rb").read()).hexdigest() for f in restored}
    assert len(digests) == 4                                   # four different restorations, none replaced


# 6 ------------------------------------------------------------------------------ one-line write failures
def _limit_file_size():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_checkpoint_write_that_fails_is_one_line_and_leaves_no_temp_file(tmp_path, data):
    """A real failed write: files beyond 100 kB cannot be written (as on a full disk); last.pth is 160 kB."""
    args = [sys.executable, os.path.join(ROOT, "deblurring.py")] + _cli_train(tmp_path, data)
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=_limit_file_size,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    last = tmp_path / "ckpt" / "r" / "last.pth"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _last_error_line(proc.stderr) == (f"error: cannot write '{last}': File too large "
                                             "(any earlier version of it is kept)")
    assert sorted(os.listdir(last.parent)) == ["history.jsonl", "train_log.txt"]


def _failing_replace(monkeypatch, target, err):
    """os.replace into `target` fails with `err` (the last step of every atomic write)."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if os.fspath(dst) == os.fspath(target):
            raise OSError(err, os.strerror(err), os.fspath(src))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)


def test_full_disk_at_export_or_results_is_one_line_and_keeps_the_old_file(tmp_path, data, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    _failing_replace(monkeypatch, weights / "r.pth", errno.ENOSPC)
    assert deblurring.main(_cli_train(tmp_path, data)) == 1
    assert _last_error_line(capsys.readouterr().err) == (
        f"error: cannot write '{weights / 'r.pth'}': No space left on device (any earlier version of it is kept)")
    assert os.listdir(weights) == [] and read_checkpoint(str(tmp_path / "ckpt" / "r" / "last.pth"))["step"] == 1

    summary = tmp_path / "results" / "default" / "summary.md"
    _failing_replace(monkeypatch, summary, errno.ENOSPC)
    args = ["model.model_select=wiener", "model.options={}", "test_dataset.max_images=1",
            "test_dataset.kernel_indices=[0]", "test_dataset.is_test_nonuniform=false", "test_dataset.save_figures=false",
            f"test_dataset.result_save_file={tmp_path / 'results'}"]
    assert deblurring.main([a for s in args for a in ("--set", s)]) == 1
    assert _last_error_line(capsys.readouterr().err) == (
        f"error: cannot write '{summary}': No space left on device (any earlier version of it is kept)")


def test_unwritable_export_folder_is_refused_before_training(tmp_path, data, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert deblurring.main(_cli_train(tmp_path, data, f"model.model_save_file={blocker / 'weights'}")) == 2
    err = capsys.readouterr().err
    assert err == f"error: model.model_save_file: cannot write '{blocker / 'weights'}': Not a directory " \
        "(checked before training)\n"
    assert not (tmp_path / "ckpt" / "r").exists()                   # nothing trained, nothing written
    # a read-only folder (chmod does not stop root, so the file system's answer is simulated)
    real_open = os.open
    read_only = str(tmp_path / "ro")

    def open_(path, *a, **k):
        if os.fspath(path).startswith(read_only):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", open_)
    assert deblurring.main(_cli_train(tmp_path, data, f"model.model_save_file={read_only}")) == 2
    err = capsys.readouterr().err
    assert err == f"error: model.model_save_file: cannot write '{read_only}': Read-only file system " \
        "(checked before training)\n"
    assert not (tmp_path / "ckpt" / "r").exists()


def test_resume_after_changing_model_options_is_one_line(tmp_path, data, capsys):
    assert deblurring.main(_cli_train(tmp_path, data)) == 0
    capsys.readouterr()
    other = json.dumps({**json.loads(TINY_OPTIONS), "hd_channels": 8})
    assert deblurring.main(_cli_train(tmp_path, data, "train_options.resume=true", f"model.options={other}")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: train_options.resume_model_name: '{tmp_path / 'ckpt' / 'r' / 'last.pth'}' holds "
                          "a different model (NRL_GDN with options") and err.count("\n") == 1


# 7 ---------------------------------------------------------------------------------- crash leftovers
class _Killed(BaseException):
    """Ends a run like kill -9: no handler saves anything."""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_resume_after_a_kill_cuts_history_back_and_removes_stale_temp_files(tmp_path, data):
    def kill_at_4(step, loss):
        if step == 4:                      # one step per epoch: last.pth holds step 3; steps 1-4 are logged
            raise _Killed

    with pytest.raises(_Killed):
        train(_config(tmp_path, data, epochs=6), step_callback=kill_at_4)
    run, weights = tmp_path / "ckpt" / "tiny", tmp_path / "weights"
    pid = _dead_pid()
    stale = [run / f".last.pth.{pid}.0123abcd.tmp", weights / f".tiny.pth.{pid}.89abcdef.tmp"]
    kept = [run / f".last.pth.{os.getpid()}.00000000.tmp", weights / f".other.pth.{pid}.11111111.tmp"]
    for path in stale + kept:
        path.write_bytes(b"half a checkpoint")
    resumed = train(_config(tmp_path, data, epochs=6, resume=True))
    steps = [json.loads(line)["step"] for line in open(run / "history.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]                      # not 1, 2, 3, 4, 4, 5, 6
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    log = open(run / "train_log.txt").read()
    assert f"removed 2 temp file(s) left by saves that were killed: {stale[0]}, {stale[1]}" in log


# 8 ------------------------------------------------------------------------------------- smaller items
def test_nan_weights_are_refused_naming_the_tensor(tmp_path, capsys):
    net = build_model("NRL_GDN", **TINY_NRLGDN)
    state = net.state_dict()
    state["h.main.0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"model": state, "model_select": "NRL_GDN", "model_options": TINY_NRLGDN}, path)
    message = f"{path}: tensor 'h.main.0.weight' holds NaN or Inf values; these weights are unusable"
    with pytest.raises(DataError, match="^" + message.replace(".", r"\.") + "$"):
        load_pretrained(net, path)
    assert deblurring.main(["--set", f"model.pretrained={path}", "--set", "test_dataset.max_images=1",
                            "--set", f"test_dataset.result_save_file={tmp_path / 'results'}"]) == 2
    assert capsys.readouterr().err == f"error: model.pretrained: {message}\n"


def test_a_kernel_with_negative_entries_is_accepted_with_one_warning(monkeypatch):
    import utils.operators as ops
    from data.kernels import validate_kernel

    monkeypatch.setattr(ops, "_warned_negative", False)
    k = np.array([[0.0, -0.1, 0.0], [0.3, 0.5, 0.3], [0.0, 0.0, 0.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert validate_kernel(k, "kernels.npy[0]").sum() == pytest.approx(1.0)
        validate_kernel(k, "kernels.npy[1]")
        ops.check_blur_inputs(torch.rand(1, 1, 8, 8), torch.from_numpy(k))
    assert [str(w.message) for w in caught] == [
        "kernels.npy[0]: blur kernel with negative entries (min -0.1); it is used as given, though a blur kernel "
        "is normally non-negative (this is said once)"]


def test_zero_epochs_is_refused_instead_of_exporting_untrained_weights(tmp_path, data):
    with pytest.raises(ConfigError, match=r"^train_options.epochs: 0 \(and total_iters 0\) trains nothing"):
        train(_config(tmp_path, data, epochs=0))
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "weights").exists()


def test_a_second_ctrl_c_during_a_save_finishes_the_file_then_stops(tmp_path, data, monkeypatch):
    import utils.io

    real_fdopen = os.fdopen
    interrupted = []

    class _InterruptingFile:
        """The checkpoint file; its first write brings the second Ctrl-C (mid-file)."""

        def __init__(self, f):
            self.f = f

        def write(self, chunk):
            if not interrupted:
                interrupted.append(True)
                os.kill(os.getpid(), signal.SIGINT)
            return self.f.write(chunk)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def first_ctrl_c(step, loss):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            monkeypatch.setattr(utils.io.os, "fdopen", lambda *a, **k: _InterruptingFile(real_fdopen(*a, **k)))

    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, data), step_callback=first_ctrl_c)
    run = tmp_path / "ckpt" / "tiny"
    assert interrupted and not [f for f in os.listdir(run) if f.endswith(".tmp")]
    state = read_checkpoint(str(run / "last.pth"))                  # complete, at the step it stopped
    assert (state["step"], state["batch_in_epoch"]) == (1, 1)
    # outside training's handlers (a plain Ctrl-C inside torch.save): the save is abandoned, old file intact
    before = (run / "last.pth").read_bytes()

    def ctrl_c(self, chunk):
        raise KeyboardInterrupt
    monkeypatch.setattr(_InterruptingFile, "write", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        utils.io.atomic_save({"model": torch.zeros(1000)}, run / "last.pth")
    assert (run / "last.pth").read_bytes() == before and not [f for f in os.listdir(run) if f.endswith(".tmp")]


def test_worker_count_does_not_change_the_training_data(tmp_path, data):
    """Synthesis runs on one thread everywhere: with 2 torch threads in the main process, num_workers=0
    used to blur with a 2-thread FFT and differ from the workers' data by ~1e-7."""
    from engine.datasets import build_train_loader
    from utils.config_normalise import normalise

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batches = {}
        for workers in (0, 2):
            cfg = _config(tmp_path, data)
            cfg["train_dataset"].update(num_workers=workers, kernel_path="", degradation={}, batch_size=1, patch_size=32)
            normalise(cfg)      # the degradation spec again from the flags (random kernels now)
            loader, sampler, _ = build_train_loader(cfg, 1, 0, 1)
            sampler.set_epoch(0)
            batches[workers] = list(loader)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(batches[0], batches[2], strict=True):
        for key in ("x", "y", "k", "sigma", "noise"):
            assert torch.equal(a[key], b[key]), key


# 9 --------------------------------------------------------------------------- which errors are one line
class _BuggyNet(torch.nn.Module):
    input_keys = ("y", "k")
    default_loss = None

    def forward(self, y, k):
        raise ValueError("a bug inside forward")


@pytest.fixture
def buggy_model():
    from models.registry import MODELS

    MODELS.register("FaultsBuggyNet", _BuggyNet)
    yield "FaultsBuggyNet"
    MODELS.unregister("FaultsBuggyNet")


def test_only_config_and_data_errors_are_one_line(tmp_path, data, buggy_model, capsys):
    evaluate_args = ["--set", "test_dataset.max_images=1", "--set", "test_dataset.kernel_indices=[0]",
                     "--set", "test_dataset.is_test_nonuniform=false", "--set", "test_dataset.save_figures=false",
                     "--set", f"test_dataset.result_save_file={tmp_path / 'results'}", "--set", "model.options={}"]
    with pytest.raises(ValueError, match="a bug inside forward"):           # a bug keeps its traceback
        deblurring.main(evaluate_args + ["--set", f"model.model_select={buggy_model}"])
    capsys.readouterr()
    bad_kernels = tmp_path / "bad.npy"
    np.save(bad_kernels, np.ones((2, 3, 4, 5)))
    for sets, expected in [
        (["model.model_select=NRL_GDN", "model.options={\"num_steps\": 0}"],
         "error: model.options: num_steps must be >= 1, got 0"),
        (["model.model_select=wiener", f"test_dataset.kernel_path={bad_kernels}"],
         f"error: test_dataset.kernel_path: {bad_kernels}: array has shape (2, 3, 4, 5); expected h×w or N×h×w"),
    ]:
        args = evaluate_args + [a for s in sets for a in ("--set", s)]
        assert deblurring.main(args) == 2
        assert capsys.readouterr().err.strip() == expected
    corrupt = tmp_path / "imgs"
    corrupt.mkdir()
    (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    args = evaluate_args + ["--set", "model.model_select=wiener", "--set", f"test_dataset.root_path={tmp_path}",
                            "--set", "test_dataset.test_data=imgs", "--set", f"test_dataset.kernel_path={data[1]}"]
    assert deblurring.main(args) == 2
    assert _last_error_line(capsys.readouterr().err).startswith(f"error: cannot read image {corrupt / 'broken.png'}")
