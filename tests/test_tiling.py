"""Tiled inference (models/tiling.py): tiled vs whole-image results, no seams, border handling, outputs
with extras, and test_dataset.tile_size in the evaluation engine."""
import os

import pytest
import torch

from engine.evaluate import evaluate
from models import build_model, tiled
from models.tiling import Tiled, block_overlap, default_overlap
from utils.config import ConfigError

from tests.test_evaluate import _config
from tests.test_engine_train import TINY_NRLGDN, make_tiny_data
from tests.test_precision import compact, set12_crop

# Measured (Set12 08, Levin kernels 3 (27×27) and 4 (13×13), σ = 10, 200×200 crop, tile 160): max |tiled − whole|
# 2.3e-6 to 2.7e-6 for both boundaries; 512×512 with tile 256: 3.8e-6, PSNR equal to 1e-5 dB.
EXACT_TOLERANCE = 2e-5


def column_jumps(diff: torch.Tensor) -> torch.Tensor:
    """Mean |d[..., c+1] − d[..., c]| per column c: a seam shows up as one column far above the others."""
    return (diff[..., 1:] - diff[..., :-1]).abs().mean(dim=(0, 1, 2))


@pytest.mark.parametrize("boundary, kernel", [("circular", 3), ("zeros", 4), ("valid", 4), ("auto", 3)])
def test_tiled_nrlgdn_equals_the_whole_image_run(boundary, kernel):
    _, y, k = set12_crop("08", kernel=kernel, size=200, sigma=10.0)
    net = compact(boundary)
    net.record_steps = True
    with torch.no_grad():
        whole = net(y, k)
        out = tiled(net, tile=160)(y, k)
    assert set(out) == {"x", "steps"} and len(out["steps"]) == len(whole["steps"]) == 6
    assert (out["x"] - whole["x"]).abs().max() <= EXACT_TOLERANCE
    assert all((a - b).abs().max() <= EXACT_TOLERANCE for a, b in zip(out["steps"], whole["steps"]))


def test_early_stop_is_decided_on_the_whole_image():
    torch.manual_seed(0)
    _, y, k = set12_crop("08", kernel=4, size=120, sigma=10.0)
    net = build_model("NRL_GDN", early_stop=True, **{**TINY_NRLGDN, "num_steps": 12}).eval()
    with torch.no_grad():
        whole = net(y, k)
        steps = net.last_num_steps
        out = tiled(net, tile=96)(y, k)
    assert 5 < steps < 12 and net.last_num_steps == steps
    assert (out - whole).abs().max() <= 1e-3       # random weights reach further than trained ones: 1.0e-4


def test_no_step_at_the_seams():
    """The difference to the whole image has no jump across tile borders; with hard cuts (overlap 0) the
    same check finds one at the cut (columns 159 | 160)."""
    _, y, k = set12_crop("08", kernel=3, size=320, sigma=10.0)
    y = y[..., :160, :]
    net = compact("circular")
    with torch.no_grad():
        whole = net(y, k)
        blended = column_jumps(tiled(net, tile=160)(y, k) - whole)
        hard = column_jumps(tiled(net, tile=160, overlap=0)(y, k) - whole)
    assert blended.max() < 1e-5                       # measured 4.9e-7: nothing visible anywhere
    assert hard[159] > 1e-2 and hard[159] > 100 * hard.median()    # measured 7.5e-2, 520× the median


def test_default_overlap_follows_receptive_fields_and_kernel():
    net = compact()
    assert net.tile_context(net.h) == net.tile_context(net.d_alpha) == 14          # 7 layers of 5×5
    assert net.r.receptive_radius() == 148 and net.tile_context(net.r) == 50       # 3 ResBlocks per scale
    assert block_overlap(14) == 40 and block_overlap(50) == 136
    assert default_overlap(27) == 88 and default_overlap(13) == 64


def test_models_run_whole_on_tiles_return_what_they_return_whole():
    """Generic path: DSDNet (dict with per-stage list), VIRNet (dict of maps), baselines (tensor)."""
    torch.manual_seed(0)
    _, y, k = set12_crop("08", kernel=4, size=112, sigma=10.0)
    cases = [(build_model("DSD_light", n_iter=2, nf_p=4, nf_d=4), (y, k)),
             (build_model("VIRNet_denoise_syn", n_feat=(8, 8, 8), dep_S=3, n_resblocks=1, snet_width=8), (y,)),
             (build_model("richardson_lucy"), (y, k))]
    for net, inputs in cases:
        with torch.no_grad():
            whole, out = net.eval()(*inputs), tiled(net, tile=64)(*inputs)
        if isinstance(whole, dict):
            assert set(out) == set(whole)
            shapes = {key: [t.shape for t in v] if isinstance(v, list) else v.shape for key, v in whole.items()}
            assert shapes == {key: [t.shape for t in v] if isinstance(v, list) else v.shape for key, v in out.items()}
        else:
            assert out.shape == whole.shape
            assert (out - whole).abs().max() < 1e-3        # local method: measured 1.1e-4 with these tiles


class _Extras(torch.nn.Module):
    input_keys = ("y", "k")

    def __init__(self, extra):
        super().__init__()
        self.extra = extra

    def forward(self, y, k):
        return {"x": y, self.extra: torch.zeros(y.shape[0], 3)}


class _EarlyStopper(torch.nn.Module):
    """Two recorded steps where the tile is bright, one where it is dark (as early stopping varies)."""
    input_keys = ("y", "k")

    def forward(self, y, k):
        steps = [y, y + 1] if y.mean() > 0.5 else [y]
        return {"x": steps[-1], "steps": steps}


def test_outputs_that_cannot_be_merged_are_refused_clearly():
    y, k = torch.rand(1, 3, 80, 80), torch.ones(1, 1, 3, 3) / 9
    with pytest.raises(ValueError, match=r"^tiled: _Extras returned \(1, 3\) as its output 'kinfo' for a 64×64 tile; "
                                         r"only images of the tile's size \(or lists of them\) can be merged$"):
        tiled(_Extras("kinfo"), tile=64, overlap=16)(y, k)
    tuple_model = _Extras("a")
    tuple_model.forward = lambda y, k: (y, y)
    with pytest.raises(ValueError, match=r"^tiled: _Extras returned a tuple; tiled inference merges a Tensor or a "
                                         r"dict with key 'x' \(the model contract\)$"):
        tiled(tuple_model, tile=64, overlap=16)(y, k)
    three_inputs = _Extras("a")
    three_inputs.input_keys = ("y", "k", "sigma")
    with pytest.raises(ValueError, match=r"^tiled: _Extras takes inputs \('y', 'k', 'sigma'\); tiled inference "
                                         r"needs a model of \(y, k\) or \(y,\)$"):
        Tiled(three_inputs)
    with pytest.raises(ValueError, match="tile must be a multiple of 8 and at least 16, got 100"):
        tiled(_Extras("a"), tile=100)


def test_step_lists_of_unequal_length_are_padded_with_the_last_step():
    y = torch.zeros(1, 1, 64, 160)
    y[..., 96:] = 1.0                                 # right tiles bright (two steps), left tiles dark (one)
    out = tiled(_EarlyStopper(), tile=64, overlap=16)(y, torch.ones(1, 1, 1, 1))
    assert len(out["steps"]) == 2
    assert torch.equal(out["steps"][1][..., :40], y[..., :40])             # only one-step tiles: last kept
    assert torch.equal(out["steps"][1][..., 120:], y[..., 120:] + 1)


def test_tile_size_in_the_evaluation_engine(tmp_path):
    """test_dataset.tile_size gives the table of whole-image evaluation (NRL-GDN: same numbers) and is
    checked as a config key."""
    folder = str(tmp_path)
    img_dir, kernel_path = make_tiny_data(folder, n_images=1, size=72)
    torch.manual_seed(0)
    ckpt = os.path.join(folder, "tiny.pth")
    torch.save({"model": build_model("NRL_GDN", **TINY_NRLGDN).state_dict(), "model_select": "NRL_GDN",
                "model_options": TINY_NRLGDN}, ckpt)
    scores = {}
    for tile in (0, 64):
        cfg = _config(folder, img_dir, kernel_path, run_name=f"tile{tile}", tile_size=tile, save_images=False)
        cfg["model"].update(model_select="NRL_GDN", pretrained=ckpt, options={})
        result = evaluate(cfg, verbose=False)
        scores[tile] = [r["psnr"] for r in result.records]
    assert len(scores[0]) == 4 and scores[0] == pytest.approx(scores[64], abs=1e-4)
    cfg["test_dataset"]["tile_size"] = 20
    with pytest.raises(ConfigError, match="^test_dataset.tile_size: tiled: tile must be a multiple of 8"):
        evaluate(cfg, verbose=False)
