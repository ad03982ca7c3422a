"""The one GPU check: does training and inference work on CUDA, and how fast is it?

On a machine with one NVIDIA GPU (no downloads; only the repository's own data; sized for <= 8 minutes):

    python benchmarks/gpu_check.py                      # writes results/gpu_check/gpu_check.json
    python benchmarks/gpu_check.py --dry-run            # the same logic, tiny, on the CPU (CI runs this)

Sections (each guarded: a failure is recorded and the next section still runs; sections that would start
after --budget-seconds are reported as SKIPPED):
  precision  the shipped compact NRL-GDN on a 256×256 image: device fp32 output vs the CPU's (max abs
             difference, TF32 off), bf16 (and fp16) autocast output vs fp32 (PSNR difference)
  curves     the engine trains a small NRL-GDN a few hundred steps in fp32, bf16 and fp16 (GradScaler)
             and compares the loss curves; fp32 is also interrupted halfway and resumed; the exported
             weights hold CPU tensors
  parallel   torchrun --nproc_per_node=1 DDP training (NCCL), a DataParallel(device_ids=[0]) bf16
             training step, and the autocast dtype a DataParallel replica thread sees
  speed      NRL_GDN at 256×256 (6 fixed steps): forward images/s and training steps/s in fp32, bf16 and
             fp32 without channels_last, against the plain port of the published code
             (benchmarks/bench_nrlgdn.py); peak training memory with and without grad_checkpointing
  device_tests  pytest tests/test_device.py (parametrised over cpu and cuda)
It prints one table (section, metric, value, criterion, PASS/FAIL/info) and writes it, with details, to
<out>/gpu_check.json; the exit status is 1 when a check FAILED.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COMPACT = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")
TRAIN_CONFIG = os.path.join(ROOT, "configs", "traincolor.json")
FULL_NRLGDN = dict(r_channels=(64, 128, 256, 512), r_blocks=4, hd_channels=64)
TINY_NRLGDN = dict(r_channels=(4, 8, 8, 8), r_blocks=1, hd_channels=4)
TINY_OPTIONS = 'model.options={"r_channels": [4, 8, 8, 8], "r_blocks": 1, "hd_channels": 4, "num_steps": 2}'


class Run:
    """Shared state of the sections: arguments, sizes, device, deadline, and the table being built."""

    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.device = torch.device("cpu" if self.dry else args.device)
        self.cuda = self.device.type == "cuda"
        self.out = os.path.abspath(args.out)
        self.started = time.time()
        self.deadline = self.started + args.budget_seconds
        self.sections, self.rows = [], []
        os.makedirs(self.out, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.time()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def row(self, section: str, metric: str, value, criterion: str = "", ok=None):
        """One line of the table; `ok` None is information, True/False a check."""
        if isinstance(value, float):
            value = float(f"{value:.4g}")
        status = "info" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append({"section": section, "metric": metric, "value": value, "criterion": criterion,
                          "status": status})

    def section(self, name: str, fn):
        record = {"name": name, "status": "SKIPPED", "seconds": 0.0, "details": {}, "error": ""}
        if self.left() <= 0:
            record["error"] = f"budget of {self.args.budget_seconds:.0f} s spent"
        else:
            t0, before = time.time(), len(self.rows)
            try:
                record["details"] = fn(self) or {}
                failed = [r["metric"] for r in self.rows[before:] if r["status"] == "FAIL"]
                record["status"] = "FAIL" if failed else "PASS"
                record["error"] = f"failed: {', '.join(failed)}" if failed else ""
            except Exception as err:  # noqa: BLE001 (one failing section must not hide the others)
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                record.update(status="FAIL", error=f"{type(err).__name__}: {first}",
                              traceback=traceback.format_exc()[-3000:])
                self.row(name, "error", record["error"][:80], "runs", False)
            finally:
                record["seconds"] = round(time.time() - t0, 1)
                gc.collect()
                if self.cuda:
                    torch.cuda.empty_cache()
        if record["status"] == "SKIPPED":
            self.row(name, "skipped", record["error"])
        self.sections.append(record)
        print(f"[{record['status']}] {name} ({record['seconds']} s){': ' + record['error'] if record['error'] else ''}",
              flush=True)
        self.save()

    def save(self):
        payload = {"args": vars(self.args), "device": str(self.device), "total_seconds": round(time.time() - self.started, 1),
                   "table": self.rows, "sections": self.sections}
        with open(os.path.join(self.out, "gpu_check.json"), "w") as f:
            json.dump(payload, f, indent=1, default=str)

    def subprocess(self, cmd, log_name: str, limit: float):
        """Run `cmd` in the repository root with a timeout from the budget; returns (rc, output tail)."""
        timeout = max(30.0, min(self.left(), limit))
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            text, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as err:
            text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            text, rc = text + f"\n(timed out after {timeout:.0f} s)", 124
        with open(os.path.join(self.out, log_name), "w") as f:
            f.write(text)
        return rc, text[-1500:]


# ------------------------------------------------------------------------------------------- helpers
def blurred_image(size: int, sigma: float = 2.55 / 255, seed: int = 0):
    """(x, y, k): an embedded test image crop, circularly blurred with default kernel 0, plus AWGN."""
    from data.default_data import default_kernels, default_test_images
    from utils.operators import conv_circular

    image = next(iter(default_test_images().values()))
    x = image[:, :size, :size][None].float()
    k = torch.as_tensor(default_kernels()[0], dtype=torch.float32)[None, None]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x, conv_circular(x, k) + sigma * noise, k


def psnr(a, b) -> float:
    """The project's PSNR (utils.metrics) of the first image of two N×C×H×W batches, `a` clamped to [0, 1]."""
    from utils.metrics import psnr as image_psnr

    return image_psnr(a[0].float().clamp(0, 1).cpu(), b[0].float().cpu())


def tf32(on: bool):
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def autocast(run, dtype):
    return torch.autocast(run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def low_precision(run):
    """(name, dtype) of the autocast modes to check: bf16 everywhere, fp16 on CUDA."""
    return [("bf16", torch.bfloat16)] + ([("fp16", torch.float16)] if run.cuda else [])


def _timed(run, fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    run.sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    run.sync()
    return (time.perf_counter() - t0) / reps


def _restore(model, y, k):
    with torch.inference_mode():
        return model(y, k).float()


# ----------------------------------------------------------------------------------------- precision
def section_precision(run):
    """(d): fp32 on the device vs the CPU (TF32 off), bf16/fp16 autocast vs fp32."""
    from models import build_model, load_pretrained

    size = 48 if run.dry else 256
    options = torch.load(COMPACT, map_location="cpu", weights_only=True)["model_options"]
    model = load_pretrained(build_model("NRL_GDN", **options), COMPACT).eval()
    x, y, k = blurred_image(size)
    ref = _restore(model, y, k)
    model.to(run.device)
    yd, kd = y.to(run.device), k.to(run.device)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        tf32(False)
        fp32 = _restore(model, yd, kd).cpu()
        diff = float((fp32 - ref).abs().max())
        run.row("precision", f"fp32 {run.device.type} vs cpu, max abs diff ({size}², TF32 off)", diff, "< 1e-4", diff < 1e-4)
        details = {"size": size, "psnr_fp32": psnr(fp32, x), "max_abs_diff_fp32": diff}
        for name, dtype in low_precision(run):
            with autocast(run, dtype):
                low = _restore(model, yd, kd).cpu()
            delta = psnr(low, x) - details["psnr_fp32"]
            details[f"psnr_{name}"] = psnr(low, x)
            run.row("precision", f"{name} − fp32 PSNR (dB, vs ground truth)", delta, "> −0.5 dB", delta > -0.5)
            run.row("precision", f"{name} vs fp32 output PSNR (dB)", psnr(low, fp32))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    return details


# -------------------------------------------------------------------------------------------- curves
def _train_cfg(run, folder, amp, total_iters, extra=()):
    from utils.config import load_config

    overrides = ["train_dataset.is_train=true", f"train_options.total_iters={total_iters}",
                 f"train_options.amp={amp}", f"train_options.checkpoint_dir={json.dumps(folder)}",
                 f"model.model_save_file={json.dumps(os.path.join(folder, 'weights'))}", "train_options.tensorboard=false",
                 "train_options.log_every=10", f"train_options.disable_cuda={'false' if run.cuda else 'true'}",
                 f"train_options.device_ids=[{run.device.index or 0}]", "model.pretrained=\"\"",
                 "train_options.epoch_val=0", f"train_options.save_every_steps={total_iters}"]
    if run.dry:
        overrides += ["train_dataset.patch_size=32", "train_dataset.batch_size=2", "train_dataset.num_workers=0",
                      TINY_OPTIONS]
    return load_config(TRAIN_CONFIG, None, overrides + list(extra))


def _interrupt_at(step_to_stop: int):
    def callback(step, loss):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)   # the engine saves last.pth at the step boundary
    return callback


def _smoothed_end(losses, fraction=0.2) -> float:
    tail = losses[-max(1, int(len(losses) * fraction)):]
    return sum(tail) / len(tail)


def section_curves(run):
    """(a): loss curves of fp32, bf16 and fp16 (GradScaler) engine training, plus an exact fp32 resume."""
    from engine.train import train

    steps = 6 if run.dry else 300
    folder = os.path.join(run.out, "curves")
    shutil.rmtree(folder, ignore_errors=True)
    curves = {}
    for amp in ("none", "bf16", "fp16"):
        result = train(_train_cfg(run, os.path.join(folder, amp), amp, steps))
        if result.status != "completed":     # the engine caught a signal meant for this script: stop here
            run.deadline = 0
            raise RuntimeError("training stopped by a signal; remaining sections skipped")
        curves[amp] = [h["loss"] for h in result.history]
        finite = len(curves[amp]) == steps and all(math.isfinite(v) for v in curves[amp])
        run.row("curves", f"{amp}: {steps} steps, all losses finite", finite, "true", finite)
        if amp == "none":
            exported = torch.load(result.exported, weights_only=True)     # no map_location: as saved
            on_cpu = all(t.device.type == "cpu" for t in exported["model"].values())
            run.row("curves", "exported weights are CPU tensors", on_cpu, "true", on_cpu)
    base = _smoothed_end(curves["none"])
    for amp in ("bf16", "fp16"):
        rel = abs(_smoothed_end(curves[amp]) - base) / base
        run.row("curves", f"{amp} vs fp32: mean loss of the last 20 % of steps, rel. diff", rel, "< 0.1", rel < 0.1)
    half = steps // 2
    first = train(_train_cfg(run, os.path.join(folder, "resumed"), "none", steps), step_callback=_interrupt_at(half))
    second = train(_train_cfg(run, os.path.join(folder, "resumed"), "none", steps, ["train_options.resume=true"]))
    resumed = [h["loss"] for h in first.history + second.history]
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(curves["none"], resumed))
    exact = first.status == "interrupted" and len(resumed) == steps
    limit = 0.0 if not run.cuda else 0.05      # cuDNN picks algorithms per run and some are not deterministic
    run.row("curves", f"fp32 interrupted at {half} and resumed: max rel. loss diff", diff, f"<= {limit:g}",
            exact and diff <= limit)
    for path in [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".pth")]:
        os.remove(path)       # keep <out> small
    return {"curves": curves, "resumed": resumed}


# ------------------------------------------------------------------------------------------ parallel
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp(run) -> None:
    folder = os.path.join(run.out, "ddp")
    shutil.rmtree(folder, ignore_errors=True)
    sets = ["train_dataset.is_train=true", "train_options.total_iters=4", "train_options.tensorboard=false",
            "train_options.log_every=1", f"train_options.checkpoint_dir={json.dumps(folder)}",
            "train_options.epoch_val=0", f"model.model_save_file={json.dumps(os.path.join(folder, 'weights'))}",
            "train_dataset.num_workers=0", f"train_options.amp={'bf16' if run.cuda else 'none'}",
            f"train_options.disable_cuda={'false' if run.cuda else 'true'}", "model.pretrained=\"\""]
    if run.dry:
        sets += ["train_dataset.patch_size=32", "train_dataset.batch_size=2", TINY_OPTIONS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "deblurring.py"] + [a for s in sets for a in ("--set", s)]
    rc, tail = run.subprocess(cmd, "ddp.log", limit=180)
    path = os.path.join(folder, "compact_nrlgdn", "history.jsonl")
    losses = [json.loads(line)["loss"] for line in open(path)] if os.path.isfile(path) else []
    backend = "nccl" if run.cuda else "gloo"
    ddp = f"processes 1 (DDP, {backend})" in tail or f"processes 1 (DDP, {backend})" in _text(run, "ddp.log")
    ok = rc == 0 and ddp and len(losses) == 4 and all(math.isfinite(v) for v in losses)
    run.row("parallel", f"torchrun --nproc_per_node=1: DDP on {backend}, exit code, 4 finite losses",
            f"{'DDP' if ddp else 'no DDP'}, rc {rc}, {len(losses)} losses", "DDP, rc 0, 4", ok)
    if not ok:
        print(tail, flush=True)
    shutil.rmtree(os.path.join(folder, "weights"), ignore_errors=True)


def _text(run, name: str) -> str:
    with open(os.path.join(run.out, name)) as f:
        return f.read()


def _replica_dtype(run, wrap: bool):
    """The autocast dtype a DataParallel replica thread sees under bf16 autocast (parallel_apply's threads
    on CUDA; on the CPU a thread that re-enters autocast as parallel_apply does)."""
    from engine.distributed import keep_autocast_dtype

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t):
            seen.append(torch.get_autocast_dtype(run.device.type))
            return t

    x = torch.ones(2, device=run.device)
    with torch.autocast(run.device.type, dtype=torch.bfloat16):
        replicas = keep_autocast_dtype([Probe()], run.device.type) if wrap else [Probe()]
        if run.cuda:
            torch.nn.parallel.parallel_apply(replicas, [(x,)], devices=[run.device.index or 0])
        else:
            enabled = torch.is_autocast_enabled("cpu")

            def work():
                with torch.amp.autocast("cpu", enabled=enabled):
                    replicas[0](x)
            thread = threading.Thread(target=work)
            thread.start()
            thread.join()
    return str(seen[0]).replace("torch.", "")


def _dataparallel_steps(run) -> list:
    from engine.distributed import AutocastDataParallel
    from models import build_model

    torch.manual_seed(0)
    model = build_model("NRL_GDN", num_steps=2, **(TINY_NRLGDN if run.dry else {})).to(run.device).train()
    wrapped = AutocastDataParallel(model, device_ids=[run.device.index or 0]) if run.cuda else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y, k = blurred_image(32 if run.dry else 128)
    x, y, k = x.to(run.device), y.to(run.device), k.to(run.device)
    losses = []
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with autocast(run, torch.bfloat16):
            loss = F.l1_loss(wrapped(y, k).float(), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def section_parallel(run):
    """(b): one-process DDP through torchrun, DataParallel(device_ids=[0]) under bf16, replica dtype."""
    _ddp(run)
    losses = _dataparallel_steps(run)
    ok = all(math.isfinite(v) for v in losses)
    run.row("parallel", "DataParallel(device_ids=[0]) bf16: 3 training steps, finite losses", ok, "true", ok)
    plain, kept = _replica_dtype(run, wrap=False), _replica_dtype(run, wrap=True)
    run.row("parallel", "replica thread dtype under bf16 autocast, plain replica", plain)
    run.row("parallel", "replica thread dtype under bf16 autocast, engine's replica", kept, "bfloat16",
            kept == "bfloat16")
    return {"dataparallel_losses": losses}


# --------------------------------------------------------------------------------------------- speed
def section_speed(run):
    """(c): forward images/s and training steps/s vs the plain port; memory with/without checkpointing."""
    from benchmarks.bench_nrlgdn import ReferenceNRLGDN
    from models import build_model

    size, options = (32, TINY_NRLGDN) if run.dry else (256, FULL_NRLGDN)
    warmup, reps, batch = (1, 1, 1) if run.dry else (2, 6, 2)
    x, y, k = blurred_image(size)
    x, y, k = (t.to(run.device).expand(batch, -1, -1, -1).contiguous() for t in (x, y, k))
    variants = {}
    for name, layout in (("fp32", True), ("bf16", True), ("fp32 NCHW", False), ("published port fp32", False)):
        torch.manual_seed(0)
        net = build_model("NRL_GDN", num_steps=6, early_stop=False, channels_last=layout, **options).to(run.device)
        if name.startswith("published"):
            net = ReferenceNRLGDN(copy.deepcopy(net))
        variants[name] = (net, torch.bfloat16 if name == "bf16" else None)
    details = {"size": size, "batch": batch, "tf32_conv": torch.backends.cudnn.allow_tf32}
    for name, (net, dtype) in variants.items():
        if run.left() <= 0:
            break
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)

        def forward():
            with torch.inference_mode(), autocast(run, dtype):
                net.eval()(y, k)

        def train_step():
            opt.zero_grad(set_to_none=True)
            with autocast(run, dtype):
                loss = F.l1_loss(net.train()(y, k).float(), x)
            loss.backward()
            opt.step()
        details[name] = {"forward_images_per_s": batch / _timed(run, forward, warmup, reps),
                         "train_steps_per_s": 1 / _timed(run, train_step, warmup, reps)}
        run.row("speed", f"{name}: forward images/s ({size}², 6 steps)", details[name]["forward_images_per_s"])
        run.row("speed", f"{name}: training steps/s (batch {batch})", details[name]["train_steps_per_s"])
    port = details.get("published port fp32")
    if port and "fp32" in details:
        run.row("speed", "fp32 forward speed-up over the published port",
                details["fp32"]["forward_images_per_s"] / port["forward_images_per_s"])
    if run.cuda:
        details["memory"] = _memory(run, options)
    return details


def _memory(run, options) -> dict:
    """Peak CUDA memory of one training step of the paper's setting (256², 4 images, 40 steps) with and
    without grad_checkpointing."""
    from models import build_model

    out = {}
    for checkpointing in (True, False):
        if run.left() <= 0:
            break
        label = f"{'with' if checkpointing else 'without'} grad_checkpointing"
        try:
            torch.manual_seed(0)
            net = build_model("NRL_GDN", num_steps=40, early_stop=False, grad_checkpointing=checkpointing,
                              **options).to(run.device).train()
            x, y, k = (t.to(run.device).expand(4, -1, -1, -1).contiguous() for t in blurred_image(256))
            torch.cuda.reset_peak_memory_stats(run.device)
            F.l1_loss(net(y, k), x).backward()
            run.sync()
            out[label] = torch.cuda.max_memory_allocated(run.device) / 2**30
        except torch.OutOfMemoryError:
            out[label] = "out of memory"
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        run.row("speed", f"peak GiB, training step 256², 4 images, 40 steps, {label}", out[label])
    return out


# -------------------------------------------------------------------------------------- device tests
def section_device_tests(run):
    if run.dry:
        run.row("device_tests", "pytest tests/test_device.py", "not run in --dry-run (CI runs the suite)")
        return {}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "tests/test_device.py"]
    rc, tail = run.subprocess(cmd, "pytest_device.log", limit=240)
    summary = next((line for line in reversed(tail.splitlines()) if " passed" in line or " failed" in line), "")
    run.row("device_tests", "pytest tests/test_device.py", summary.strip() or f"rc {rc}", "all pass", rc == 0)
    return {"rc": rc, "log": "pytest_device.log"}


def _info(run) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if run.cuda:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")
        props = torch.cuda.get_device_properties(run.device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cuda:N")
    parser.add_argument("--out", default=os.path.join("results", "gpu_check"), help="report folder (default %(default)s)")
    parser.add_argument("--budget-seconds", type=float, default=420.0,
                        help="sections starting later are SKIPPED (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="the same logic with tiny sizes on the CPU")
    parser.add_argument("--only", default="", help="comma-separated section names (default: all)")
    args = parser.parse_args(argv)
    sections = [("precision", section_precision), ("curves", section_curves), ("parallel", section_parallel),
                ("speed", section_speed), ("device_tests", section_device_tests)]
    only = {s for s in args.only.split(",") if s}
    if only - {name for name, _ in sections}:
        parser.error(f"unknown section(s) {sorted(only - {n for n, _ in sections})}; "
                     f"sections: {', '.join(n for n, _ in sections)}")
    run = Run(args)
    info = _info(run)
    print("  " + json.dumps(info), flush=True)
    run.sections.append({"name": "info", "status": "PASS", "details": info})
    for name, fn in sections:
        if not only or name in only:
            run.section(name, fn)
    print(f"\n{'section':13s} {'metric':72s} {'value':>24s}  {'criterion':16s} status")
    for r in run.rows:
        print(f"{r['section']:13s} {r['metric'][:72]:72s} {str(r['value'])[:24]:>24s}  {r['criterion']:16s} {r['status']}")
    print(f"total {time.time() - run.started:.0f} s on {run.device}; table and details in "
          f"{os.path.join(run.out, 'gpu_check.json')}")
    run.save()
    return 1 if any(r["status"] == "FAIL" for r in run.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
