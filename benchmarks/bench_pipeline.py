"""Training-sample throughput: our pipeline vs a plain numpy/ndimage implementation of the same recipe.

Recipe (NRL-GDN non-uniform training): random 256×256 colour crop, random 8-way flip/rotation, random
motion kernel from a 3-D camera trajectory (250 points, 25×25), circular blur, region-wise AWGN
(2/3 one σ, 1/3 four quadrants, σ ~ U(0, 12.75)/255), C×H×W tensors out. The plain version generates
the trajectory and bins it point by point in Python, blurs with `scipy.ndimage.convolve(mode='wrap')`
and converts to tensors, the way the published code does. Two variants of the blur input: the float64
patch, or the uint8 patch as published (uint8 result, truncated; ours then uses quantize_blur=True).
Both run single-threaded (as in a DataLoader worker). The CPU may be shared, so the timings are repeated,
interleaved with alternating order, and medians are reported.

    python benchmarks/bench_pipeline.py [--samples 60] [--plain-samples 15] [--repeats 5]
                                        [--blur-input float|uint8|both]
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


def plain_sample(images, uint8_blur=False):
    """One training sample the published way: crop/augment the uint8 patch, motion kernel, ndimage blur
    (of the uint8 patch, as published, or of its float64 copy), region noise, torch tensors C×H×W."""
    img = images[np.random.randint(len(images))]
    top = np.random.randint(img.shape[0] - PATCH + 1)
    left = np.random.randint(img.shape[1] - PATCH + 1)
    patch = img[top:top + PATCH, left:left + PATCH]
    mode = np.random.randint(8)
    patch = np.rot90(patch, mode % 4)
    patch = np.flipud(patch) if mode >= 4 else patch
    k = plain_motion_kernel()
    if uint8_blur:  # uint8 in, uint8 out (truncated), then /255
        blurred = ndimage.convolve(patch, k[:, :, None], mode="wrap") / 255.0
    else:
        blurred = ndimage.convolve(patch.astype(np.float64) / 255, k[:, :, None], mode="wrap")
    h1, w1 = PATCH // 2, PATCH // 2
    sig = np.random.uniform(0, SIGMA_MAX, size=1 if np.random.randint(9) < 6 else 4) / 255
    sig = np.repeat(sig, 4) if sig.size == 1 else sig
    smap = np.empty(blurred.shape)
    for q, (rows, cols) in enumerate([(slice(0, h1), slice(0, w1)), (slice(0, h1), slice(w1, None)),
                                      (slice(h1, None), slice(0, w1)), (slice(h1, None), slice(w1, None))]):
        smap[rows, cols] = sig[q]
    noisy = blurred + np.random.randn(*blurred.shape) * smap

    def to_tensor(a):  # HWC array -> C×H×W float tensor, as the published uint2tensor3/single2tensor3
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()
    return to_tensor(patch).div(255.0), to_tensor(noisy), torch.from_numpy(np.float32(k))[None], to_tensor(smap)


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
    parser.add_argument("--blur-input", choices=["float", "uint8", "both"], default="both",
                        help="blur the float64 patch, or the uint8 patch as published (ours then quantises "
                             "the blurred image to 8-bit levels, quantize_blur=True)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    np.random.seed(0)

    tensors = default_images(size=512)  # in memory for both, so image decoding is not timed
    arrays = [(t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for t in tensors.values()]
    noise = {"type": "mixture", "components": [
        {"weight": 2, "noise": {"type": "regions", "layout": "one", "sigma_range": [0, SIGMA_MAX]}},
        {"weight": 1, "noise": {"type": "regions", "layout": "four", "sigma_range": [0, SIGMA_MAX]}}]}
    recipes = ["float", "uint8"] if args.blur_input == "both" else [args.blur_input]
    runs = {}
    for recipe in recipes:
        degradation = Degradation(KernelSampler(motion_prob=1.0, size=KSIZE), noise, blur="circular",
                                  quantize_blur=recipe == "uint8")
        dataset = TrainDataset(list(tensors.items()), PATCH, degradation, seed=0, length=10 ** 7)
        dataset[0], plain_sample(arrays, recipe == "uint8")  # warm-up (FFT plans, allocations)
        runs[recipe] = {"dataset": dataset, "ours": [], "plain": [], "cpu_ours": [], "cpu_plain": []}
    offset = 0
    for r in range(args.repeats):  # interleaved (and alternating order), so load changes hit both alike
        for recipe in recipes:
            run = runs[recipe]

            def ours():
                return timed(lambda i: run["dataset"][offset + i], args.samples)

            def plain():
                return timed(lambda i: plain_sample(arrays, recipe == "uint8"), args.plain_samples)

            if r % 2 == 0:
                (wall_o, cpu_o), (wall_p, cpu_p) = ours(), plain()
            else:
                (wall_p, cpu_p), (wall_o, cpu_o) = plain(), ours()
            run["ours"].append(wall_o)
            run["plain"].append(wall_p)
            run["cpu_ours"].append(cpu_o)
            run["cpu_plain"].append(cpu_p)
        offset += args.samples
    sampler = KernelSampler(motion_prob=1.0)
    kern = statistics.median(mean_seconds(lambda i: sampler(np.random.default_rng(i)), 50) for _ in range(3))
    kern_plain = statistics.median(mean_seconds(lambda i: plain_motion_kernel(), 5) for _ in range(3))

    def fmt(ts, scale=1e3, digits=1):
        return ", ".join(f"{t * scale:.{digits}f}" for t in ts)
    print(f"recipe: {PATCH}x{PATCH} colour crops, {KSIZE}x{KSIZE} motion kernel, circular blur, region noise "
          f"(2/3 one, 1/3 four), tensors out; 1 thread; {args.repeats} interleaved repeats of {args.samples} "
          f"(ours) / {args.plain_samples} (plain) samples; medians")
    for recipe in recipes:
        run = runs[recipe]
        med_ours, med_plain = statistics.median(run["ours"]), statistics.median(run["plain"])
        ratios = [p / o for p, o in zip(run["plain"], run["ours"])]
        cpu_ratios = [p / o for p, o in zip(run["cpu_plain"], run["cpu_ours"])]
        print(f"[blur of the {recipe} patch]")
        for name, med, times in (("ours ", med_ours, run["ours"]), ("plain", med_plain, run["plain"])):
            print(f"  {name}: {1 / med:7.1f} samples/s  ({med * 1e3:6.2f} ms/sample; repeats {fmt(times)} ms)")
        print(f"  speed-up (wall): median of per-repeat ratios {statistics.median(ratios):.1f}x "
              f"(ratios {fmt(ratios, 1)}); target >= 10x")
        print(f"  speed-up (process CPU time): median {statistics.median(cpu_ratios):.1f}x "
              f"(ratios {fmt(cpu_ratios, 1)})")
    print(f"motion kernel alone: ours {kern * 1e3:.2f} ms, plain loop {kern_plain * 1e3:.2f} ms "
          f"({kern_plain / kern:.0f}x)")


if __name__ == "__main__":
    main()
