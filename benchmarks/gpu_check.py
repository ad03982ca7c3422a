"""First-GPU acceptance run: does everything work on CUDA, and how fast / how big is it?

On the GPU machine (one run, ~5-8 minutes, no downloads, no ../shared; only the repository's own data):

    python benchmarks/gpu_check.py --out "$OUT/gpu_check"

On a CPU, for development (~3 minutes):

    python benchmarks/gpu_check.py --device cpu --quick

Steps (each guarded: a failure is recorded and the next step still runs; once --budget-seconds have
passed the remaining steps are reported as SKIPPED):
  info        torch/CUDA/cuDNN versions, GPU name, memory, bf16 support, TF32 flags
  pytest      tests/test_device.py (every test there is parametrised over cpu and, when present, cuda)
  equivalence shipped compact NRL-GDN (256×256 image, 25×25 kernel): CPU vs device within 1e-4 (TF32 off),
              also TF32 on and bf16/fp16 autocast PSNRs; DSD_light and VIRNet_denoise_syn (random weights,
              64×64) CPU vs device within 1e-4
  evaluate    `python deblurring.py` default evaluation on the device, results under <out>/eval
  train_<amp> the engine trains the compact NRL-GDN 20 steps (amp none/bf16/fp16): finite losses,
              interrupted at step 10 and resumed, exported weights load on the CPU
  train_other DSDNet+ and VIRNet tiny configs through the engine with bf16 and fp16
  ddp         a one-process torchrun DDP training (NCCL on CUDA)
  forward     full-size NRL_GDN forward (256×256, 6 steps, early_stop=False): fp32 (TF32 on/off),
              bf16 and fp16 autocast, channels_last on/off
  memory      training-step peak memory with grad_checkpointing on/off (small and paper-size batches)
Writes <out>/gpu_check.json (updated after every step) and prints a PASS/FAIL/SKIPPED table; the exit
status is 1 when a step FAILED.
"""
from __future__ import annotations

import argparse
import gc
import glob
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COMPACT = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")
TRAIN_CONFIG = os.path.join(ROOT, "configs", "traincolor.json")
TEST_CONFIG = os.path.join(ROOT, "configs", "test_simulated.json")
FULL_NRLGDN = dict(r_channels=(64, 128, 256, 512), r_blocks=4, hd_channels=64)
TINY_OPTIONS = 'model.options={"r_channels": [4, 8, 8, 8], "r_blocks": 1, "hd_channels": 4, "num_steps": 2}'


class Failed(Exception):
    """A check that ran but did not meet its criterion (the details still go to the report)."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


class Run:
    """The steps' shared state: arguments, device, deadline, and the report written after each step."""

    def __init__(self, args):
        self.args, self.quick = args, args.quick
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.out = os.path.abspath(args.out)
        self.started = time.time()
        self.deadline = self.started + args.budget_seconds
        self.steps = []
        os.makedirs(self.out, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def step(self, name: str, fn):
        record = {"name": name, "status": "SKIPPED", "seconds": 0.0, "details": {}, "error": ""}
        if self.left() <= 0:
            record["error"] = f"budget of {self.args.budget_seconds:.0f} s spent"
        else:
            t0 = time.time()
            try:
                record["details"] = fn(self) or {}
                record["status"] = "PASS"
            except Failed as err:
                record.update(status="FAIL", error=str(err), details=err.details)
            except Exception as err:  # noqa: BLE001 (one failing step must not hide the others)
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                record.update(status="FAIL", error=f"{type(err).__name__}: {first}",
                              traceback=traceback.format_exc()[-3000:])
            finally:
                record["seconds"] = round(time.time() - t0, 1)
                gc.collect()
                if self.cuda:
                    torch.cuda.empty_cache()
        self.steps.append(record)
        print(f"[{record['status']}] {name} ({record['seconds']} s){': ' + record['error'] if record['error'] else ''}",
              flush=True)
        self.save()

    def save(self):
        payload = {"args": vars(self.args), "device": str(self.device), "total_seconds": round(time.time() - self.started, 1),
                   "steps": self.steps}
        with open(os.path.join(self.out, "gpu_check.json"), "w") as f:
            json.dump(payload, f, indent=1, default=str)

    def subprocess(self, cmd, log_name: str, env=None, limit: float | None = None):
        """Run `cmd` in the repository root with a timeout from the budget; returns (rc, output tail)."""
        timeout = max(30.0, min(self.left(), limit or 1e9))
        full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
        log = os.path.join(self.out, log_name)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as err:
            text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            text, rc = text + f"\n(timed out after {timeout:.0f} s)", 124
        with open(log, "w") as f:
            f.write(text)
        return rc, text[-1500:]


# ------------------------------------------------------------------------------------------- data
def blurred_image(size: int, sigma: float = 2.55 / 255, seed: int = 0):
    """(x, y, k): an embedded skimage test image crop, circularly blurred with default kernel 0, AWGN."""
    from data.default_data import default_kernels, default_test_images
    from utils.operators import conv_circular

    image = next(iter(default_test_images().values()))
    x = image[:, :size, :size][None].float()
    k = torch.as_tensor(default_kernels()[0], dtype=torch.float32)[None, None]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x, conv_circular(x, k) + sigma * noise, k


def psnr(a, b) -> float:
    mse = torch.mean((a.double().clamp(0, 1) - b.double()) ** 2).item()
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def tf32(on: bool):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def autocast(run, dtype):
    return torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None)


# ------------------------------------------------------------------------------------------ steps
def step_info(run):
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpus": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
            "tf32_conv_default": torch.backends.cudnn.allow_tf32,
            "tf32_matmul_default": torch.backends.cuda.matmul.allow_tf32}
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 (a copy without .git)
        info["git"] = ""
    if run.cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(run.device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported(),
                    device_count=torch.cuda.device_count())
        torch.ones(1, device=run.device).sum().item()   # a first kernel: the context works
    print("  " + json.dumps(info), flush=True)
    return info


def step_pytest(run):
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests/test_device.py"]
    rc, tail = run.subprocess(cmd, "pytest_device.log", limit=240)
    summary = next((line for line in reversed(tail.splitlines()) if " passed" in line or " failed" in line
                    or " error" in line), tail.splitlines()[-1] if tail else "")
    details = {"rc": rc, "summary": summary.strip(), "log": "pytest_device.log"}
    if rc != 0:
        raise Failed(f"pytest exit {rc}: {summary.strip()}", dict(details, tail=tail))
    return details


def _restore(model, y, k=None):
    with torch.no_grad():
        out = model(y) if k is None else model(y, k)
    return (out["x"] if isinstance(out, dict) else out).float()


def step_equivalence(run):
    from models import build_model, load_pretrained

    size = 128 if run.quick else 256
    options = torch.load(COMPACT, map_location="cpu", weights_only=True)["model_options"]
    model = load_pretrained(build_model("NRL_GDN", **options), COMPACT).eval()
    x, y, k = blurred_image(size)
    ref = _restore(model, y, k)
    model.to(run.device)
    yd, kd = y.to(run.device), k.to(run.device)
    tf32_default = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    details = {"size": size, "psnr_input": round(psnr(y, x), 3), "psnr_cpu": round(psnr(ref, x), 4)}
    try:
        tf32(False)
        out = _restore(model, yd, kd).cpu()
        details["max_abs_diff_fp32"] = float((out - ref).abs().max())
        details["psnr_device_fp32"] = round(psnr(out, x), 4)
        tf32(True)
        details["max_abs_diff_tf32"] = float((_restore(model, yd, kd).cpu() - ref).abs().max())
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))[:2 if run.cuda else 1]:
            with autocast(run, dtype):
                details[f"psnr_autocast_{name}"] = round(psnr(_restore(model, yd, kd).cpu(), x), 4)
        tf32(False)
        g = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 4)
        gauss = (torch.outer(g, g) / torch.outer(g, g).sum())[None, None]      # 7×7, σ = √2
        for name, opts, kk in (
                ("DSD_light", {"n_iter": 2, "nf_p": 4, "nf_d": 4} if run.quick else {}, gauss),
                ("VIRNet_denoise_syn", {"n_feat": (8, 8, 8), "dep_S": 3} if run.quick else {}, None)):
            torch.manual_seed(0)
            net = build_model(name, **opts).eval()
            small = y[..., :64, :64].contiguous()
            ref_small = _restore(net, small, kk)
            got = _restore(net.to(run.device), small.to(run.device), None if kk is None else kk.to(run.device)).cpu()
            details[f"max_abs_diff_{name}"] = float((got - ref_small).abs().max())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32_default
    bad = {key: v for key, v in details.items() if key.startswith("max_abs_diff") and key != "max_abs_diff_tf32"
           and not v < 1e-4}
    if bad:
        raise Failed(f"device output differs from the CPU by more than 1e-4: {bad}", details)
    return details


def step_evaluate(run):
    out_dir = os.path.join(run.out, "eval")
    cmd = [sys.executable, "deblurring.py", "--set", f"test_dataset.result_save_file={json.dumps(out_dir)}",
           "--set", "test_dataset.run_name=default"]
    if run.cuda:
        cmd += ["--set", f"train_options.device_ids=[{run.device.index or 0}]"]
    else:
        cmd += ["--set", "train_options.disable_cuda=true"]
    if run.quick:
        cmd += ["--set", "test_dataset.max_images=1", "--set", "test_dataset.kernel_indices=[0]"]
    t0 = time.time()
    rc, tail = run.subprocess(cmd, "evaluate.log")
    details = {"rc": rc, "seconds": round(time.time() - t0, 1), "log": "evaluate.log"}
    path = os.path.join(out_dir, "default", "results.json")
    if rc != 0 or not os.path.isfile(path):
        raise Failed(f"deblurring.py exit {rc}" + ("" if os.path.isfile(path) else ", no results.json"),
                     dict(details, tail=tail))
    results = json.load(open(path))
    details["notes"] = results.get("notes", [])
    details["psnr_all"] = {protocol: {m: round(cells["all"]["psnr"], 3) for m, cells in table.items() if "all" in cells}
                           for protocol, table in results["summary"].items()}
    on = str(run.device.type)
    if not any(f"on {on}" in note for note in details["notes"]):
        raise Failed(f"the evaluation did not report running on {on}", details)
    return details


def _train_cfg(run, folder, amp, total_iters, extra=(), train_config=TRAIN_CONFIG):
    from utils.config import load_config

    overrides = ["train_dataset.is_train=true", f"train_options.total_iters={total_iters}",
                 f"train_options.amp={amp}", f"train_options.checkpoint_dir={json.dumps(folder)}",
                 f"model.model_save_file={json.dumps(os.path.join(folder, 'weights'))}", "train_options.tensorboard=false",
                 "train_options.log_every=1", f"train_options.disable_cuda={'false' if run.cuda else 'true'}",
                 f"train_options.device_ids=[{run.device.index or 0}]", "model.init_from=\"\"",
                 "model.pretrained=\"\""]
    if run.quick:
        overrides += ["train_dataset.patch_size=48", "train_dataset.batch_size=2", "train_dataset.num_workers=0",
                      "val_dataset.max_images=1", "val_dataset.patch_size=64"]
    return load_config(train_config, None, overrides + list(extra))


def _interrupt_at(step_to_stop: int):
    def callback(step, loss):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)   # the engine saves last.pth at the step boundary
    return callback


def step_train(amp):
    def fn(run):
        from engine.train import train
        from models import build_model, load_pretrained

        total = 4 if run.quick else 20
        folder = os.path.join(run.out, "train", amp)
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.time()
        full = train(_train_cfg(run, os.path.join(folder, "full"), amp, total))
        seconds_full = time.time() - t0
        if full.status != "completed":    # the engine caught SIGINT/SIGTERM meant for this script: stop here
            run.deadline = 0
            raise Failed("training stopped by a signal; remaining steps skipped", {"status": full.status})
        first = train(_train_cfg(run, os.path.join(folder, "resumed"), amp, total), step_callback=_interrupt_at(total // 2))
        second = train(_train_cfg(run, os.path.join(folder, "resumed"), amp, total, ["train_options.resume=true"]))
        losses_full = [h["loss"] for h in full.history]
        losses_resumed = [h["loss"] for h in first.history + second.history]
        diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses_full, losses_resumed)]
        # the exported weights (saved from device tensors) load on the CPU
        state = torch.load(full.exported, map_location="cpu", weights_only=True)
        load_pretrained(build_model(state["model_select"], **state["model_options"]), full.exported)
        details = {"steps": len(losses_full), "seconds": round(seconds_full, 1), "loss_first": losses_full[0],
                   "loss_last": losses_full[-1], "interrupted_status": first.status,
                   "resumed_steps": [h["step"] for h in second.history][:1] + [h["step"] for h in second.history][-1:],
                   "resume_max_rel_loss_diff": max(diffs) if diffs else None,
                   "psnr_val": [h.get("psnr_val") for h in _history(full.run_dir) if "psnr_val" in h][-1:]}
        problems = []
        if len(losses_full) != total or not all(math.isfinite(v) for v in losses_full + losses_resumed):
            problems.append(f"losses {losses_full}")
        if first.status != "interrupted" or [h["step"] for h in second.history] != list(range(total // 2 + 1, total + 1)):
            problems.append("the interrupted run did not resume at the next step")
        if not run.cuda and diffs and max(diffs) > 1e-6:
            problems.append(f"resumed losses differ from the uninterrupted run (rel {max(diffs):.2e})")
        for path in glob.glob(os.path.join(folder, "**", "*.pth"), recursive=True):
            os.remove(path)      # keep <out> small; the logs stay
        if problems:
            raise Failed("; ".join(problems), details)
        return details
    return fn


def _history(run_dir):
    path = os.path.join(run_dir, "history.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.isfile(path) else []


def step_train_other(run):
    from engine.train import train

    details = {}
    amps = ["none"] if not run.cuda else ["bf16", "fp16"]
    for config in ("dsdnet_tiny.json", "virnet_denoise_tiny.json"):
        for amp in amps:
            folder = os.path.join(run.out, "train_other", config.split(".")[0], amp)
            shutil.rmtree(folder, ignore_errors=True)
            cfg = _train_cfg(run, folder, amp, 4, ["train_dataset.num_workers=0"],
                             train_config=os.path.join(ROOT, "configs", config))
            result = train(cfg)
            losses = [h["loss"] for h in result.history]
            details[f"{config.split('.')[0]}_{amp}"] = losses
            if not losses or not all(math.isfinite(v) for v in losses):
                raise Failed(f"{config} amp={amp}: losses {losses}", details)
            for path in glob.glob(os.path.join(folder, "**", "*.pth"), recursive=True):
                os.remove(path)
    return details


def step_ddp(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = os.path.join(run.out, "ddp")
    shutil.rmtree(folder, ignore_errors=True)
    sets = ["train_dataset.is_train=true", "train_options.total_iters=4", "train_options.tensorboard=false",
            "train_options.log_every=1",
            f"train_options.checkpoint_dir={json.dumps(folder)}", "train_options.epoch_val=0",
            f"model.model_save_file={json.dumps(os.path.join(folder, 'weights'))}", "train_dataset.num_workers=0",
            f"train_options.amp={'bf16' if run.cuda else 'none'}",
            f"train_options.disable_cuda={'false' if run.cuda else 'true'}"]
    if run.quick:
        sets += ["train_dataset.patch_size=48", "train_dataset.batch_size=2", TINY_OPTIONS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1",
           f"--master_port={port}", "deblurring.py"] + [a for s in sets for a in ("--set", s)]
    rc, tail = run.subprocess(cmd, "ddp.log", limit=180)
    history = _history(os.path.join(folder, "compact_nrlgdn"))
    losses = [h["loss"] for h in history if "loss" in h]
    details = {"rc": rc, "losses": losses, "log": "ddp.log"}
    if rc != 0 or len(losses) != 4 or not all(math.isfinite(v) for v in losses):
        raise Failed(f"torchrun exit {rc}, losses {losses}", dict(details, tail=tail))
    for path in glob.glob(os.path.join(folder, "**", "*.pth"), recursive=True):
        os.remove(path)
    return details


def _timed(run, fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    run.sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    run.sync()
    return (time.perf_counter() - t0) / reps


def step_forward(run):
    from models import build_model

    size, options = (64, dict(r_channels=(16, 32, 64, 128), r_blocks=3, hd_channels=16)) if run.quick else (256, FULL_NRLGDN)
    warmup, reps = (1, 2) if run.quick else (3, 10)
    x, y, k = blurred_image(size)
    y, k = y.to(run.device), k.to(run.device)
    details = {"size": size, "steps": 6, "options": {key: list(v) if isinstance(v, tuple) else v for key, v in options.items()}}
    tf32_default = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    modes = [("fp32", None, True), ("bf16", torch.bfloat16, True)]
    if run.cuda:
        modes = [("fp32_tf32", None, True), ("fp32_strict", None, False), ("bf16", torch.bfloat16, True),
                 ("fp16", torch.float16, True)]
    try:
        for layout in (True, False):
            torch.manual_seed(0)
            model = build_model("NRL_GDN", num_steps=6, early_stop=False, channels_last=layout, **options)
            model = model.to(run.device).eval()
            for name, dtype, allow_tf32 in modes:
                if run.left() <= 0:
                    details["budget"] = "spent: remaining modes skipped"
                    return details
                tf32(allow_tf32)

                def forward():
                    with torch.no_grad(), autocast(run, dtype):
                        model(y, k)
                ms = _timed(run, forward, warmup, reps) * 1000
                details[f"{name}_{'channels_last' if layout else 'nchw'}_ms"] = round(ms, 2)
                print(f"  forward {name:12s} {'channels_last' if layout else 'nchw':13s} {ms:9.2f} ms", flush=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32_default
    return details


def _train_step_memory(run, options, batch, size, steps, checkpointing, dtype):
    """(seconds, peak GiB above the weights) of one Adam step of NRL_GDN, or an 'OOM' note."""
    from models import build_model

    torch.manual_seed(0)
    model = build_model("NRL_GDN", num_steps=steps, early_stop=False, grad_checkpointing=checkpointing, **options)
    model = model.to(run.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size, device=run.device)
    k = torch.rand(batch, 1, 25, 25, device=run.device)
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    y = x + 0.01 * torch.randn_like(x)

    def one_step():
        opt.zero_grad(set_to_none=True)
        with autocast(run, dtype):
            out = model(y, k)
        torch.nn.functional.l1_loss(out.float(), x).backward()
        opt.step()

    one_step()                  # Adam state exists from here on: the baseline holds weights + moments
    run.sync()
    base = torch.cuda.memory_allocated(run.device) if run.cuda else 0
    if run.cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    seconds = _timed(run, one_step, 0, 1)
    peak = (torch.cuda.max_memory_allocated(run.device) - base) / 2**30 if run.cuda else None
    return seconds, peak


def step_memory(run):
    small = dict(r_channels=(16, 32, 64, 128), r_blocks=3, hd_channels=16)
    cases = [("compact_b2_48px_6steps", small, 2, 48, 6)] if run.quick else [("compact_b4_96px_6steps", small, 4, 96, 6)]
    if not run.quick:
        cases += [("full_b2_128px_6steps", FULL_NRLGDN, 2, 128, 6), ("paper_b8_256px_40steps", FULL_NRLGDN, 8, 256, 40)]
    details = {}
    for name, options, batch, size, steps in cases:
        for checkpointing in (False, True):
            for amp, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                if run.quick and amp == "bf16":
                    continue
                label = f"{name}_{'ckpt' if checkpointing else 'nockpt'}_{amp}"
                if run.left() <= 0:
                    details[label] = "SKIPPED (budget)"
                    continue
                try:
                    seconds, peak = _train_step_memory(run, options, batch, size, steps, checkpointing, dtype)
                    details[label] = {"step_s": round(seconds, 3), "peak_gib": None if peak is None else round(peak, 2)}
                except RuntimeError as err:    # torch.OutOfMemoryError, or a cuDNN allocation failure
                    if "out of memory" not in str(err).lower() and "alloc" not in str(err).lower():
                        raise
                    details[label] = "OOM"
                finally:
                    gc.collect()
                    if run.cuda:
                        torch.cuda.empty_cache()
                print(f"  {label:45s} {details[label]}", flush=True)
    if not run.cuda:
        details["note"] = "peak memory is measured on CUDA only"
    return details


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", default=os.path.join("results", "gpu_check"), help="report folder (default %(default)s)")
    parser.add_argument("--budget-seconds", type=float, default=480.0,
                        help="wall-clock budget; steps starting later are SKIPPED (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps (CPU development runs)")
    parser.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads, also for the subprocesses (default: 1 with --device cpu, else torch's)")
    args = parser.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1    # a shared CPU: two spinning OpenMP threads ran ~100× slower than one
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    run = Run(args)
    steps = [("info", step_info), ("equivalence", step_equivalence), ("pytest", step_pytest),
             ("evaluate", step_evaluate), ("train_none", step_train("none")), ("train_bf16", step_train("bf16")),
             ("train_fp16", step_train("fp16")), ("forward", step_forward), ("memory", step_memory),
             ("train_other", step_train_other), ("ddp", step_ddp)]
    if not run.cuda:    # amp is ignored on the CPU: one training run covers the path
        steps = [s for s in steps if s[0] not in ("train_bf16", "train_fp16")]
    only = {s for s in args.only.split(",") if s}
    unknown = only - {name for name, _ in steps}
    if unknown:
        parser.error(f"unknown step(s) {sorted(unknown)}; steps: {', '.join(name for name, _ in steps)}")
    for name, fn in steps:
        if not only or name in only:
            run.step(name, fn)
    total = time.time() - run.started
    print(f"\n{'step':14s} {'status':8s} {'s':>6s}  note")
    for r in run.steps:
        print(f"{r['name']:14s} {r['status']:8s} {r['seconds']:6.1f}  {r['error'][:100]}")
    print(f"total {total:.0f} s on {run.device}; report {os.path.join(run.out, 'gpu_check.json')}")
    run.save()
    return 1 if any(r["status"] == "FAIL" for r in run.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
