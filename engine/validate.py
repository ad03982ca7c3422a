"""Validation during training: mean PSNR (RGB, outputs clamped) and an image grid for TensorBoard
(super-resolution inputs are shown bicubic-upsampled)."""
from __future__ import annotations

from typing import List, Tuple

import torch

from engine.modeling import item_batch, run_model
from utils.imresize import resize_to
from utils.io import make_grid
from utils.metrics import psnr


@torch.inference_mode()   # no autograd bookkeeping at all (faster than no_grad on a GPU)
def validate(model, items: List[dict], device, grid_images: int = 4) -> Tuple[float, torch.Tensor]:
    was_training = model.training
    model.eval()
    scores, tiles = [], []
    for i, item in enumerate(items):
        x = run_model(model, item_batch(item, device))["x"][0].float().clamp(0, 1).cpu()
        scores.append(psnr(x, item["x"]))
        if i < grid_images:
            tiles += [resize_to(item["y"], x.shape[-2:]).clamp(0, 1), x, item["x"]]
    model.train(was_training)
    grid = None
    if tiles and len({tuple(t.shape) for t in tiles}) == 1:
        grid = make_grid(torch.stack(tiles), nrow=3)
    return sum(scores) / len(scores), grid
