"""The shipped compact checkpoint restores: better than its input and than Wiener on embedded data."""
import json
import os

import torch

from data.datasets import TestDataset
from data.default_data import default_kernels, default_test_images
from models import build_model, load_pretrained
from utils.metrics import psnr, rgb_to_luma

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_compact_model_beats_its_input_and_wiener_under_a_sigma_map():
    model_cfg = json.load(open(os.path.join(ROOT, "configs", "traincolor.json")))["model"]
    net = build_model("NRL_GDN", **model_cfg["options"])
    load_pretrained(net, os.path.join(ROOT, model_cfg["pretrained"]))
    net.eval()
    wiener = build_model("wiener")
    images = {name: img[:, 64:192, 64:192] for name, img in default_test_images().items()}
    data = TestDataset(images, default_kernels()[:2], {"type": "sigma_map", "map": "gauss", "range": [5, 25]})
    gains_input, gains_wiener = [], []
    for i in range(len(data)):
        item = data[i]
        with torch.no_grad():
            ours = net(item["y"][None], item["k"][None])[0].clamp(0, 1)
            baseline = wiener(item["y"][None], item["k"][None])
        baseline = (baseline["x"] if isinstance(baseline, dict) else baseline)[0].clamp(0, 1)
        score = lambda img: psnr(rgb_to_luma(img), rgb_to_luma(item["x"]))
        gains_input.append(score(ours) - score(item["y"].clamp(0, 1)))
        gains_wiener.append(score(ours) - score(baseline))
    assert min(gains_input) > 2.0, gains_input
    assert sum(gains_wiener) / len(gains_wiener) > 1.0, gains_wiener


def test_configured_options_override_the_stored_ones_key_by_key():
    from engine.modeling import ModelSpec, build_for_evaluation

    path = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")
    spec = ModelSpec(name="NRL_GDN", options={"boundary": "circular", "num_steps": 8}, pretrained=path)
    net = build_for_evaluation(spec, torch.device("cpu"))
    stored = torch.load(path, weights_only=True)["model_options"]
    assert net.boundary == "circular" and net.num_steps == 8
    assert spec.options == {**stored, "boundary": "circular", "num_steps": 8}
