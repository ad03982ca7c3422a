"""Embedded default test data, so the project runs with no downloads.

- `default_test_images()`: scikit-image's bundled images, centre-cropped (see `data.images.default_images`);
- `default_kernels()`: `test_dataset/default_kernels.npy`, 4 motion + 2 Gaussian 25×25 kernels made by
  our generators from a fixed seed. Regenerate with `python -m data.default_data --write`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data.images import default_images
from data.kernels import gaussian_kernel, load_kernels, motion_kernel

KERNEL_FILE = Path(__file__).resolve().parents[1] / "test_dataset" / "default_kernels.npy"
SEED = 20261122


def generate_default_kernels(seed: int = SEED, n_motion: int = 4, n_gaussian: int = 2, size: int = 25) -> np.ndarray:
    """N×size×size float32 stack: motion kernels first, then anisotropic Gaussians (centred)."""
    rng = np.random.default_rng(seed)
    kernels = [motion_kernel(rng, size) for _ in range(n_motion)]
    kernels += [gaussian_kernel(rng, size, var_range=(1.0, 8.0)) for _ in range(n_gaussian)]
    stack = np.stack(kernels).astype(np.float32)
    return stack / stack.sum(axis=(1, 2), keepdims=True)


def default_test_images(gray: bool = False, size: int = 256) -> dict:
    return default_images(gray=gray, size=size)


def default_kernels(path=KERNEL_FILE) -> list:
    """The embedded kernels as float64 arrays summing to 1."""
    return load_kernels(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="(re)generate the default kernel file")
    parser.add_argument("--out", default=str(KERNEL_FILE))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    stack = generate_default_kernels(args.seed)
    out = Path(args.out)
    if args.write:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, stack)
        print(f"wrote {out}: {stack.shape[0]} kernels of {stack.shape[1]}×{stack.shape[2]}")
    elif out.exists():
        same = np.allclose(np.load(out), stack, atol=1e-7)
        print(f"{out}: {'matches' if same else 'DIFFERS FROM'} the generator output (seed {args.seed})")
    else:
        print(f"{out} does not exist; run with --write")


if __name__ == "__main__":
    main()
