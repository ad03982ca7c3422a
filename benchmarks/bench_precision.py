"""The bf16 fast mode (models/precision.py) against float32: speed, accuracy, training.

    python benchmarks/bench_precision.py           # paper-size forward 256×256 ×6 steps (3 repeats); Table 4
                                                   # protocol (Set12 × Levin's 8 kernels, gauss σ-map 5–25, luma)
                                                   # with pretrainedmodels/compact_nrlgdn.pth; 40 training steps
    python benchmarks/bench_precision.py --quick   # 64×64 forward, 1 image × 1 kernel, 3 training steps

1. Forward speed: `NRL_GDN` at the paper's widths, fixed steps, the same weights and input in fp32 and under
   `with_precision(net, "bf16")`; medians of interleaved repeats, wall and CPU time (run it on an idle machine).
2. Accuracy: the engine's evaluation of the compact checkpoint with test_dataset.precision fp32 and bf16 (its
   stored options + boundary circular, as configs/traincolor.json), PSNR per kernel and the difference.
3. Training: the compact model fine-tuned from its checkpoint for a few steps with train_options.precision
   fp32 and bf16 (same seed, same batches): the two loss curves side by side and the time per step.
A CPU without native bf16 (no AVX-512 BF16 / AMX / Arm BF16) runs bf16 emulated and many times slower; the
script then says so, measures fp32 only and `auto` stays fp32 (--force measures bf16 anyway).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_nrlgdn import make_inputs  # noqa: E402
from models import build_model, with_precision  # noqa: E402
from models.precision import native_bf16, probe_bf16_speedup, resolve_precision  # noqa: E402

TRAIN_CONFIG = os.path.join(ROOT, "configs", "traincolor.json")
TABLE4_CONFIG = os.path.join(ROOT, "configs", "paper_set12_table4.json")
COMPACT = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")


def bench_forward(size: int, steps: int, repeats: int, modes):
    """Paper-size NRL_GDN forward in each precision; prints medians and the speed-up over fp32."""
    _, y, k = make_inputs(size)
    torch.manual_seed(0)
    net = build_model("NRL_GDN", num_steps=steps, early_stop=False).eval()
    runners = {mode: with_precision(net, mode) for mode in modes}
    wall = {mode: [] for mode in modes}
    cpu = {mode: [] for mode in modes}
    with torch.no_grad():
        outputs = {mode: run(y, k) for mode, run in runners.items()}     # warm-up (oneDNN primitives)
        for _ in range(repeats):
            for mode, run in runners.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                run(y, k)
                wall[mode].append(time.perf_counter() - start_wall)
                cpu[mode].append(time.process_time() - start_cpu)
    print(f"forward NRL_GDN (paper size) {size}×{size}, {steps} fixed steps, {torch.get_num_threads()} threads, "
          f"median of {repeats}:")
    for label, table in (("wall", wall), ("CPU ", cpu)):
        med = {mode: statistics.median(v) for mode, v in table.items()}
        line = "  ".join(f"{mode} {med[mode]:.2f}s" for mode in modes)
        if "bf16" in med:
            line += f"  speed-up bf16/fp32 {med['fp32'] / med['bf16']:.2f}×"
        print(f"  {label}: {line}", flush=True)
    if "bf16" in outputs:
        print(f"  max |bf16 − fp32| {(outputs['bf16'] - outputs['fp32']).abs().max().item():.2e}")


def _table4_psnr(mode: str, folder: str, quick: bool):
    from engine.evaluate import evaluate
    from utils.config import load_config

    overrides = [f"test_dataset.precision={mode}", f"test_dataset.result_save_file={folder}",
                 f"test_dataset.run_name=table4_{mode}", "test_dataset.compare_models=[]",
                 "test_dataset.save_images=false", "test_dataset.save_figures=false",
                 "test_dataset.root_path=" + os.path.join(ROOT, "test_dataset"),
                 "test_dataset.kernel_path=" + os.path.join(ROOT, "test_dataset", "kernels", "kernels_8.mat"),
                 f"model.pretrained={COMPACT}", "train_options.disable_cuda=true"]
    if quick:
        overrides += ["test_dataset.max_images=1", "test_dataset.kernel_indices=[0]"]
    started = time.perf_counter()
    result = evaluate(load_config(TRAIN_CONFIG, TABLE4_CONFIG, overrides), verbose=False)
    [(protocol, table)] = result.summary.items()
    return protocol, table["compact_nrlgdn"], time.perf_counter() - started


def bench_table4(quick: bool, modes):
    """Compact checkpoint on the Table 4 protocol in each precision: PSNR per kernel and the bf16 loss."""
    with tempfile.TemporaryDirectory() as folder:
        runs = {mode: _table4_psnr(mode, folder, quick) for mode in modes}
    protocol = runs["fp32"][0]
    print(f"\nTable 4 protocol ({protocol}, luma), compact checkpoint, PSNR dB per kernel:")
    kernels = list(runs["fp32"][1])
    print("  kernel  " + "  ".join(f"{mode:>7s}" for mode in modes) + ("   bf16−fp32" if "bf16" in runs else ""))
    for kernel in kernels:
        values = [runs[mode][1][kernel]["psnr"] for mode in modes]
        diff = f"   {values[1] - values[0]:+.4f}" if "bf16" in runs else ""
        print(f"  {kernel:6s}  " + "  ".join(f"{v:7.3f}" for v in values) + diff)
    print("  time: " + "  ".join(f"{mode} {runs[mode][2]:.1f}s" for mode in modes))


def _train_losses(mode: str, folder: str, steps: int, quick: bool):
    from engine.train import train
    from utils.config import load_config

    overrides = [f"train_options.precision={mode}", f"train_options.total_iters={steps}", "train_options.epoch_val=0",
                 "train_options.tensorboard=false", f"train_options.checkpoint_dir={folder}",
                 f"train_options.run_name=train_{mode}", "train_options.log_every=1000",
                 "train_options.disable_cuda=true",
                 f"model.model_save_file={folder}", f"model.init_from={COMPACT}", "train_dataset.num_workers=0",
                 f"train_dataset.patch_size={32 if quick else 96}", f"train_dataset.batch_size={2 if quick else 4}"]
    stamps = [time.perf_counter()]
    run = train(load_config(TRAIN_CONFIG, None, overrides), step_callback=lambda *_: stamps.append(time.perf_counter()))
    per_step = [b - a for a, b in zip(stamps[1:], stamps[2:])] or [stamps[-1] - stamps[0]]   # after step 1 (warm-up)
    return [h["loss"] for h in run.history], statistics.median(per_step)


def bench_training(steps: int, quick: bool, modes):
    """Fine-tuning the compact checkpoint in each precision from the same seed: loss curves and s/step."""
    with tempfile.TemporaryDirectory() as folder:
        runs = {mode: _train_losses(mode, folder, steps, quick) for mode in modes}
    print(f"\ntraining from the compact checkpoint, {steps} steps (same seed and batches): loss per step")
    for i in range(steps):
        values = [runs[mode][0][i] for mode in modes]
        rel = f"  rel. diff {abs(values[1] - values[0]) / abs(values[0]):.2%}" if len(values) > 1 else ""
        print(f"  step {i + 1:3d}: " + "  ".join(f"{mode} {v:.5f}" for mode, v in zip(modes, values)) + rel)
    if len(modes) > 1:
        first, second = (statistics.mean(runs[mode][0][steps // 2:]) for mode in modes)
        print(f"  mean loss over the second half: fp32 {first:.5f}  bf16 {second:.5f} "
              f"({(second - first) / first:+.2%})")
    print("  time per step (median after the first): " + "  ".join(f"{mode} {runs[mode][1]:.2f}s" for mode in modes)
          + (f"  speed-up {runs['fp32'][1] / runs['bf16'][1]:.2f}×" if "bf16" in runs else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64×64 forward, 1 image × 1 kernel, 3 training steps")
    parser.add_argument("--force", action="store_true", help="measure bf16 even without native bf16")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=40)
    parser.add_argument("--only", choices=("forward", "table4", "training"), help="run one of the three parts")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    native = native_bf16("cpu")
    speedup = probe_bf16_speedup("cpu")
    print(f"CPU: native bf16 {'yes' if native else 'no'}; probe: a bf16 3×3 convolution runs at {speedup:.2f}× "
          f"the fp32 speed; precision 'auto' -> {resolve_precision('auto', 'cpu')}")
    modes = ["fp32", "bf16"]
    if not native and not args.force:
        print("this CPU has no native bf16: bf16 would run emulated (many times slower), so 'auto' keeps fp32 "
              "and only the fp32 figures follow (--force measures bf16 anyway)")
        modes = ["fp32"]
    steps = 3 if args.quick else args.train_steps
    if args.only in (None, "forward"):
        bench_forward(64 if args.quick else 256, 6, 1 if args.quick else args.repeats, modes)
    if args.only in (None, "table4"):
        bench_table4(args.quick, modes)
    if args.only in (None, "training"):
        bench_training(steps, args.quick, modes)


if __name__ == "__main__":
    main()
