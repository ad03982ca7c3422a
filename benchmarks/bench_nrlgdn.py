"""NRL-GDN speed and memory vs a straightforward port of the published code (same weights, same output).

    python benchmarks/bench_nrlgdn.py                 # forward 256×256 ×6 steps + training memory 128×128
    python benchmarks/bench_nrlgdn.py --quick         # smaller sizes, for a smoke run
    python benchmarks/bench_nrlgdn.py --operators     # direct vs FFT blur timings (fft_is_faster tuning)

"reference" below restates the published model's arithmetic plainly: NCHW tensors, nn.ConvTranspose2d
modules, the blur as conv2d over the batch-transposed tensor with the 180°-rotated kernel (padding ks//2),
the early-stop error kept on the autograd graph, no checkpointing. Both share the Eq. (22) init and the
DRUNet module (run in NCHW for the reference). On a shared CPU timings are noisy, so they are medians of
interleaved repeats (run it on an idle machine); peak memory is the RSS high-water mark above the pre-step baseline,
sampled every 2 ms in a fresh subprocess per configuration (glibc told to return freed memory, so RSS
tracks live tensors); the baseline already holds the weights and Adam state, so the peak is gradients +
activations + temporaries of one training step.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models.nrlgdn import NRL_GDN  # noqa: E402
from utils.operators import conv_adjoint_direct, conv_direct, conv_fft, eq22_init  # noqa: E402


class ReferenceNRLGDN(nn.Module):
    """Plain port: x <- x + D( kbar * H(k * x - y) + R(x) ), x0 = Eq. (22), fixed or early-stopped steps."""

    def __init__(self, model: NRL_GDN):
        super().__init__()
        self.r, self.h, self.d_alpha = model.r, model.h, model.d_alpha
        self.num_steps = model.num_steps
        self.early_stop = model.early_stop_active()

    @staticmethod
    def _blur(x, kernel):
        # one kernel per sample: put the batch on the channel axis and use groups=N
        pad = kernel.shape[-1] // 2
        return F.conv2d(x.transpose(0, 1), kernel, padding=pad, groups=x.shape[0]).transpose(0, 1)

    def forward(self, y, k):
        k_rotated = torch.rot90(k, 2, (-2, -1))
        x = eq22_init(y, k)
        prev_error, prev_rel = None, 0.0
        for t in range(self.num_steps):
            residual = self._blur(x, k_rotated) - y
            data = self._blur(self.h.main(residual), k)
            x = x + self.d_alpha.main(data + self.r(x))
            if self.early_stop:
                error = torch.norm(self._blur(x, k_rotated) - y) / 2
                if t > 0:
                    rel = (abs(error - prev_error) + 1e-10) / (prev_error + 1e-10)
                    if t > 4 and prev_rel - rel < 1e-3:
                        break
                    prev_rel = rel
                prev_error = error
        return x


def make_inputs(size, ksize=25, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(batch, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear")
    k = torch.rand(batch, 1, ksize, ksize, generator=g) ** 4
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    y = conv_direct(x, k) + 0.01 * torch.randn(x.shape, generator=g)
    return x, y, k


def build(steps, checkpointing=False, seed=0):
    torch.manual_seed(seed)
    return NRL_GDN(num_steps=steps, early_stop=False, grad_checkpointing=checkpointing)


def timed(fn, clock=time.perf_counter):
    start = clock()
    out = fn()
    return clock() - start, out


# ---------------------------------------------------------------------------------------------- forward
def bench_forward(size, steps, repeats):
    _, y, k = make_inputs(size)
    ours = build(steps).eval()
    reference = ReferenceNRLGDN(copy.deepcopy(ours).to(memory_format=torch.contiguous_format)).eval()
    wall = {"ours": [], "reference": []}
    cpu = {"ours": [], "reference": []}
    with torch.no_grad():
        out_ours, out_ref = ours(y, k), reference(y, k)  # warm-up (oneDNN primitive creation)
        for _ in range(repeats):
            for name, net in (("reference", reference), ("ours", ours)):
                start_cpu = time.process_time()
                wall[name].append(timed(lambda: net(y, k))[0])
                cpu[name].append(time.process_time() - start_cpu)
    diff = (out_ours - out_ref).abs().max().item()
    print(f"forward NRL_GDN {size}×{size}, {steps} fixed steps, {torch.get_num_threads()} threads, "
          f"median of {repeats} (max|ours-reference| {diff:.2e}):")
    for label, table in (("wall", wall), ("CPU ", cpu)):
        med = {name: statistics.median(v) for name, v in table.items()}
        print(f"  {label}: reference {med['reference']:.2f}s  ours {med['ours']:.2f}s  "
              f"speed-up {med['reference'] / med['ours']:.2f}×  (all: ref {[round(t, 2) for t in table['reference']]}, "
              f"ours {[round(t, 2) for t in table['ours']]})", flush=True)


# ---------------------------------------------------------------------------------------------- memory
def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_during(fn):
    """(result, seconds, peak RSS in bytes) of fn(), RSS sampled every 2 ms in a thread."""
    peak, done = [_rss_bytes()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return out, seconds, max(peak[0], _rss_bytes())


def train_step_worker(size, steps, variant, repeats):
    """Run in a subprocess: peak RSS above baseline and time of a training step (fwd + bwd + Adam)."""
    x, y, k = make_inputs(size)
    ours = build(steps, checkpointing=(variant == "ours+ckpt"))
    if variant == "reference":
        ours.to(memory_format=torch.contiguous_format)  # plain NCHW weights, as published
        net = ReferenceNRLGDN(ours)
    else:
        net = ours
    optimizer = torch.optim.Adam(ours.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.l1_loss(net(y, k), x, reduction="sum") / 2
        loss.backward()
        optimizer.step()

    step()  # warm-up: primitive creation, Adam state allocation
    peaks, times = [], []
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=True)
        baseline = _rss_bytes()
        _, seconds, peak = peak_rss_during(step)
        peaks.append(peak - baseline)
        times.append(seconds)
    print(json.dumps({"peak_mb": max(peaks) / 2**20, "seconds": statistics.median(times)}))


def bench_memory(size, step_counts, repeats):
    results = {}
    for steps in step_counts:
        for variant in ("reference", "ours", "ours+ckpt"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--size", str(size),
                   "--steps", str(steps), "--repeats", str(repeats), "--threads", str(torch.get_num_threads())]
            # a fixed mmap threshold makes glibc return freed tensors to the OS, so RSS tracks live memory
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
            results[(variant, steps)] = json.loads(out)
            r = results[(variant, steps)]
            print(f"train step {size}×{size}, {steps:2d} steps, {variant:9s}: peak +{r['peak_mb']:7.0f} MB  "
                  f"{r['seconds']:.2f}s", flush=True)
    for steps in step_counts:
        ref, plain, ckpt = (results[(v, steps)] for v in ("reference", "ours", "ours+ckpt"))
        print(f"{steps:2d} steps: memory ckpt/reference {ckpt['peak_mb'] / ref['peak_mb']:.2f}×, "
              f"ckpt/ours {ckpt['peak_mb'] / plain['peak_mb']:.2f}×; time ckpt/ours "
              f"{ckpt['seconds'] / plain['seconds']:.2f}×, ckpt/reference {ckpt['seconds'] / ref['seconds']:.2f}×")
    a, b = step_counts[0], step_counts[-1]
    print(f"ckpt peak {a} -> {b} steps: {results[('ours+ckpt', a)]['peak_mb']:.0f} -> "
          f"{results[('ours+ckpt', b)]['peak_mb']:.0f} MB; reference {results[('reference', a)]['peak_mb']:.0f} -> "
          f"{results[('reference', b)]['peak_mb']:.0f} MB")


# ---------------------------------------------------------------------------------------------- operators
def bench_operators(repeats):
    """Direct vs FFT blur (A and Aᵀ) for the crossover behind utils.operators.fft_is_faster.
    CPU time (process_time), min of repeats: wall time on the shared machine was too erratic."""
    from utils.operators import fft_is_faster

    cpu = time.process_time
    print("N  H    k   direct_ms  fft_ms  ratio  fft_is_faster   (CPU ms, min of repeats)")
    with torch.no_grad():
        for n in (1, 4):
            for h in (64, 128, 256, 512):
                for ks in (5, 9, 13, 17, 25, 35, 49):
                    x = torch.rand(n, 3, h, h)
                    k = torch.rand(n, 1, ks, ks)
                    direct = min(timed(lambda: (conv_direct(x, k), conv_adjoint_direct(x, k)), cpu)[0]
                                 for _ in range(repeats))
                    fft = min(timed(lambda: (conv_fft(x, k), conv_fft(x, k, adjoint=True)), cpu)[0]
                              for _ in range(repeats))
                    print(f"{n}  {h:<4d} {ks:<3d} {direct * 1e3:9.2f} {fft * 1e3:7.2f} {direct / fft:6.2f}  "
                          f"{fft_is_faster(h, h, ks, ks, n * 3)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64×64 forward, 32×32 training, 1 repeat")
    parser.add_argument("--operators", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("forward", "memory"), help="run one of the two benchmarks")
    parser.add_argument("--worker", choices=("reference", "ours", "ours+ckpt"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return train_step_worker(args.size, args.steps, args.worker, args.repeats)
    if args.operators:
        return bench_operators(args.repeats)
    forward_size, train_size = (64, 32) if args.quick else (256, 128)
    repeats = 1 if args.quick else args.repeats
    if args.only != "memory":
        bench_forward(forward_size, 6, repeats)
    if args.only != "forward":
        bench_memory(train_size, (6, 12), 1)


if __name__ == "__main__":
    main()
