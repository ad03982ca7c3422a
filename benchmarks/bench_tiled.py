"""Tiled inference (models/tiling.py): memory and time on a large photo, and PSNR against whole images.

    python benchmarks/bench_tiled.py            # 3000×4000 colour photo, compact model, whole vs tiles of 512
                                                # and 1024; Set12's five 512×512 images × Levin's 8 kernels,
                                                # tile 256 vs whole
    python benchmarks/bench_tiled.py --quick    # 300×400 photo, tiles of 256; one 512×512 image × 1 kernel

1. Photo: a smooth synthetic colour photo blurred by a 25×25 kernel with zero padding, plus noise, restored
   by the compact checkpoint with boundary "zeros" (the real-photo setting), whole and `tiled(net, tile)`.
   Every run is a fresh subprocess, twice per setting: once for the peak memory, the RSS high-water mark
   sampled every 2 ms with glibc told to return freed memory (the method of benchmarks/bench_nrlgdn.py),
   reported in total and above the baseline of the loaded model and photo; once, plainly, for the time.
   The outputs are compared (max |tiled − whole|).
2. Set12: the engine's Table 4 protocol (gauss σ-map 5–25, luma; configs/traincolor.json's compact model,
   boundary circular) on the 512×512 images 08–12 with test_dataset.tile_size 0 and 256: PSNR per kernel.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_nrlgdn import _rss_bytes, peak_rss_during  # noqa: E402

COMPACT = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")
TRAIN_CONFIG = os.path.join(ROOT, "configs", "traincolor.json")
TABLE4_CONFIG = os.path.join(ROOT, "configs", "paper_set12_table4.json")
SET12_512 = ("08", "09", "10", "11", "12")


def make_photo(h: int, w: int, ksize: int = 25, seed: int = 0):
    """A smooth random colour image blurred with zero padding by a random ksize² kernel, plus noise."""
    from utils.operators import conv

    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, h // 16, w // 16, generator=g), size=(h, w), mode="bilinear")
    k = torch.rand(1, 1, ksize, ksize, generator=g) ** 4
    k = k / k.sum()
    with torch.no_grad():
        y = conv(x, k)
        y += 0.01 * torch.randn(y.shape, generator=g)
    return y, k


def photo_worker(h: int, w: int, tile: int, measure: str, out_path: str):
    """Subprocess: restore the photo whole (tile 0) or in tiles; print the peak memory or the time as JSON."""
    from models import build_model, load_pretrained, tiled

    options = torch.load(COMPACT, map_location="cpu", weights_only=True)["model_options"]
    net = load_pretrained(build_model("NRL_GDN", **{**options, "boundary": "zeros"}), COMPACT).eval()
    y, k = make_photo(h, w)
    run = tiled(net, tile) if tile else net
    baseline = _rss_bytes()
    with torch.no_grad():
        if measure == "memory":
            out, _, peak = peak_rss_during(lambda: run(y, k))
            torch.save(out, out_path)
            print(json.dumps({"peak_mb": peak / 2**20, "above_mb": (peak - baseline) / 2**20}))
        else:
            start = time.perf_counter()
            run(y, k)
            print(json.dumps({"seconds": time.perf_counter() - start}))


def _worker(h: int, w: int, tile: int, measure: str, out_path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{h}x{w}", "--tile", str(tile), "--measure", measure,
           "--out", out_path, "--threads", str(torch.get_num_threads())]
    # memory: a fixed mmap threshold makes glibc return freed tensors to the OS, so RSS tracks live memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if measure == "memory" else None
    line = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
    return json.loads(line)


def bench_photo(h: int, w: int, tiles):
    print(f"{h}×{w} colour photo (25×25 kernel, zero padding), compact checkpoint, boundary zeros, "
          f"{torch.get_num_threads()} threads:")
    results, outputs = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for tile in [0] + list(tiles):
            path = os.path.join(folder, f"out_{tile}.pt")
            results[tile] = {**_worker(h, w, tile, "memory", path), **_worker(h, w, tile, "time", path)}
            outputs[tile] = torch.load(path, weights_only=True)
            r = results[tile]
            label = "whole     " if tile == 0 else f"tiles {tile:4d}"
            diff = "" if tile == 0 else f"  max |tiled − whole| {(outputs[tile] - outputs[0]).abs().max().item():.1e}"
            print(f"  {label}: peak {r['peak_mb']:7.0f} MB (+{r['above_mb']:6.0f} MB above model and photo)  "
                  f"{r['seconds']:7.1f} s{diff}", flush=True)
    for tile in tiles:
        print(f"  tiles {tile}: memory {results[tile]['peak_mb'] / results[0]['peak_mb']:.2f}× whole, "
              f"time {results[tile]['seconds'] / results[0]['seconds']:.2f}× whole")


def _set12_scores(folder: str, tile: int, quick: bool):
    from engine.evaluate import evaluate
    from utils.config import load_config

    overrides = [f"test_dataset.tile_size={tile}", f"test_dataset.result_save_file={folder}",
                 f"test_dataset.run_name=tile{tile}", f"test_dataset.root_path={folder}",
                 "test_dataset.test_data=Set12_512",
                 "test_dataset.kernel_path=" + os.path.join(ROOT, "test_dataset", "kernels", "kernels_8.mat"),
                 "test_dataset.compare_models=[]", "test_dataset.save_images=false", "test_dataset.save_figures=false",
                 f"model.pretrained={COMPACT}", "train_options.disable_cuda=true"]
    if quick:
        overrides += ["test_dataset.max_images=1", "test_dataset.kernel_indices=[0]"]
    started = time.perf_counter()
    result = evaluate(load_config(TRAIN_CONFIG, TABLE4_CONFIG, overrides), verbose=False)
    [table] = result.summary.values()
    return table["compact_nrlgdn"], [r for r in result.records if r["model"] == "compact_nrlgdn"], \
        time.perf_counter() - started


def bench_set12(tile: int, quick: bool):
    with tempfile.TemporaryDirectory() as folder:
        images = os.path.join(folder, "Set12_512")
        os.makedirs(images)
        for name in SET12_512:
            os.symlink(os.path.join(ROOT, "test_dataset", "Set12", f"{name}.png"), os.path.join(images, f"{name}.png"))
        (whole, whole_records, t0), (tiles, tile_records, t1) = (_set12_scores(folder, t, quick) for t in (0, tile))
    print(f"\nSet12 512×512 ({'image 08' if quick else ', '.join(SET12_512)}) × Levin's kernels, gauss σ-map 5–25, "
          f"luma, compact checkpoint (boundary circular): whole vs tiles of {tile}")
    print("  kernel     whole     tiled   tiled−whole")
    for kernel in whole:
        a, b = whole[kernel]["psnr"], tiles[kernel]["psnr"]
        print(f"  {kernel:6s}  {a:8.4f}  {b:8.4f}   {b - a:+.5f}")
    worst = max(abs(a["psnr"] - b["psnr"]) for a, b in zip(whole_records, tile_records))
    print(f"  largest |PSNR difference| of one image: {worst:.5f} dB; time whole {t0:.1f}s, tiled {t1:.1f}s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300×400 photo, tiles of 256; one Set12 image × 1 kernel")
    parser.add_argument("--tiles", default="512,1024", help="tile sizes for the photo (comma-separated)")
    parser.add_argument("--set12_tile", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--only", choices=("photo", "set12"), help="run one of the two parts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("memory", "time"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        h, w = (int(v) for v in args.worker.split("x"))
        return photo_worker(h, w, args.tile, args.measure, args.out)
    if args.only in (None, "photo"):
        size, tiles = ((300, 400), [256]) if args.quick else ((3000, 4000), [int(t) for t in args.tiles.split(",")])
        bench_photo(*size, tiles)
    if args.only in (None, "set12"):
        bench_set12(args.set12_tile, args.quick)


if __name__ == "__main__":
    main()
