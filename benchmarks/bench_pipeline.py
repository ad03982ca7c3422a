"""Training-sample throughput: our pipeline vs a plain numpy/ndimage implementation of the same recipe.

Recipe (NRL-GDN non-uniform training): random 256×256 colour crop, random 8-way flip/rotation, random
motion kernel from a 3-D camera trajectory (250 points, 25×25), circular blur, region-wise AWGN
(2/3 one σ, 1/3 four quadrants, σ ~ U(0, 12.75)/255). The plain version generates the trajectory and
bins it point by point in Python and blurs with `scipy.ndimage.convolve(mode='wrap')`, the way the
published code does. Both run single-threaded (as in a DataLoader worker). The CPU is shared, so
each timing is repeated and the median per-sample time is reported.

    python benchmarks/bench_pipeline.py [--samples 60] [--plain-samples 15] [--repeats 5]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import TrainDataset  # noqa: E402
from data.degrade import Degradation  # noqa: E402
from data.images import default_images  # noqa: E402
from data.kernels import KernelSampler  # noqa: E402

PATCH, KSIZE, SIGMA_MAX = 256, 25, 12.75


# ------------------------------------------------------------------ plain reference implementation

def plain_trajectory(n=250):
    pos, vel, rot = np.zeros((3, n)), np.random.randn(3), np.zeros(3)
    step = 2 * math.pi / n
    for t in range(1, n):
        rot = rot + step * (np.random.randn(3) / (t + 1) + rot)
        vel = vel + np.random.randn(3) / (t + 1)
        a, b, c = rot
        rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        pos[:, t] = pos[:, t - 1] + rz @ ry @ rx @ vel
    return pos


def plain_motion_kernel(size=KSIZE):
    pos = plain_trajectory()
    while True:
        h = int(round(min(5 - math.log(np.random.rand()) / 0.15, 27)))
        h += 1 - h % 2
        er = np.arange(pos[0].min(), pos[0].max(), np.ptp(pos[0]) / h)
        ec = np.arange(pos[1].min(), pos[1].max(), np.ptp(pos[1]) / h)
        k = np.zeros((h, h))
        for i in range(1, er.size):
            for j in range(1, ec.size):
                k[i - 1, j - 1] = np.sum((pos[0] >= er[i - 1]) & (pos[0] < er[i]) & (pos[1] >= ec[j - 1]) & (pos[1] < ec[j]))
        if k.sum() > 0:
            break
    g = np.exp(-np.add.outer(np.arange(-1, 2) ** 2, np.arange(-1, 2) ** 2) / 2.0)
    k = signal.convolve2d(k / k.sum(), g / g.sum(), "same")
    pad = (size - h) // 2
    k = k[:size, :size] if pad < 0 else np.pad(k, pad)
    if np.random.randint(4) == 1:
        zoomed = ndimage.zoom(k, (np.random.randint(size, 5 * size + 1) / size,
                                  np.random.randint(size, 5 * size + 1) / size), order=1)
        top, left = (zoomed.shape[0] - size) // 2, (zoomed.shape[1] - size) // 2
        k = zoomed[top:top + size, left:left + size]
    return k / k.sum() if k.sum() >= 0.1 else np.full((size, size), 1.0 / size ** 2)


def plain_sample(images):
    img = images[np.random.randint(len(images))]
    top = np.random.randint(img.shape[0] - PATCH + 1)
    left = np.random.randint(img.shape[1] - PATCH + 1)
    patch = img[top:top + PATCH, left:left + PATCH]
    mode = np.random.randint(8)
    patch = np.rot90(patch, mode % 4)
    patch = np.flipud(patch) if mode >= 4 else patch
    k = plain_motion_kernel()
    blurred = ndimage.convolve(patch.astype(np.float64) / 255, k[:, :, None], mode="wrap")
    h1, w1 = PATCH // 2, PATCH // 2
    sig = np.random.uniform(0, SIGMA_MAX, size=1 if np.random.randint(9) < 6 else 4) / 255
    sig = np.repeat(sig, 4) if sig.size == 1 else sig
    smap = np.empty(blurred.shape)
    for q, (rows, cols) in enumerate([(slice(0, h1), slice(0, w1)), (slice(0, h1), slice(w1, None)),
                                      (slice(h1, None), slice(0, w1)), (slice(h1, None), slice(w1, None))]):
        smap[rows, cols] = sig[q]
    return patch, blurred + np.random.randn(*blurred.shape) * smap, k, smap


# ------------------------------------------------------------------ timing

def mean_seconds(fn, n, clock=time.perf_counter):
    t0 = clock()
    for i in range(n):
        fn(i)
    return (clock() - t0) / n


def timed(fn, n):
    """(wall seconds, CPU seconds of this process) per call; CPU time is less affected by other load."""
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60, help="samples per repeat, our pipeline")
    parser.add_argument("--plain-samples", type=int, default=15, help="samples per repeat, plain pipeline")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    np.random.seed(0)

    tensors = default_images(size=512)  # in memory for both, so image decoding is not timed
    arrays = [(t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for t in tensors.values()]
    noise = {"type": "mixture", "components": [
        {"weight": 2, "noise": {"type": "regions", "layout": "one", "sigma_range": [0, SIGMA_MAX]}},
        {"weight": 1, "noise": {"type": "regions", "layout": "four", "sigma_range": [0, SIGMA_MAX]}}]}
    degradation = Degradation(KernelSampler(motion_prob=1.0, size=KSIZE), noise, blur="circular")
    dataset = TrainDataset(list(tensors.items()), PATCH, degradation, seed=0, length=10 ** 7)
    dataset[0], plain_sample(arrays)  # warm-up (FFT plans, allocations)
    ours, plain, ratios, cpu_ratios, offset = [], [], [], [], 0
    for _ in range(args.repeats):  # interleaved, so load changes on the shared CPU hit both alike
        wall_o, cpu_o = timed(lambda i: dataset[offset + i], args.samples)
        offset += args.samples
        wall_p, cpu_p = timed(lambda i: plain_sample(arrays), args.plain_samples)
        ours.append(wall_o)
        plain.append(wall_p)
        ratios.append(wall_p / wall_o)
        cpu_ratios.append(cpu_p / cpu_o)
    sampler = KernelSampler(motion_prob=1.0)
    kern = statistics.median(mean_seconds(lambda i: sampler(np.random.default_rng(i)), 50) for _ in range(3))
    kern_plain = statistics.median(mean_seconds(lambda i: plain_motion_kernel(), 5) for _ in range(3))

    def fmt(ts):
        return ", ".join(f"{t * 1e3:.1f}" for t in ts)
    med_ours, med_plain = statistics.median(ours), statistics.median(plain)
    print(f"recipe: {PATCH}x{PATCH} colour crops, {KSIZE}x{KSIZE} motion kernel, circular blur, region noise "
          f"(2/3 one, 1/3 four); 1 thread; {args.repeats} interleaved repeats of {args.samples} (ours) / "
          f"{args.plain_samples} (plain) samples; medians")
    print(f"ours : {1 / med_ours:7.1f} samples/s  ({med_ours * 1e3:6.2f} ms/sample; repeats {fmt(ours)} ms)")
    print(f"plain: {1 / med_plain:7.1f} samples/s  ({med_plain * 1e3:6.2f} ms/sample; repeats {fmt(plain)} ms)")
    print(f"motion kernel alone: ours {kern * 1e3:.2f} ms, plain loop {kern_plain * 1e3:.2f} ms ({kern_plain / kern:.0f}x)")
    print(f"speed-up ours/plain (wall): median of per-repeat ratios {statistics.median(ratios):.1f}x "
          f"(ratios {', '.join(f'{r:.1f}' for r in ratios)}); target >= 10x")
    print(f"speed-up ours/plain (process CPU time): median {statistics.median(cpu_ratios):.1f}x "
          f"(ratios {', '.join(f'{r:.1f}' for r in cpu_ratios)})")
    print(f"pooled over all repeats: {sum(plain) / sum(ours):.1f}x (mean plain time / mean ours)")


if __name__ == "__main__":
    main()
