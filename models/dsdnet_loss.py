"""DSDNet's published training loss (setsunil/DSDNet, L1FFTLoss with deg_loss=True).

    loss = Σ_stages [L1(x_s, x) + 0.1·L1_fft(x_s, x)] + 0.01·[L1(ŷ, y) + 0.1·L1_fft(ŷ, y)],
    ŷ = K x_final + n   (re-blurred output plus the very noise sample that was added to y),

where L1 is the mean absolute error and L1_fft the mean modulus of the difference of the unnormalised
`rfft2` spectra. K blurs with replicate padding like the model. Without `batch["noise"]` the noise is
taken as y − K x, which is exact when y was blurred with the same replicate-padded K (then
ŷ − y = K(x_final − x)).
"""
from __future__ import annotations

import torch

from models.dsdnet_ops import BlurOperator
from models.losses import LossTerms
from utils.operators import compute_dtype, kernel_batch, no_autocast


def l1_fft_terms(pred: torch.Tensor, target: torch.Tensor):
    """(mean |pred − target|, mean |rfft2(pred) − rfft2(target)|) over all elements, in float32 at least
    (cuFFT has no bfloat16, and float16 only for power-of-two sizes)."""
    dtype = compute_dtype(torch.promote_types(pred.dtype, target.dtype))
    pred, target = pred.to(dtype), target.to(dtype)
    with no_autocast(pred.device.type):
        spatial = (pred - target).abs().mean()
        spectral = (torch.fft.rfft2(pred) - torch.fft.rfft2(target)).abs().mean()
    return spatial, spectral


class DSDNetLoss:
    """Callable `(outputs, batch) -> (loss, {name: float})`; `outputs` is the model's dict (its
    "stages" are supervised, else "x"), a Tensor, or a list of stage outputs."""

    def __init__(self, fft_weight: float = 0.1, reblur_weight: float = 0.01, padding_mode: str = "replicate",
                 kernel_convention: str = "convolution", noise_key: str = "noise"):
        if kernel_convention not in ("convolution", "correlation"):
            raise ValueError(f"kernel_convention must be 'convolution' or 'correlation', got '{kernel_convention}'")
        self.fft_weight, self.reblur_weight = float(fft_weight), float(reblur_weight)
        self.padding_mode, self.kernel_convention, self.noise_key = padding_mode, kernel_convention, noise_key

    @staticmethod
    def _predictions(outputs):
        if torch.is_tensor(outputs):
            return [outputs]
        if isinstance(outputs, (list, tuple)):
            return list(outputs)
        if "stages" in outputs and len(outputs["stages"]) > 0:
            return list(outputs["stages"])
        if "x" not in outputs:
            raise KeyError(f"DSDNetLoss: outputs need 'x' or 'stages', got keys {sorted(outputs)}")
        return [outputs["x"]]

    def __call__(self, outputs, batch):
        for key in ("x", "y", "k") if self.reblur_weight else ("x",):
            if key not in batch:
                raise KeyError(f"DSDNetLoss: batch has no '{key}' (keys: {sorted(batch)})")
        preds = self._predictions(outputs)
        target = batch["x"]
        spatial = spectral = 0.0
        for pred in preds:
            s, f = l1_fft_terms(pred, target)
            spatial, spectral = spatial + s, spectral + f
        loss = spatial + self.fft_weight * spectral
        logs = {"l1": spatial, "l1_fft": spectral}
        if self.reblur_weight:
            y, final = batch["y"], preds[-1]
            k = kernel_batch(batch["k"], y.shape[0], y)
            if self.kernel_convention == "correlation":
                k = torch.flip(k, dims=(-2, -1))
            blur = BlurOperator(k, self.padding_mode)
            noise = batch.get(self.noise_key)
            if noise is None:
                noise = y - blur(target)
            s, f = l1_fft_terms(blur(final) + noise, y)
            reblur = s + self.fft_weight * f
            loss = loss + self.reblur_weight * reblur
            logs["reblur"] = reblur
        return loss, LossTerms(**logs, loss=loss)
