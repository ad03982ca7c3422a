"""What README.md and docs/*.md promise, walked from a clean clone (no ../shared): the commands, snippets
and the extension recipe they show run and do what they say. Blocks are read through tests/docblocks.py
(`run_by`: the blocks annotated with a test's name), phrases from the text of README.md + docs/*.md, so a
doc edit that breaks them breaks these tests; tests/test_docs.py runs every block no test here runs."""
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import deblurring
from engine.checkpoint import read_checkpoint
from tests import docblocks
from tests.test_engine_train import make_tiny_data, tiny_train_config
from tests.test_journeys import clone  # noqa: F401 (fixture: a fresh clone's files, no ../shared beside them)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = docblocks.read("README.md")
DOCS = docblocks.text()          # README.md and docs/*.md, wherever a section now lives
SHIPPED = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")
QUICK_EVAL = ["test_dataset.max_images=1", "test_dataset.kernel_indices=[0]"]   # 1 image × 1 kernel
QUICK_TRAIN = ["train_dataset.patch_size=32", "train_dataset.batch_size=2", "train_dataset.num_workers=0",
               "val_dataset.max_images=1", "val_dataset.patch_size=32", "train_options.tensorboard=false"]


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _code(test, language="python"):
    """The one block of `language` annotated <!-- test: `test` --> (README.md or docs/*.md)."""
    [block] = docblocks.run_by(test, language)
    return block.code


def _printed_tables(out):
    """{title: (header, {row label: [(psnr, ssim), ...]})} of the Markdown tables evaluate() prints, each
    under a line 'title (PSNR dB / SSIM, ...):' or 'overall:'."""
    lines, tables = out.splitlines(), {}
    for i, line in enumerate(lines):
        if not line.startswith("| ") or (i and lines[i - 1].startswith("|")):
            continue
        title = lines[i - 1].rstrip(":").split(" (")[0]
        header = [c.strip() for c in line.strip().strip("|").split("|")]
        rows, j = {}, i + 2
        while j < len(lines) and lines[j].startswith("|"):
            cells = [c.strip() for c in lines[j].strip().strip("|").split("|")]
            rows[cells[0]] = [tuple(float(v) for v in c.split(" / ")) for c in cells[1:]]
            j += 1
        tables[title] = (header, rows)
    return tables


def _cell(table, row, model):
    header, rows = table
    return rows[row][header.index(model) - 1]


# 1 -------------------------------------------------------------------------------------------------
def test_main_job_bare_command_evaluates_compact_checkpoint_with_baselines(tmp_path, capsys):
    block = _code("tests/test_readme.py::test_main_job_bare_command_evaluates_compact_checkpoint_with_baselines",
                  "bash")
    assert block == re.search(r"```bash\n(.*?)```", README, re.S).group(1)      # the README's first block
    assert re.search(r"&& python deblurring\.py\s+# main job", block.splitlines()[0])
    shipped_before = _sha256(SHIPPED)
    results = tmp_path / "results"
    assert deblurring.main(_sets(QUICK_EVAL + [f"test_dataset.result_save_file={results}"])) == 0
    captured = capsys.readouterr()
    assert "100%" in captured.err                                           # the progress bar
    tables = _printed_tables(captured.out)
    columns = ["kernel", "degraded", "compact_nrlgdn", "eq22_init", "wiener"]
    # uniform σ = 2.55 and the gauss σ-map (5–25)/255, as the README says
    assert set(tables) == {"uniform_2.55", "sigma_map_gauss_5-25", "overall"}
    for protocol in ("uniform_2.55", "sigma_map_gauss_5-25"):
        assert tables[protocol][0] == columns
        assert list(tables[protocol][1]) == ["0", "**average**"]
        ours, degraded = _cell(tables[protocol], "**average**", "compact_nrlgdn"), \
            _cell(tables[protocol], "**average**", "degraded")
        assert ours[0] > degraded[0] + 3.0 and ours[1] > degraded[1], (protocol, ours, degraded)
    assert _cell(tables["sigma_map_gauss_5-25"], "**average**", "compact_nrlgdn")[0] > \
        _cell(tables["sigma_map_gauss_5-25"], "**average**", "wiener")[0]

    run_dir = results / "default"                                           # results/default/ in the README
    summary_md = (run_dir / "summary.md").read_text()
    assert "| kernel | degraded | compact_nrlgdn | eq22_init | wiener |" in summary_md
    with open(run_dir / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["protocol", "model", "kernel", "psnr", "ssim", "n"]
    assert {r["model"] for r in rows} == set(columns[1:])
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["config"]["model"]["pretrained"] == "pretrainedmodels/compact_nrlgdn.pth"
    assert saved["config"]["test_dataset"]["compare_models"] == ["eq22_init", "wiener"]
    images = sorted({r["image"] for r in saved["records"]})
    assert len(images) == 1 and len(saved["records"]) == 2 * 4              # 2 protocols × (input + 3 models)
    image = images[0]
    for protocol in ("uniform_2.55", "sigma_map_gauss_5-25"):
        kdir = run_dir / protocol / "kernel0"
        shapes = {np.asarray(Image.open(kdir / f"{image}_{m}.png")).shape for m in columns[1:]}
        assert len(shapes) == 1 and len(next(iter(shapes))) == 3            # one size, colour
        assert os.listdir(run_dir / protocol / "figures") == [f"{image}_kernel0.png"]   # one figure per image
        figure = np.asarray(Image.open(run_dir / protocol / "figures" / f"{image}_kernel0.png"))
        assert figure.shape[1] > 2 * figure.shape[0]                        # degraded | restored | ground truth
    assert _sha256(SHIPPED) == shipped_before


# 2 -------------------------------------------------------------------------------------------------
def test_baselines_only_needs_no_checkpoint(tmp_path, capsys):
    assert "python deblurring.py --set test_dataset.baselines_only=true" in DOCS
    args = QUICK_EVAL + ["test_dataset.baselines_only=true", f"test_dataset.result_save_file={tmp_path / 'r'}",
                         f"model.pretrained={tmp_path / 'absent.pth'}", f"model.model_save_file={tmp_path / 'none'}"]
    assert deblurring.main(_sets(args)) == 0
    tables = _printed_tables(capsys.readouterr().out)
    for protocol in ("uniform_2.55", "sigma_map_gauss_5-25"):
        assert tables[protocol][0] == ["kernel", "degraded", "eq22_init", "wiener"]
    uniform = tables["uniform_2.55"]
    assert _cell(uniform, "**average**", "wiener")[0] > _cell(uniform, "**average**", "degraded")[0] + 2.0
    assert os.listdir(tmp_path / "r") == ["default_baselines"]                # never the full run's results/default
    assert os.path.isfile(tmp_path / "r" / "default_baselines" / "summary.md")
    assert not (tmp_path / "none").exists() and not (tmp_path / "absent.pth").exists()


# 3 -------------------------------------------------------------------------------------------------
def test_train_command_exports_beside_never_over_the_shipped_checkpoint(tmp_path, capsys):
    assert re.search(r"python deblurring\.py --set train_dataset\.is_train=true\s+# train with "
                     r"configs/traincolor\.json", DOCS)
    shipped_before = _sha256(SHIPPED)
    weights = tmp_path / "pretrainedmodels"                  # a copy of the shipped folder's checkpoint
    weights.mkdir()
    shutil.copyfile(SHIPPED, weights / "compact_nrlgdn.pth")
    args = QUICK_TRAIN + ["train_dataset.is_train=true", "train_options.total_iters=2",
                          f"train_options.checkpoint_dir={tmp_path / 'checkpoints'}",
                          f"model.model_save_file={weights}"]
    assert deblurring.main(_sets(args)) == 0
    log = capsys.readouterr().out
    assert "done: 2 steps" in log and f"weights {weights / 'compact_nrlgdn_2.pth'}" in log
    last = read_checkpoint(str(tmp_path / "checkpoints" / "compact_nrlgdn" / "last.pth"))
    assert last["step"] == 2 and last["model_select"] == "NRL_GDN"
    assert _sha256(weights / "compact_nrlgdn.pth") == shipped_before == _sha256(SHIPPED)   # untouched
    exported = read_checkpoint(str(weights / "compact_nrlgdn_2.pth"))
    shipped = read_checkpoint(SHIPPED)
    configured = json.load(open(os.path.join(ROOT, "configs", "traincolor.json")))["model"]["options"]
    assert exported["model_options"] == configured                  # trained as configured (boundary too)
    assert {**shipped["model_options"], "boundary": "circular"} == configured   # the same architecture
    assert set(exported["model"]) == set(shipped["model"]) and exported["step"] == 2
    assert sorted(os.listdir(weights)) == ["compact_nrlgdn.pth", "compact_nrlgdn_2.pth"]


# 4 -------------------------------------------------------------------------------------------------
MY_NET = '''
import torch


class MyNet(torch.nn.Module):
    """Restores y + offset; takes its inputs in the order of input_keys (kernel first)."""
    input_keys = ("k", "y")
    default_loss = "readme_test_loss"

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(1))

    def forward(self, k, y):
        assert k.shape[1] == 1 and y.shape[1] == 3, (k.shape, y.shape)
        return y + self.offset
'''


@pytest.fixture
def registry_cleanup():
    from models.losses import LOSSES
    from models.registry import MODELS

    yield
    MODELS.unregister("ReadmeMyNet")
    LOSSES.unregister("readme_test_loss")
    sys.modules.pop("readme_my_net", None)


def test_extension_recipe_new_model_and_loss_train_and_evaluate(tmp_path, monkeypatch, capsys, registry_cleanup):
    assert 'register_model("MyNet", "models.my_net:MyNet")' in DOCS
    assert re.search(r"with `input_keys` and\s+`default_loss` class attributes \(.*?\); a new loss "
                     r"`register_loss\(\"my_loss\", factory\)`", DOCS, re.S)
    from engine.evaluate import evaluate
    from engine.train import train
    from models import register_model
    from models.losses import register_loss

    (tmp_path / "readme_my_net.py").write_text(MY_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    register_model("ReadmeMyNet", "readme_my_net:MyNet")            # the string form, imported lazily
    created, calls = [], []

    def factory(weight=1.0):
        created.append(weight)

        def fn(outputs, batch):
            calls.append(tuple(outputs["x"].shape))
            loss = weight * (outputs["x"] - (batch["x"] + 0.5)).abs().mean()   # rewards brightening
            return loss, {"my_l1": float(loss.detach())}
        return fn

    register_loss("readme_test_loss", factory)
    img_dir, kernel_path = make_tiny_data(str(tmp_path), n_images=2, size=32)
    cfg = tiny_train_config(str(tmp_path), img_dir, kernel_path, total_iters=2, epoch_val=0, run_name="ReadmeMyNet")
    cfg["model"].update(model_select="ReadmeMyNet", options={}, loss="", loss_options={"weight": 2.0})
    cfg["optimizer"]["lr"] = 0.1
    cfg["scheduler"]["name"] = "none"
    run = train(cfg)
    assert run.status == "completed" and [h["step"] for h in run.history] == [1, 2]
    assert created == [2.0] and calls == [(2, 3, 24, 24)] * 2                 # default_loss, loss_options
    offset = float(read_checkpoint(run.exported)["model"]["offset"])
    assert offset > 0.15                                                      # trained: two Adam steps of 0.1
    assert run.exported == str(tmp_path / "weights" / "ReadmeMyNet.pth")

    cfg["test_dataset"].update(root_path=str(tmp_path), test_data="images", kernel_path=kernel_path,
                               is_test_gauss=True, is_test_nonuniform=False, compare_models=["wiener"],
                               save_figures=False, result_save_file=str(tmp_path / "results"), run_name="mine")
    capsys.readouterr()
    result = evaluate(cfg)            # loads <model_save_file>/ReadmeMyNet.pth, the training export
    tables = _printed_tables(capsys.readouterr().out)
    assert tables["uniform_2.55"][0] == ["kernel", "degraded", "ReadmeMyNet", "wiener"]
    mine = result.summary["uniform_2.55"]["ReadmeMyNet"]["all"]
    degraded = result.summary["uniform_2.55"]["degraded"]["all"]
    assert mine["n"] == 4 and mine["psnr"] < degraded["psnr"] - 3.0          # y + offset: the trained weights


# 5 -------------------------------------------------------------------------------------------------
def test_from_python_snippet_evaluates_and_trains(tmp_path, monkeypatch, capsys):
    code = _code("tests/test_readme.py::test_from_python_snippet_evaluates_and_trains")
    import utils.config

    real_load = utils.config.load_config
    loaded = []

    def load_quickly(train_config, test_config, overrides=()):
        """The snippet's own call, plus tmp folders and small sizes (never its total_iters)."""
        cfg = real_load(train_config, test_config, list(overrides) + QUICK_TRAIN + [
            "test_dataset.kernel_indices=[0]", "test_dataset.save_figures=false",
            f"test_dataset.result_save_file={tmp_path / 'results'}",
            f"train_options.checkpoint_dir={tmp_path / 'checkpoints'}", f"model.model_save_file={tmp_path / 'w'}"])
        iters = cfg["train_options"]["total_iters"]
        assert 0 < iters <= 50, f"the snippet must train briefly (train_options.total_iters={iters})"
        loaded.append((list(overrides), cfg))
        return cfg

    monkeypatch.setattr(utils.config, "load_config", load_quickly)
    monkeypatch.chdir(ROOT)                                   # the snippet's paths are relative to the checkout
    namespace = {}
    exec(compile(code, "docs (From Python)", "exec"), namespace)
    [(overrides, cfg)] = loaded
    iters = cfg["train_options"]["total_iters"]
    assert "test_dataset.max_images=1" in overrides
    result, run = namespace["result"], namespace["run"]
    # every attribute the snippet's comments name exists, with the documented structure
    for name, obj in (("result", result), ("run", run)):
        comment = re.search(rf"^{name} = .*?#(.*)$", code, re.M).group(1)
        for attr in re.findall(r"\.(\w+)", comment):
            assert hasattr(obj, attr), f"{name}.{attr}"
    assert set(result.summary) == {"uniform_2.55", "sigma_map_gauss_5-25"}
    cell = result.summary["uniform_2.55"]["compact_nrlgdn"]["0"]
    assert set(cell) == {"psnr", "ssim", "n"} and cell["n"] == 1 and cell["psnr"] > 20
    assert {os.path.basename(p) for p in result.files.values()} == {"summary.md", "summary.csv", "per_image.csv",
                                                                     "results.json"}
    assert all(os.path.isfile(p) and str(tmp_path) in p for p in result.files.values())
    assert run.status == "completed" and len(run.history) == iters
    assert set(run.history[0]) == {"epoch", "step", "loss"} and np.isfinite(run.history[-1]["loss"])
    assert os.path.isfile(run.last_checkpoint) and os.path.isfile(run.exported)
    assert isinstance(run.model, torch.nn.Module)


# 6 -------------------------------------------------------------------------------------------------
def test_double_slash_keys_are_ignored_in_config_files(tmp_path):
    assert 'keys\nstarting with `//` are ignored, so `"//": "note"` can document a config file' in DOCS
    from utils.config import ConfigError, load_config

    train = tmp_path / "train.json"
    train.write_text(json.dumps({"//": "a file note", "model": {"//": "note", "// why": "more", "model_select": "wiener"},
                                 "optimizer": {"//": "x", "lr": 0.01}}))
    test = tmp_path / "test.json"
    test.write_text(json.dumps({"test_dataset": {"//": "note", "max_images": 2}}))
    cfg = load_config(str(train), str(test))
    assert cfg["model"]["model_select"] == "wiener" and cfg["optimizer"]["lr"] == 0.01
    assert cfg["test_dataset"]["max_images"] == 2
    assert not [k for section in cfg.values() if isinstance(section, dict) for k in section if k.startswith("//")]
    train.write_text(json.dumps({"model": {"options": {"//": "inside an object", "num_steps": 3}},
                                 "train_dataset": {"degradation": {"noise": {"//": "deeper", "type": "uniform",
                                                                             "sigma": 5}}}}))
    cfg = load_config(str(train))                                      # notes inside object values too
    assert cfg["model"]["options"] == {"num_steps": 3}
    assert cfg["train_dataset"]["degradation"]["noise"] == {"type": "uniform", "sigma": 5}
    train.write_text(json.dumps({"model": {"note": "x"}}))            # the // prefix is what is ignored
    with pytest.raises(ConfigError, match=r"unknown key 'model\.note'"):
        load_config(str(train))


def test_flags_and_specs_are_one_language(tmp_path):
    assert "`utils/config_normalise.py` translates the flags into those specs (a given spec wins) and the\n" \
           "engine reads only the specs. A run's `config.json` holds the translated specs, so it reloads as it ran." \
           in DOCS
    assert "also inside the nested\ndegradation, noise, kernel and protocol specs" in DOCS
    from utils.config import ConfigError, from_dict, load_config, public

    cfg = load_config(None, None, ["test_dataset.test_noise_level=[2.55, 7.65]"])
    assert [p["name"] for p in cfg["test_dataset"]["protocols"]] == ["uniform_2.55", "uniform_7.65"]
    given = load_config(None, None, ['test_dataset.protocols=[{"name": "mine", "noise": 5}]'])
    assert given["test_dataset"]["protocols"] == [{"name": "mine", "noise": 5, "blur": "circular", "scale": 1}]
    assert public(from_dict(public(cfg))) == public(cfg)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_dataset": {"degradation": {"noise": {"type": "uniform", "sigmaa": 5}}}}))
    with pytest.raises(ConfigError, match=r"unknown key 'train_dataset.degradation.noise.sigmaa' in .*bad.json "
                                          r"\(did you mean 'train_dataset.degradation.noise.sigma'\?\)"):
        load_config(str(bad))


# 7 -------------------------------------------------------------------------------------------------
def test_python_api_block_runs_as_written_in_a_fresh_clone(clone):
    """The block as a user pastes it into `python` at the root of a fresh clone (no ../shared)."""
    code = _code("tests/test_readme.py::test_python_api_block_runs_as_written_in_a_fresh_clone")
    assert code in README
    assert 'load_model("pretrainedmodels/compact_nrlgdn.pth")' in code
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-"], input=code, cwd=clone, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    before, after = map(float, re.fullmatch(r"PSNR (\d+\.\d\d) dB -> (\d+\.\d\d) dB\n", result.stdout).groups())
    assert 20 < before < 23 and after > before + 5          # Set12 01 × Levin kernel 0, σ = 0.01


def test_readme_test_command_is_exactly_what_ci_runs():
    """The second command at the top of the README is the last line of .ci/run; both pin CI's torch through
    .ci/constraints.txt, while requirements.txt lets users keep any torch the checkpoint reader accepts."""
    from models.checkpoint import SAFE_TORCH

    block = _code("tests/test_readme.py::test_readme_test_command_is_exactly_what_ci_runs", "bash").splitlines()
    assert "\n".join(README.splitlines()[2:6]) == "```bash\n" + "\n".join(block) + "\n```"   # README's first lines
    readme_test = block[1].split("#")[0].strip()
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().strip().splitlines()
    assert ci[-1] == readme_test == ("python -m pip install -q -r requirements.txt -c .ci/constraints.txt && "
                                     "python -m pytest -q")
    requirements = open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8").read()
    torch_lines = [line for line in requirements.splitlines() if line.startswith("torch")]
    assert torch_lines == [f"torch>={SAFE_TORCH[0]}.{SAFE_TORCH[1]}"]
    constraints = open(os.path.join(ROOT, ".ci", "constraints.txt"), encoding="utf-8").read()
    pinned = [line for line in constraints.splitlines() if line.startswith("torch==")]
    assert pinned == ["torch==2.13.0"] and f"torch>={SAFE_TORCH[0]}.{SAFE_TORCH[1]}" in README


# 8 -------------------------------------------------------------------------------------------------
def test_dnd_submission_command_line(tmp_path):
    pytest.importorskip("h5py")
    import scipy.io

    from models import build_model
    from tests.test_dnd import make_dnd

    assert "python tools/dnd_submission.py --dnd <DND folder> --out results/dnd --set model.pretrained=" in DOCS
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*args):
        return subprocess.run([sys.executable, os.path.join("tools", "dnd_submission.py"), *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)

    helped = run("--help")
    assert helped.returncode == 0 and all(f in helped.stdout for f in ("--dnd", "--out", "--set"))
    images, boxes = make_dnd(str(tmp_path / "dnd"))
    options = {"n_feat": [8, 16], "dep_S": 3, "n_resblocks": 1, "snet_width": 8}
    torch.manual_seed(0)
    torch.save(build_model("VIRNet_denoise_real", **options).state_dict(), tmp_path / "virnet.pth")
    args = ["--dnd", str(tmp_path / "dnd"), "--out", str(tmp_path / "out"),
            "--set", f"model.pretrained={tmp_path / 'virnet.pth'}", "--set", f"model.options={json.dumps(options)}",
            "--set", "test_dataset.self_ensemble=false"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert f"wrote 2 bundle(s) to {tmp_path / 'out' / 'bundled'}" in first.stdout
    for i, (img, box) in enumerate(zip(images, boxes)):
        bundle = scipy.io.loadmat(tmp_path / "out" / "bundled" / f"{i + 1:04d}.mat")
        blocks = bundle["Idenoised"][0]
        assert len(blocks) == 20
        for block, (t, l, b, r) in zip(blocks, box.astype(int)):
            assert block.shape == (b - t + 1, r - l + 1, 3) and block.dtype == np.float32
            assert 0 <= block.min() and block.max() <= 1
    again = run(*args)                                        # a rerun skips the images already bundled
    assert again.returncode == 0 and "wrote 0 bundle(s)" in again.stdout


def test_real_photo_command_with_the_published_boundary(tmp_path, capsys):
    """docs/configuration.md: `--test_config configs/test_real.json --set model.options.boundary=zeros` restores the photos
    in `test_dataset/real blurred image29/` with the compact model (here: one photo in a tmp copy)."""
    assert "--test_config configs/test_real.json \\\n    --set model.options.boundary=zeros" in DOCS
    rng = np.random.default_rng(0)
    photos, kernels = tmp_path / "real blurred image29", tmp_path / "kernels"
    from utils.io import save_image

    save_image(str(photos / "photo.png"), torch.from_numpy(rng.random((3, 40, 48))).float())
    k = np.zeros((7, 7))
    k[3, :] = 1.0
    save_image(str(kernels / "photo.png"), torch.from_numpy(k)[None].float())
    assert "--set model.options.boundary=zeros \\\n    --set model.pretrained=pretrainedmodels/compact_nrlgdn_stage5.pth" in DOCS
    args = ["--test_config", "configs/test_real.json", "--set", "model.options.boundary=zeros",
            "--set", "model.pretrained=pretrainedmodels/compact_nrlgdn_stage5.pth",
            "--set", f"test_dataset.root_path={tmp_path}", "--set", f"test_dataset.kernel_path={kernels}",
            "--set", f"test_dataset.result_save_file={tmp_path / 'results'}", "--set", "test_dataset.save_figures=false"]
    assert deblurring.main(args) == 0
    out = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / "results") for f in files
           if f == "photo_compact_nrlgdn_stage5.png"]
    assert len(out) == 1 and np.asarray(Image.open(out[0])).shape == (40, 48, 3)
    capsys.readouterr()


def test_gpu_promises_name_the_configs_and_tests_that_keep_them():
    """docs/training.md "Training on GPUs": the paper config turns grad_checkpointing on and validates / saves every
    2,000 / 1,000 steps; no GPU run exists; the tests named there exist (they walk the rest)."""
    from utils.config import load_config

    assert "no GPU run of ours exists yet" in DOCS and "No GPU run of ours exists yet" in DOCS
    assert "so\n  `configs/paper_nrlgdn.json` turns it on" in DOCS
    paper = load_config(os.path.join(ROOT, "configs", "paper_nrlgdn.json"), None)
    assert paper["model"]["grad_checkpointing"] is True
    assert (paper["train_options"]["val_every_steps"], paper["train_options"]["save_every_steps"]) == (2000, 1000)
    assert "validation / `last.pth` every 2,000 / 1,000 steps" in DOCS
    for name in ("tests/test_gpu_ready.py", "tests/test_device.py", "tests/test_ddp.py"):
        assert f"`{name}`" in DOCS and os.path.isfile(os.path.join(ROOT, name))


def test_fast_mode_snippet_and_large_photo_command(tmp_path, capsys):
    """docs/performance.md "Fast mode and large photos" and docs/photos.md "Large photos": the snippet (bf16, tiles) and the command (tile_size, precision
    auto) give the whole-image fp32 result; tiles of 160 instead of 512 so that a small image is tiled."""
    from tests.test_precision import compact, set12_crop
    from utils.io import save_image
    from utils.metrics import psnr

    code = _code("tests/test_readme.py::test_fast_mode_snippet_and_large_photo_command")
    assert "x = tiled(fast, tile=512)(y, k)" in code
    _, y, k = set12_crop("08", kernel=4, size=200)
    net = compact()
    namespace = {"net": net, "y": y, "k": k}
    exec(compile(code.replace("tile=512", "tile=160"), "docs (Fast mode)", "exec"), namespace)
    with torch.no_grad():
        reference = net(y, k)
    x = namespace["x"]
    assert x.dtype == torch.float32 and psnr(x[0].clamp(0, 1), reference[0].clamp(0, 1)) > 50

    command = ("--test_config configs/test_real.json --set model.options.boundary=zeros \\\n"
               "    --set model.pretrained=pretrainedmodels/compact_nrlgdn_stage5.pth \\\n"
               "    --set test_dataset.tile_size=512 --set test_dataset.precision=auto")
    assert command in _code("tests/test_readme.py::test_fast_mode_snippet_and_large_photo_command", "bash")
    photos, kernels = tmp_path / "real blurred image29", tmp_path / "kernels"
    save_image(str(photos / "photo.png"), y[0, :, :180])
    save_image(str(kernels / "photo.png"), (k / k.max())[0].float())
    common = ["--test_config", "configs/test_real.json", "--set", "model.options.boundary=zeros",
              "--set", "model.pretrained=pretrainedmodels/compact_nrlgdn_stage5.pth",
              "--set", f"test_dataset.root_path={tmp_path}", "--set", f"test_dataset.kernel_path={kernels}",
              "--set", "test_dataset.save_figures=false"]
    restored = {}
    for name, extra in (("whole", []), ("tiled", ["--set", "test_dataset.tile_size=160",
                                                  "--set", "test_dataset.precision=auto"])):
        out_dir = tmp_path / name
        assert deblurring.main(common + extra + ["--set", f"test_dataset.result_save_file={out_dir}"]) == 0
        [path] = [os.path.join(d, f) for d, _, files in os.walk(out_dir) for f in files
                  if f == "photo_compact_nrlgdn_stage5.png"]
        restored[name] = np.asarray(Image.open(path), dtype=np.int16)
    assert restored["tiled"].shape == (180, 200, 3)
    assert np.abs(restored["tiled"] - restored["whole"]).max() <= 2     # 8-bit levels (bf16 under auto here)
    capsys.readouterr()
