"""One configuration language: the published flags become nested specs once, at load
(utils/config_normalise.py), the specs are checked key by key at load, and the engine reads only them.

The reference numbers below were computed with the code before the normalisation existed (the flags
were then read by engine/datasets.py, engine/tasks.py and engine/protocols.py): the data each shipped
config synthesises is unchanged."""
import copy
import glob
import json
import os

import numpy as np
import pytest
import torch

from engine.datasets import build_train_loader, build_val_set
from engine.protocols import build_protocols
from utils.config import ConfigError, defaults, from_dict, load_config, public
from utils.config_normalise import normalise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.json")))


def _path(name):
    return os.path.join(ROOT, "configs", name)


def _load(name, *overrides):
    """A shipped config on its own: test configs (only test_dataset) as the test config."""
    sections = set(json.load(open(_path(name)))) - {"//"}
    if sections == {"test_dataset"}:
        return load_config(None, _path(name), list(overrides))
    return load_config(_path(name), None, list(overrides))


# ----------------------------------------------------------------------------------------- every shipped config
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_normalises_to_complete_specs(path):
    cfg = _load(os.path.basename(path))
    train, val, test = cfg["train_dataset"], cfg["val_dataset"], cfg["test_dataset"]
    assert val["task"] in ("deblur", "denoise", "sisr") and test["task"] in ("deblur", "denoise", "sisr")
    assert train["paired"] or "blur" in train["degradation"]
    if not (val["paired"] or val["noisy_mat"]):
        # exactly one validation route: a degradation spec, or (deblur) a complete protocol
        assert bool(val["degradation"]) != bool(val["protocol"])
        assert "blur" in val["degradation"] or set(val["protocol"]) == {"noise", "blur", "scale"}
    if test["is_test_real"]:
        assert test["protocols"] == []
    else:
        assert test["protocols"] and all(set(p) == {"name", "noise", "blur", "scale"} for p in test["protocols"])
    assert normalise(copy.deepcopy(cfg)) == cfg                                           # idempotent
    reloaded = from_dict(public(cfg))                                        # a saved config.json reloads as it ran
    assert public(reloaded) == public(cfg)


GAUSS_MAP = {"type": "sigma_map", "map": "gauss", "range": [5.0, 25.0], "interpolation": "bilinear"}


@pytest.mark.parametrize("name, expected", [
    ("test_simulated.json", [
        {"name": "uniform_2.55", "noise": {"type": "uniform", "sigma": 2.55}, "blur": "circular", "scale": 1},
        {"name": "sigma_map_gauss_5-25", "noise": GAUSS_MAP, "blur": "circular", "scale": 1}]),
    ("paper_set12_table4.json", [{"name": "sigma_map_gauss_5-25", "noise": GAUSS_MAP, "blur": "circular", "scale": 1}]),
    ("dsdnet_test.json", [{"name": f"noise_0{i}", "noise": {"type": "uniform", "sigma": s}, "blur": "replicate",
                           "scale": 1} for i, s in ((1, 2.55), (3, 7.65), (5, 12.75))]),
    ("virnet_sisr_test.json", [{"name": f"x2_uniform_{s:g}", "noise": {"type": "uniform", "sigma": s},
                                "blur": "symmetric", "scale": 2} for s in (0.1, 2.55, 7.65)]),
    ("virnet_denoise_test.json",
     [{"name": f"uniform_{s}", "noise": {"type": "uniform", "sigma": float(s)}, "blur": None, "scale": 1}
      for s in (15, 25, 50)]
     + [{"name": f"sigma_map_{m}_10-75", "noise": {"type": "sigma_map", "map": m, "range": [10.0, 75.0],
                                                   "interpolation": "nearest"}, "blur": None, "scale": 1}
        for m in ("peaks", "gauss", "gauss_mix")]),
    ("test_real.json", []),
    ("virnet_denoise_real_test.json", []),
])
def test_shipped_test_configs_become_these_protocols(name, expected):
    assert _load(name)["test_dataset"]["protocols"] == expected


NRLGDN_MIXTURE = {"type": "mixture", "components": [
    {"weight": 6, "noise": {"type": "regions", "layout": "one", "sigma_range": [0, 12.75]}},
    {"weight": 3, "noise": {"type": "regions", "layout": "four", "sigma_range": [0, 12.75]}}]}


@pytest.mark.parametrize("name, train, val", [
    ("paper_nrlgdn.json",
     {"kernels": {"type": "random"}, "noise": NRLGDN_MIXTURE, "blur": "circular", "quantize_blur": False},
     {"protocol": {"noise": {"type": "uniform", "sigma": 2.55}, "blur": "circular", "scale": 1}}),
    ("traincolor.json", None,
     {"protocol": {"noise": {"type": "sigma_map", "map": "gauss", "range": [5.0, 25.0]}, "blur": "circular",
                   "scale": 1}}),
    ("dsdnet_train.json", {"kernels": {"type": "motion", "size": 35},
                           "noise": {"type": "uniform", "sigma_range": [0, 12.75]}, "blur": "valid"},
     {"protocol": {"noise": {"type": "uniform", "sigma": 2.55}, "blur": "circular", "scale": 1}}),
    ("virnet_denoise_train.json", {"blur": None, "noise": {"type": "sigma_map", "map": "bumps", "range": [0, 80]},
                                   "clip": False},
     {"degradation": {"blur": None, "noise": {"type": "sigma_map", "map": "peaks", "range": [10, 75]},
                      "clip": False}}),
    ("virnet_denoise_real_train.json", {}, {"degradation": {}, "protocol": {}}),
])
def test_shipped_train_configs_become_these_specs(name, train, val):
    cfg = _load(name)
    if train is not None:
        assert cfg["train_dataset"]["degradation"] == train
    for key, spec in val.items():
        assert cfg["val_dataset"][key] == spec


# ----------------------------------------------------------------------------------------- flags -> specs
SIGMA_MAP_VAL = {"type": "sigma_map", "map": "peaks", "range": [5.0, 25.0]}


@pytest.mark.parametrize("overrides, train, val, test", [
    (["train_dataset.task=denoise"], {"noise": NRLGDN_MIXTURE, "blur": None},
     {"degradation": {"noise": {"type": "uniform", "sigma": 2.55}, "blur": None}},
     [{"name": "uniform_2.55", "noise": {"type": "uniform", "sigma": 2.55}, "blur": None, "scale": 1}]),
    (["train_dataset.task=sisr", "test_dataset.scale=3", "val_dataset.sigma_map_type=peaks"],
     {"kernels": {"type": "sr_gaussian", "size": 21}, "blur": "symmetric",
      "noise": {"type": "uniform", "sigma_range": [0, 12.75]}, "clip": True},
     {"degradation": {"kernels": {"type": "isotropic_gaussian", "size": 21, "std": 1.6}, "noise": SIGMA_MAP_VAL,
                      "blur": "symmetric", "clip": True}},
     [{"name": "x3_uniform_2.55", "noise": {"type": "uniform", "sigma": 2.55}, "blur": "circular", "scale": 3}]),
    (["train_dataset.noise_type=uniform", "train_dataset.kernel_path=k.mat", "train_dataset.quantize_blur=true",
      'val_dataset.protocol={"blur": null}', "test_dataset.is_test_gauss=false", "test_dataset.is_test_impulse=true",
      "test_dataset.test_noise_intensity=[0.05, 0.1]"],
     {"kernels": {"type": "file", "path": "k.mat", "augment": True},
      "noise": {"type": "uniform", "sigma_range": [0, 12.75]}, "blur": "circular", "quantize_blur": True},
     {"protocol": {"noise": {"type": "uniform", "sigma": 2.55}, "blur": None, "scale": 1}},
     [{"name": f"impulse_{f}", "noise": {"type": "impulse", "fraction": f}, "blur": "circular", "scale": 1}
      for f in (0.05, 0.1)]),
    (["train_options.is_train_poisson_gaussian=true", "test_dataset.is_test_gauss=false",
      "test_dataset.is_test_poisson_gaussian=true", "test_dataset.is_test_nonuniform=true",
      'test_dataset.sigma_map_type=["peaks", "gauss-mix"]', "test_dataset.blur=replicate"],
     {"kernels": {"type": "random"}, "noise": {"type": "poisson_gaussian", "peak": 128.0, "sigma": 12.75},
      "blur": "circular", "quantize_blur": False},
     {"protocol": {"noise": {"type": "uniform", "sigma": 2.55}, "blur": "circular", "scale": 1}},
     [{"name": f"sigma_map_{m}_5-25", "noise": {"type": "sigma_map", "map": m, "range": [5.0, 25.0],
                                                "interpolation": "bilinear"}, "blur": "replicate", "scale": 1}
      for m in ("peaks", "gauss_mix")]
     + [{"name": "poisson_gaussian_peak128_2.55", "noise": {"type": "poisson_gaussian", "peak": 128.0, "sigma": 2.55},
         "blur": "replicate", "scale": 1}]),
    (["train_options.is_train_impulse=true", "test_dataset.task=denoise",
      'test_dataset.protocols=[{"name": "a", "noise": 5}, {"name": "b", "noise": null, "blur": null, "scale": 1}]'],
     {"kernels": {"type": "random"}, "noise": {"type": "impulse", "fraction": 0.1}, "blur": "circular",
      "quantize_blur": False},
     {"protocol": {"noise": {"type": "uniform", "sigma": 2.55}, "blur": "circular", "scale": 1}},
     [{"name": "a", "noise": 5, "blur": None, "scale": 1}, {"name": "b", "noise": None, "blur": None, "scale": 1}]),
])
def test_published_flags_become_specs(overrides, train, val, test):
    cfg = load_config(None, None, overrides)
    assert cfg["train_dataset"]["degradation"] == train
    for key, spec in val.items():
        assert cfg["val_dataset"][key] == spec
    assert cfg["test_dataset"]["protocols"] == test


def test_given_specs_win_and_get_their_task_defaults():
    cfg = load_config(None, None, ["train_dataset.task=sisr", 'train_dataset.degradation={"noise": 5, "scale": 2}',
                                   'val_dataset.degradation={"noise": 5}', "test_dataset.scale=2",
                                   'test_dataset.protocols=[{"name": "p", "noise": 5}]'])
    assert cfg["train_dataset"]["degradation"] == {"noise": 5, "scale": 2, "blur": "symmetric", "clip": True}
    assert cfg["val_dataset"]["degradation"] == {"noise": 5, "blur": "symmetric", "clip": True}
    assert cfg["val_dataset"]["protocol"] == {}
    assert cfg["test_dataset"]["protocols"] == [{"name": "p", "noise": 5, "blur": "symmetric", "scale": 2}]
    real = load_config(None, None, ["test_dataset.is_test_real=true", 'test_dataset.protocols=[{"name": "p"}]'])
    assert real["test_dataset"]["protocols"] == []        # real data replaces every synthetic protocol


@pytest.mark.parametrize("overrides, message", [
    (['val_dataset.protocol={"noise": 5}', 'val_dataset.degradation={"noise": 5}'],
     "val_dataset.protocol: val_dataset.degradation is given too; keep one of them"),
    (["train_dataset.task=denoise", 'val_dataset.protocol={"noise": 5}'],
     "val_dataset.protocol: task 'denoise' validates with val_dataset.degradation; give the spec there"),
    (["test_dataset.is_test_jpeg_compression=true"], "test_dataset.is_test_jpeg_compression: the JPEG protocol "
                                                     "is not supported"),
    (["test_dataset.is_test_gauss=false"], "test_dataset: no protocol enabled; set one of is_test_gauss"),
    (["test_dataset.is_test_impulse=true", "test_dataset.test_noise_intensity=2"],
     r"test_dataset.test_noise_intensity: expected a fraction in \[0, 1\], got 2"),
    (["test_dataset.is_test_nonuniform=true", "test_dataset.sigma_map_range=[9, 3]"],
     r"test_dataset.sigma_map_range: expected \[low, high\] with 0 <= low <= high, got \[9, 3\]"),
    (["train_options.is_train_gauss=false"], "train_options: no training noise selected"),
    (["train_dataset.sigma_min=20"], r"train_dataset.sigma_min \(20\) is larger than sigma_max \(12.75\)"),
])
def test_untranslatable_flags_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        load_config(None, None, overrides)


# ----------------------------------------------------------------------------------------- nested schema
@pytest.mark.parametrize("spec, message", [
    ({"noise": {"type": "uniform", "sigma_rnge": [0, 5]}},
     "unknown key 'train_dataset.degradation.noise.sigma_rnge' in {file} "
     "(did you mean 'train_dataset.degradation.noise.sigma_range'?)"),
    ({"noise": {"type": "regoins"}}, "train_dataset.degradation.noise.type in {file}: 'regoins' is not one of "
                                     "impulse, jpeg, mixture, none, poisson_gaussian, regions, sigma_map, uniform "
                                     "(did you mean 'regions'?)"),
    ({"noise": {"type": "mixture", "components": [{"wieght": 1, "noise": 5}]}},
     "unknown key 'train_dataset.degradation.noise.components[0].wieght' in {file} "
     "(did you mean 'train_dataset.degradation.noise.components[0].weight'?)"),
    ({"kernels": {"type": "motion", "sise": 15}},
     "unknown key 'train_dataset.degradation.kernels.sise' in {file} "
     "(did you mean 'train_dataset.degradation.kernels.size'?)"),
    ({"blur": "circulr"}, "train_dataset.degradation.blur in {file}: 'circulr' is not one of circular, replicate, "
                          "reflect, symmetric, constant, valid, null (did you mean 'circular'?)"),
    ({"nosie": 5}, "unknown key 'train_dataset.degradation.nosie' in {file} "
                   "(did you mean 'train_dataset.degradation.noise'?)"),
    ({"scale": 2.5}, "train_dataset.degradation.scale in {file}: expected an integer, got 2.5"),
    ({"noise": {"sigma": 5}}, "train_dataset.degradation.noise in {file}: missing 'type' (one of impulse, jpeg, mixture"),
])
def test_typos_inside_a_degradation_spec_are_reported_at_load(tmp_path, spec, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train_dataset": {"degradation": spec}}))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), None)
    assert str(info.value).startswith(message.format(file=path))


def test_typos_inside_protocols_and_nested_overrides_are_reported():
    with pytest.raises(ConfigError, match=r"^unknown key 'test_dataset.protocols\[1\].blurr' in --set "
                                          r"\(did you mean 'test_dataset.protocols\[1\].blur'\?\)$"):
        load_config(None, None, ['test_dataset.protocols=[{"name": "a"}, {"name": "b", "blurr": null}]'])
    with pytest.raises(ConfigError, match=r"^test_dataset.protocols\[0\].name in --set: expected a string, got null$"):
        load_config(None, None, ['test_dataset.protocols=[{"noise": 5}]'])
    with pytest.raises(ConfigError, match=r"^unknown key 'val_dataset.protocol.noize' in --set "
                                          r"\(did you mean 'val_dataset.protocol.noise'\?\)$"):
        load_config(None, None, ['val_dataset.protocol={"noize": 5}'])
    with pytest.raises(ConfigError, match=r"^unknown key 'train_dataset.degradation.noise.sigma_rnge' in --set"):
        load_config(_path("traincolor.json"), None, ["train_dataset.degradation.noise.sigma_rnge=5"])


def test_the_engine_refuses_a_config_that_was_not_normalised():
    with pytest.raises(AssertionError, match="config is not normalised"):
        build_protocols(defaults())


def test_sisr_specs_without_scale_take_the_models():
    from engine.tasks import complete_spec

    spec = load_config(None, None, ["train_dataset.task=sisr"])["train_dataset"]["degradation"]
    bound = complete_spec("sisr", spec, "train_dataset.degradation", 4)
    assert bound["scale"] == 4 and bound["kernels"] == {"type": "sr_gaussian", "size": 21, "scale": 4}
    assert "scale" not in spec["kernels"]                   # the config is not modified
    with pytest.raises(ConfigError, match=r"^train_dataset.degradation: task 'sisr' needs a spec with 'scale' "
                                          r"\(the model declares no scale\)$"):
        complete_spec("sisr", spec, "train_dataset.degradation", None)


# ----------------------------------------------------------------------------------------- same data as before
SMALL = ["train_dataset.root_path=", "train_dataset.max_images=2", "train_dataset.num_workers=0",
         "val_dataset.max_images=2", "test_dataset.max_images=1"]


def _first_protocol_item(cfg, name):
    return next(next(p for p in build_protocols(cfg) if p.name == name).items())


def _first_batch(cfg, scale):
    return next(iter(build_train_loader(cfg, 2, 0, 1, scale=scale)[0]))


# (train config, test config, overrides, what, SR scale) -> (Σy, Σy², first three values of y), measured
# with the code before the normalisation
BEFORE = [
    (None, "paper_set12_table4.json", [], "sigma_map_gauss_5-25", None,
     (91553.15566, 53066.54254, [0.6214436, 0.5795254, 0.5917169])),
    (None, "test_simulated.json", [], "uniform_2.55", None, (80054.94308, 45411.24604, [0.3930476, 0.3120743, 0.2378771])),
    (None, "dsdnet_test.json", [], "noise_01", None, (80131.56227, 45932.83574, [0.1248436, 0.1238731, 0.1229837])),
    (None, "virnet_sisr_test.json", [], "x2_uniform_0.1", None, (20012.7924, 11813.71677, [0.1027833, 0.1100645, 0.1481457])),
    (None, "virnet_denoise_test.json", [], "sigma_map_peaks_10-75", None,
     (80013.83252, 53228.19405, [0.0357311, -0.0789279, 0.2928607])),
    ("traincolor.json", "test_simulated.json", ["train_dataset.degradation={}", "test_dataset.is_test_impulse=true"],
     "impulse_0.1", None, (81866.20055, 47370.85658, [0.3837011, 0.3064915, 0.5731867])),
    ("traincolor.json", None, [], "val", None, (12594.85747, 5579.41075, [0.3511567, 0.2336655, 0.2453485])),
    ("virnet_sisr_tiny.json", None, [], "val", 2, (35.63693, 4.95533, [0.0249738, 0.0347974, 0.1101369])),
    ("traincolor.json", None, ["train_dataset.degradation={}", "train_dataset.task=sisr"], "val", 2,
     (3194.07041, 1495.01042, [0.0244508, 0.2089409, 0.2004797])),
    ("traincolor.json", None, ["train_dataset.degradation={}", "train_dataset.task=sisr"], "train", 2,
     (5576.46598, 3344.21719, [0.8560598, 0.8429064, 0.8796747])),
    ("paper_nrlgdn.json", None, [], "train", None, (173526.80386, 109808.68336, [0.0953328, 0.1342979, 0.1392861])),
]


@pytest.mark.parametrize("train, test, overrides, what, scale, expected", BEFORE,
                         ids=[f"{b[0] or b[1]}:{b[3]}" for b in BEFORE])
def test_shipped_configs_synthesise_the_same_data_as_before(train, test, overrides, what, scale, expected):
    cfg = load_config(train and _path(train), test and _path(test), SMALL + overrides)
    if what == "val":
        y = build_val_set(cfg, scale)[0]["y"]
    elif what == "train":
        y = _first_batch(cfg, scale)["y"]
    else:
        y = _first_protocol_item(cfg, what)["y"]
    y = y.double()
    total, energy, first = expected
    assert float(y.sum()) == pytest.approx(total, rel=1e-6)
    assert float((y * y).sum()) == pytest.approx(energy, rel=1e-6)
    np.testing.assert_allclose(y.reshape(-1)[:3].numpy(), first, atol=2e-6)
    assert torch.isfinite(y).all()
