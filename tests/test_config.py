"""Config schema: defaults, overrides, one-line errors with suggestions, published configs load."""
import json
import os
import re

import pytest

from utils.config import (SCHEMA, ConfigError, apply_overrides, defaults, describe_schema, load_config,
                          parse_override, require_dir, require_file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_defaults_cover_every_key_with_its_declared_type():
    cfg = defaults()
    assert set(cfg) == set(SCHEMA)
    for section, spec in SCHEMA.items():
        for key, entry in spec.items():
            assert cfg[section][key] == entry.default
            assert entry.doc.strip(), f"{section}.{key} has no documentation"


def test_file_values_then_overrides_win_and_missing_keys_take_defaults(tmp_path):
    train = _write(tmp_path, "train.json", {"train_options": {"epochs": 7, "seed": 5}, "model": {"model_select": "wiener"}})
    test = _write(tmp_path, "test.json", {"test_dataset": {"test_noise_level": [2.55, 7.65]}})
    cfg = load_config(train, test, ["train_options.epochs=3", "model.options.num_steps=6",
                                    "test_dataset.test_data=Set12", "optimizer.betas=[0.8, 0.9]"])
    assert cfg["train_options"]["epochs"] == 3          # override beats the file
    assert cfg["train_options"]["seed"] == 5            # file beats the default
    assert cfg["train_options"]["resume"] is False      # default
    assert cfg["model"]["options"] == {"num_steps": 6}  # nested override into a dict key
    assert cfg["test_dataset"]["test_data"] == "Set12"  # unquoted string value
    assert cfg["test_dataset"]["test_noise_level"] == [2.55, 7.65]
    assert cfg["optimizer"]["betas"] == [0.8, 0.9]


def test_parse_override_reads_json_values_and_keeps_plain_strings():
    assert parse_override("a.b=1e-4") == ("a", "b", [], 1e-4)
    assert parse_override("a.b=true") == ("a", "b", [], True)
    assert parse_override("a.b.c=x=y") == ("a", "b", ["c"], "x=y")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("epochs")


@pytest.mark.parametrize("override, expected", [
    ("train_options.epoch=3", "unknown key 'train_options.epoch' in --set (did you mean 'train_options.epochs'?)"),
    ("train_dataset.epochs=3", "unknown key 'train_dataset.epochs' in --set (did you mean 'train_options.epochs'?)"),
    ("trian_options.epochs=3", "unknown section 'trian_options' in --set (did you mean 'train_options'?)"),
    ("train_options.epochs=ten", 'train_options.epochs in --set: expected an integer, got "ten"'),
    ("train_options.resume=1", "train_options.resume in --set: expected true/false, got 1"),
    ("optimizer.name=sgd", "optimizer.name in --set: 'sgd' is not one of adam, adamw"),
    ("test_dataset.sigma_map_type=gaus", "'gaus' is not one of peaks, gauss, gauss_mix, gauss-mix (did you mean 'gauss'?)"),
    ("optimizer.lr=-1", "optimizer.lr in --set: expected a value >= 0, got -1"),
])
def test_bad_overrides_give_one_line_messages(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, None, [override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_a_file_names_the_file_and_suggests(tmp_path):
    path = _write(tmp_path, "bad.json", {"train_dataset": {"patch_sise": 64}})
    with pytest.raises(ConfigError) as info:
        load_config(path, None)
    assert str(info.value) == (f"unknown key 'train_dataset.patch_sise' in {path} "
                               "(did you mean 'train_dataset.patch_size'?)")


def test_wrong_type_in_a_file(tmp_path):
    path = _write(tmp_path, "bad.json", {"train_dataset": {"batch_size": 2.5}})
    with pytest.raises(ConfigError, match=r"train_dataset.batch_size in .*bad.json: expected an integer, got 2.5"):
        load_config(path, None)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="train config file not found: .*nope.json"):
        load_config(str(tmp_path / "nope.json"), None)
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"model_select": "NRL_GDN",}}')
    with pytest.raises(ConfigError, match=r"broken.json: invalid JSON at line 1 column"):
        load_config(str(broken), None)


def test_required_paths_name_the_key(tmp_path):
    cfg = load_config(None, None, [f"train_dataset.root_path={tmp_path / 'missing'}",
                                   f"val_dataset.kernel_path={tmp_path / 'k.mat'}"])
    with pytest.raises(ConfigError, match=r"train_dataset.root_path: folder not found: '.*missing'"):
        require_dir(cfg, "train_dataset", "root_path")
    with pytest.raises(ConfigError, match=r"val_dataset.kernel_path: kernel file not found"):
        require_file(cfg, "val_dataset", "kernel_path", "kernel file")


def test_nested_override_needs_a_dict_key():
    cfg = defaults()
    with pytest.raises(ConfigError, match="train_options.epochs is not a JSON object"):
        apply_overrides(cfg, ["train_options.epochs.x=1"])


@pytest.mark.parametrize("name", ["traincolor.json", "test_simulated.json", "test_real.json",
                                  "paper_set12_table4.json", "paper_nrlgdn.json"])
def test_shipped_configs_load(name):
    path = os.path.join(ROOT, "configs", name)
    cfg = load_config(path, None) if "train" in name or "nrlgdn" in name else load_config(None, path)
    assert cfg["model"]["model_select"]


# Folders a user fills with data we cannot ship (docs/data.md, "Data folders"); every other path must exist.
USER_FOLDERS = ("trainsets/", "testsets/", "test_dataset/real blurred image")
PATH_KEYS = ("root_path", "kernel_path", "init_from", "pretrained", "noisy_mat", "clean_mat")


def _config_paths(node, where=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PATH_KEYS and isinstance(value, str) and value:
                yield f"{where}{key}", value
            yield from _config_paths(value, f"{where}{key}.")


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".json")))
def test_shipped_config_paths_exist_or_are_documented_user_folders(name):
    text = open(os.path.join(ROOT, "configs", name)).read()
    assert "../" not in text and "shared/" not in text, f"{name} points outside the repository"
    from tests import docblocks

    documented = docblocks.section("Data folders")
    for key, value in _config_paths(json.loads(text)):
        value = value[2:] if value.startswith("./") else value
        root = "test_dataset/" if key.endswith("test_dataset.root_path") else ""  # test_data lives inside it
        if os.path.exists(os.path.join(ROOT, value)) or value.startswith("pretrainedmodels/"):
            continue
        folder = next((f for f in USER_FOLDERS if (root + value if root else value).startswith(f)), None)
        assert folder, f"{name}: {key} = '{value}' is neither in the repository nor a documented user folder"
        assert f"`{folder.rstrip('/')}" in documented, f"'Data folders' does not explain the user folder {folder}"


def test_shipped_test_data_is_the_papers():
    from data.images import list_images, read_image
    from data.kernels import load_kernels

    images = list_images(os.path.join(ROOT, "test_dataset", "Set12"))
    assert [p.stem for p in images] == [f"{i:02d}" for i in range(1, 13)]
    assert [tuple(read_image(p, gray=True).shape) for p in images] == [(1, 256, 256)] * 7 + [(1, 512, 512)] * 5
    levin = load_kernels(os.path.join(ROOT, "test_dataset", "kernels", "kernels_8.mat"))
    assert [k.shape[0] for k in levin] == [19, 17, 15, 27, 13, 21, 23, 23]
    assert len(load_kernels(os.path.join(ROOT, "test_dataset", "kernels", "kernels_19.mat"))) == 19
    for n, count in ((23, 23), (29, 29), (48, 48)):
        assert len(load_kernels(os.path.join(ROOT, "test_dataset", "kernels", f"real kernel image{n}"))) == count


@pytest.mark.parametrize("task", ["denoise", "sisr"])
def test_virnet_configs_load_with_their_tasks(task):
    train = os.path.join(ROOT, "configs", f"virnet_{task}_train.json")
    tiny = os.path.join(ROOT, "configs", f"virnet_{task}_tiny.json")
    test = os.path.join(ROOT, "configs", f"virnet_{task}_test.json")
    for train_config in (train, tiny):
        cfg = load_config(train_config, test)
        assert cfg["train_dataset"]["task"] == cfg["test_dataset"]["task"] == task
        assert cfg["model"]["model_select"].startswith("VIRNet_")
    full = load_config(train, test)
    if task == "denoise":   # published: 120 epochs, 5 warm-up, cosine to 1e-6; unclipped noisy tests
        assert (full["train_options"]["epochs"], full["scheduler"]["warmup_epochs"]) == (120, 5)
        assert full["scheduler"]["eta_min"] == 1e-6 and full["test_dataset"]["clip_noisy"] is False
    else:                   # published ×2: no warm-up; Y metrics with border scale² on uint8
        t = full["test_dataset"]
        assert full["scheduler"]["warmup_epochs"] == 0 and t["clip_noisy"] is True
        assert (t["metric_color"], t["border"], t["quantize"]) == ("ycbcr_y", t["scale"] ** 2, True)


def test_task_keys_take_only_known_tasks():
    with pytest.raises(ConfigError, match="train_dataset.task in --set: 'deblurring' is not one of deblur, "
                                          "denoise, sisr \\(did you mean 'deblur'\\?\\)"):
        load_config(None, None, ["train_dataset.task=deblurring"])
    cfg = load_config(None, None, ["train_dataset.task=denoise", "test_dataset.blur=symmetric"])
    assert cfg["val_dataset"]["task"] == cfg["test_dataset"]["task"] == "denoise"  # empty: train_dataset.task
    with pytest.raises(ConfigError, match="test_dataset.blur in --set: 'mirror' is not one of"):
        load_config(None, None, ["test_dataset.blur=mirror"])


def test_published_config_files_load_unchanged(tmp_path):
    """The published traincolor.json / test_simulated.json key sets are all accepted."""
    published_train = {
        "train_dataset": {"root_path": "x", "kernel_path": "k.mat", "patch_size": 256, "is_train": False,
                          "num_channels": 3, "num_workers": 8, "sigma_min": 0, "sigma_max": 12.75, "batch_size": 8},
        "val_dataset": {"root_path": "v", "kernel_path": "k.mat", "num_channels": 3, "noise_level": 2.55,
                        "kernel_index": 8},
        "model": {"model_select": "NRL_GDN", "model_save_file": "pretrainedmodels", "num_channels": 3, "iter_num": 1},
        "optimizer": {"name": "adam", "lr": 1e-4},
        "multi_step_lr": {"milestone": 1400},
        "train_options": {"epoch_val": 1, "epoch_save": 100, "epochs": 1500, "resume": False,
                          "resume_model_name": "NRL_GDN.pth", "is_train_gauss": True,
                          "is_train_jpeg_compression": False, "is_train_poisson_gaussian": False,
                          "is_train_impulse": False, "seed": 123, "disable_cuda": True, "device_ids": [0, 1],
                          "log_file": "deblur_logger_NRL_GDN.txt"}}
    published_test = {"test_dataset": {
        "is_gray_scale": True, "is_test_real": False, "is_test_nonuniform": True, "is_test_gauss": False,
        "is_test_jpeg_compression": False, "is_test_poisson_gaussian": False, "is_test_impulse": False,
        "sigma_map_type": "gauss", "sigma_map_path": "./data/true_sigma_maps.mat", "sigma_map_av": 2,
        "sigma_map_index": 1, "result_save_file": "results", "root_path": "./test_dataset", "test_data": "Set12",
        "kernel_path": "./test_dataset/kernels/kernels_8.mat", "test_noise_level": 2.55,
        "test_noise_intensity": 0.001, "jpeg_quality_factor": 60, "num_channels": 3, "sigma_min": 0,
        "sigma_max": 25, "batch_size": 1}}
    cfg = load_config(_write(tmp_path, "t.json", published_train), _write(tmp_path, "s.json", published_test))
    assert cfg["train_options"]["device_ids"] == [0, 1]
    assert cfg["test_dataset"]["test_data"] == "Set12"


def test_docs_list_every_key():
    text = describe_schema()
    for section, spec in SCHEMA.items():
        for key in spec:
            assert f"| `{key}` |" in text
    from tests import docblocks

    written = docblocks.section("Every configuration key")          # wherever it lives (docs/configuration.md)
    tables = dict(re.findall(r"^#+ `(\w+)`\n(.*?)(?=^#|\Z)", written, re.M | re.S))
    missing = [f"{s}.{k}" for s, spec in SCHEMA.items() for k in spec
               if s not in tables or f"| `{k}` |" not in tables[s]]
    assert not missing, f"'Every configuration key' does not document {missing}"


def test_compact_recipe_chains_its_stages_into_the_default_run():
    from models import build_model, load_pretrained
    from models.growth import load_grown

    def cfg(name):
        return load_config(os.path.join(ROOT, "configs", name), None)

    names = [f"train_compact_stage{i}.json" for i in range(1, 6)] + ["train_compact.json"]
    stages, default = [cfg(n) for n in names], cfg("traincolor.json")
    export = lambda c: os.path.join(c["model"]["model_save_file"], c["train_options"]["run_name"] + ".pth")
    assert not stages[0]["model"]["init_from"]          # stage 1 starts from scratch
    for prev, cur in zip(stages, stages[1:]):
        assert cur["model"]["init_from"] == export(prev)
        before, after = prev["model"]["options"], cur["model"]["options"]
        if cur["model"].get("init_grow"):       # growth adds ResBlocks and changes nothing else
            assert after["r_blocks"] > before["r_blocks"] and after == {**before, "r_blocks": after["r_blocks"]}
            load_grown(build_model("NRL_GDN", **after), os.path.join(ROOT, export(prev)))
        else:       # fine-tuning may change the boundary model only (it has no parameters)
            assert {**after, "boundary": None} == {**before, "boundary": None}
    assert default["model"]["pretrained"] == export(stages[-1])
    # the default run evaluates circularly blurred data, so it solves with the periodic operators
    assert default["model"]["options"] == {**stages[-1]["model"]["options"], "boundary": "circular"}
    for c in stages:                           # the shipped files load strictly with their stage's options
        load_pretrained(build_model("NRL_GDN", **c["model"]["options"]), os.path.join(ROOT, export(c)))
