"""MixUp of denoising batches (VIRNet's real-noise training, after MPRNet).

Every sample i is blended with sample perm[i] of the same batch: x ← λx + (1−λ)x', y ← λy + (1−λ)y'
with λ ~ Beta(0.6, 0.6) per sample. The blend stays a valid denoising pair because there is no blur;
its noise is λn + (1−λ)n', so a true σ-map, when the batch has one, becomes sqrt(λ²σ² + (1−λ)²σ'²)
(independent noise; a sample drawn as its own partner keeps σ). Randomness comes from a caller-seeded
numpy generator: a resumed run mixes alike.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

BETA = 0.6
_IMAGE_KEYS = ("x", "y")


def mixup_rng(seed: int, step: int) -> np.random.Generator:
    """The generator for training step `step` (depends on nothing else, so resuming is exact)."""
    return np.random.default_rng([int(seed), int(step), 0x5EED])


def mixup_batch(batch: Dict, rng: np.random.Generator, beta: float = BETA) -> Dict:
    """A new batch with x, y (and sigma) mixed; other entries are kept."""
    for key in _IMAGE_KEYS:
        if key not in batch:
            raise KeyError(f"mixup needs batch['{key}']; batch has {sorted(batch)}")
    k = batch.get("k")
    if torch.is_tensor(k) and k.shape[-2:] != (1, 1):
        raise ValueError("mixup blends images of different samples and needs a blur-free (denoising) batch; "
                         f"this batch has {tuple(k.shape[-2:])} kernels")
    x = batch["x"]
    n = x.shape[0]
    perm = torch.from_numpy(rng.permutation(n)).to(x.device)
    lam = torch.from_numpy(rng.beta(beta, beta, size=n)).to(device=x.device, dtype=x.dtype)
    lam = lam.view(n, *([1] * (x.dim() - 1)))
    out = dict(batch)
    for key in _IMAGE_KEYS:
        t = batch[key]
        out[key] = lam * t + (1 - lam) * t[perm]
    sigma = batch.get("sigma")
    if torch.is_tensor(sigma):
        s = sigma.to(x.dtype)
        lam_s = lam.view(n, *([1] * (s.dim() - 1)))
        blended = torch.sqrt((lam_s * s) ** 2 + ((1 - lam_s) * s[perm]) ** 2)
        itself = (perm == torch.arange(n, device=perm.device)).view_as(lam_s)   # λn + (1−λ)n = n
        out["sigma"] = torch.where(itself, s, blended)
    return out
