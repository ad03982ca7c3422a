"""The four journeys of our users, walked as a newcomer follows the README, in a fresh copy of the
repository beside which there is no ../shared (`clone`): reproduce a paper table from a published
checkpoint, add an unrolled variant in a new file, train then evaluate what was trained, restore one's
own photo. Commands run as subprocesses of `python deblurring.py`, so the copy's own models/ folder is
the one discovered. (The Python API journey: tests/test_readme.py runs the README's Python blocks.) The
text and blocks are read from README.md and docs/*.md through tests/docblocks.py, wherever they live."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import deblurring
from models.checkpoint import load_checkpoint
from tests import docblocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = docblocks.text()          # README.md and docs/*.md
CLONED = ("configs", "data", "engine", "models", "utils", "test_dataset", "deblurring.py")
TINY = {"num_steps": 2, "r_channels": [4, 6, 8, 10], "r_blocks": 1, "hd_channels": 4}
QUICK_EVAL = ["test_dataset.max_images=1", "test_dataset.kernel_indices=[0]"]
QUICK_TRAIN = ["train_options.total_iters=3", "train_options.max_steps_per_epoch=1", "train_options.epoch_val=2",
               "train_options.val_every_steps=0", "train_options.save_every_steps=0",
               "train_options.log_every=1", "train_options.tensorboard=false", "train_dataset.patch_size=32",
               "train_dataset.batch_size=2", "train_dataset.num_workers=0", "val_dataset.max_images=1",
               "val_dataset.patch_size=32"]


def make_clone(root):
    """Copy into `root` what a fresh clone holds (code, configs, shipped test data, our shipped checkpoints),
    nothing else; no ../shared beside it."""
    ignore = shutil.ignore_patterns("__pycache__", "real blurred image*")
    for name in CLONED:
        source = os.path.join(ROOT, name)
        (shutil.copytree(source, root / name, ignore=ignore) if os.path.isdir(source)
         else shutil.copyfile(source, root / name))
    (root / "pretrainedmodels").mkdir()
    for weights in ("compact_nrlgdn.pth", "compact_nrlgdn_stage5.pth"):     # the default and the real-photo model
        shutil.copyfile(os.path.join(ROOT, "pretrainedmodels", weights), root / "pretrainedmodels" / weights)
    assert not (root.parent / "shared").exists()
    return root


@pytest.fixture
def clone(tmp_path):
    """What a fresh clone holds (code, configs, shipped test data, our shipped checkpoint), nothing else."""
    return make_clone(tmp_path / "clone")


def run(clone, *args, timeout=600):
    """`python deblurring.py ARGS` in the clone (its own modules: no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "deblurring.py", *args], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def printed_command(line: str) -> list:
    """A printed `python deblurring.py ...` command as arguments for `run`."""
    parts = shlex.split(line)
    assert parts[:2] == ["python", "deblurring.py"], line
    return parts[2:]


def table_columns(out: str, protocol: str) -> list:
    match = re.search(rf"^{re.escape(protocol)} \(PSNR dB / SSIM, \w+\):\n(\|.*\|)$", out, re.M)
    assert match, out
    return [c.strip() for c in match.group(1).strip("|").split("|")]


# 1. Reproduce a paper table from the published checkpoints --------------------------------------------
def test_paper_command_names_the_missing_checkpoint_then_reaches_evaluation(clone):
    row = re.search(r"^\| `pretrainedmodels/NRL_GDN\.pth` \| `NRL_GDN` \| `python deblurring\.py (.*?)` \|$",
                    DOCS, re.M)
    args = shlex.split(row.group(1))
    assert args == ["--train_config", "configs/paper_nrlgdn.json", "--test_config", "configs/paper_set12_table4.json"]
    missing = run(clone, *args)
    assert missing.returncode == 2
    [line] = missing.stderr.strip().splitlines()
    assert line == ("error: model.pretrained: checkpoint not found: 'pretrainedmodels/NRL_GDN.pth'; NRL_GDN's published "
                    "weights are the file NRL_GDN.pth of the kongsjsj/NRL-GDN project (the Google Drive link in its "
                    "README): save it as pretrainedmodels/NRL_GDN.pth and run: python deblurring.py "
                    "--train_config configs/paper_nrlgdn.json --test_config configs/paper_set12_table4.json")

    torch.manual_seed(0)             # a tiny stand-in for the published file: a bare state_dict, as published
    from models import build_model
    torch.save(build_model("NRL_GDN", **TINY).state_dict(), clone / "pretrainedmodels" / "NRL_GDN.pth")
    suggested = printed_command(line.split(" and run: ")[1])
    done = run(clone, *suggested, *sets([f"model.options={json.dumps(TINY)}"] + QUICK_EVAL))
    assert done.returncode == 0, done.stderr
    assert table_columns(done.stdout, "sigma_map_gauss_5-25") == ["kernel", "degraded", "NRL_GDN", "eq22_init", "wiener"]
    saved = json.loads((clone / "results" / "Set12_table4_gauss" / "results.json").read_text())
    assert {r["image"] for r in saved["records"]} == {"01"} and saved["config"]["test_dataset"]["is_gray_scale"]


@pytest.mark.parametrize("family, user_sets, published, added", [
    ("dsdnet", ["model.model_select=DSD_full"],
     "DSD_full's published weights are the file DSD_full.pth of the setsunil/DSDNet project (models.zip, linked in "
     "its README): save it as {weights}/DSD_full.pth", []),
    ("virnet_sisr", [],
     "VIRNet_sisr's published weights are the file virnet_sisr_x2.pth of the zsyOAOA/VIRNet project (its model_zoo/ "
     "folder): save it as {weights}/virnet_sisr_x2.pth",
     ["model.pretrained={weights}/virnet_sisr_x2.pth", "model.options.snet_output=std", "model.options.kernel_axes=ij"]),
])
def test_missing_dsdnet_and_virnet_checkpoints_say_where_they_come_from(tmp_path, monkeypatch, capsys, family,
                                                                         user_sets, published, added):
    monkeypatch.chdir(ROOT)
    weights = tmp_path / "weights"
    flags = ["--train_config", f"configs/{family}_train.json", "--test_config", f"configs/{family}_test.json"]
    user_sets = ["train_dataset.is_train=false", *user_sets, f"model.model_save_file={weights}"]
    assert deblurring.main(flags + sets(user_sets)) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    command = " ".join(["python deblurring.py", *flags, *sets(user_sets + [a.format(weights=weights) for a in added])])
    assert line.endswith(f"; {published.format(weights=weights)} and run: {command}"), line


# 2. Use a model from Python (the README blocks run in tests/test_readme.py) -------------------------------
def test_load_model_builds_our_checkpoints_and_published_files(tmp_path):
    from models import build_model, load_model

    shipped = os.path.join(ROOT, "pretrainedmodels", "compact_nrlgdn.pth")
    stored = load_checkpoint(shipped)
    net = load_model(shipped)
    assert type(net).__name__ == "NRL_GDN" and not net.training
    stored = stored["model_options"]                              # stage 6 was trained with boundary circular
    assert (net.num_steps, net.boundary, net.r.m_head.out_channels) == (6, "circular", 16) == \
        (stored["num_steps"], stored["boundary"], stored["r_channels"][0])
    changed = load_model(shipped, boundary="zeros", num_steps=3)          # key by key; the rest as stored
    assert (changed.boundary, changed.num_steps, changed.r.m_head.out_channels) == ("zeros", 3, 16)
    for key, value in net.state_dict().items():
        assert torch.equal(value, changed.state_dict()[key])

    torch.manual_seed(0)
    published = build_model("NRL_GDN_Y0", **TINY)
    torch.save(published.state_dict(), tmp_path / "NRL_GDN_Y0.pth")      # a published name: bare weights
    by_file = load_model(tmp_path / "NRL_GDN_Y0.pth", **TINY)
    assert type(by_file).__name__ == "NRL_GDN_Y0"
    shutil.copyfile(tmp_path / "NRL_GDN_Y0.pth", tmp_path / "my_copy.pth")
    with pytest.raises(ValueError, match=r"my_copy\.pth: cannot tell which model it holds .* pass the name, "
                                         r"e\.g\. load_model\(path, name=\"NRL_GDN\", \*\*options\)"):
        load_model(tmp_path / "my_copy.pth", **TINY)
    by_name = load_model(tmp_path / "my_copy.pth", name="NRL_GDN_Y0", **TINY)
    y, k = torch.rand(1, 3, 24, 20), torch.full((5, 5), 1 / 25)
    with torch.no_grad():
        torch.testing.assert_close(by_name(y, k), published.eval()(y, k), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"does not match NRL_GDN: "):      # strict: the wrong model is an error
        load_model(tmp_path / "my_copy.pth", name="NRL_GDN", num_steps=2, r_channels=[4, 6, 8, 12],
                   r_blocks=1, hd_channels=4)


def test_load_model_gives_published_sr_files_their_scale_and_conventions(tmp_path):
    from models import build_model, load_model

    small = {"n_feat": [8, 16], "dep_S": 3, "n_resblocks": 1, "snet_width": 8, "dep_K": 1, "knet_width": 16}
    torch.save({"model_state_dict": build_model("VIRNet_sisr", scale=3, **small).state_dict()},
               tmp_path / "virnet_sisr_x3.pth")
    net = load_model(tmp_path / "virnet_sisr_x3.pth", **small)
    assert (type(net).__name__, net.scale, net.snet_output, net.kernel_axes) == ("VIRNet_sisr", 3, "std", "ij")
    assert load_model(tmp_path / "virnet_sisr_x3.pth", snet_output="variance", **small).snet_output == "variance"


# 3. Add a new unrolled variant ---------------------------------------------------------------------------
def variant_source() -> str:
    """The variant file the docs show (saved as `models/step_size_gdn.py`)."""
    [block] = docblocks.run_by("tests/test_journeys.py::test_variant_in_a_new_file_trains_and_evaluates_by_name")
    assert "saved as `models/step_size_gdn.py`, is the whole variant" in docblocks.read(block.file)
    return block.code


def test_variant_in_a_new_file_trains_and_evaluates_by_name(clone):
    (clone / "models" / "step_size_gdn.py").write_text(variant_source())
    options = {**TINY, "num_steps": 3, "early_stop": False}
    trained = run(clone, *sets(["train_dataset.is_train=true", "model.model_select=StepSizeGDN",
                                f"model.options={json.dumps(options)}", "train_options.run_name=step_size"]
                               + QUICK_TRAIN))
    assert trained.returncode == 0, trained.stderr
    lines = trained.stdout.strip().splitlines()
    assert lines[-2].endswith("evaluate the exported weights with:")
    exported = load_checkpoint(clone / "pretrainedmodels" / "step_size.pth")
    assert exported["model_select"] == "StepSizeGDN"
    step_size = exported["model"]["step_size"]
    assert step_size.shape == (3,) and not torch.equal(step_size, torch.ones(3))   # learned, one per step

    evaluated = run(clone, *printed_command(lines[-1]), *sets(QUICK_EVAL))
    assert evaluated.returncode == 0, evaluated.stderr
    assert table_columns(evaluated.stdout, "uniform_2.55") == ["kernel", "degraded", "step_size", "eq22_init", "wiener"]
    saved = json.loads((clone / "results" / "step_size" / "results.json").read_text())
    assert saved["config"]["model"]["model_select"] == "StepSizeGDN"


def test_a_broken_model_file_is_named_with_its_traceback(clone):
    (clone / "models" / "broken_net.py").write_text(
        "from models.registry import register_model\n\nregister_model('Broken', undefined_name)\n")
    result = run(clone, *sets(["test_dataset.baselines_only=true"] + QUICK_EVAL))
    assert result.returncode == 1
    assert 'File "' in result.stderr and "broken_net.py\", line 3, in <module>" in result.stderr   # its traceback
    assert result.stderr.strip().splitlines()[-1] == (
        "utils.registry.ExtensionFileError: models/broken_net.py: importing it to find its register_* calls "
        "failed: NameError: name 'undefined_name' is not defined")


def test_discovery_imports_registering_files_only_in_name_order(tmp_path, monkeypatch):
    from utils.registry import ExtensionFileError, discover_files

    package = tmp_path / "variants_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    order = "import variants_pkg\nvariants_pkg.ORDER = getattr(variants_pkg, 'ORDER', []) + [__name__]\n"
    (package / "b_net.py").write_text(order + "# calls register_model\n")
    (package / "a_net.py").write_text(order + "# calls register_loss\n")
    (package / "helper.py").write_text(order)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert discover_files(str(package), "variants_pkg") == ["variants_pkg.a_net", "variants_pkg.b_net"]
        assert sys.modules["variants_pkg"].ORDER == ["variants_pkg.a_net", "variants_pkg.b_net"]
        (package / "c_net.py").write_text("register_model = 1 / 0\n")
        with pytest.raises(ExtensionFileError, match=r"c_net\.py: importing it .* ZeroDivisionError") as err:
            discover_files(str(package), "variants_pkg")
        assert isinstance(err.value.__cause__, ZeroDivisionError)
    finally:
        for name in [m for m in sys.modules if m.startswith("variants_pkg")]:
            del sys.modules[name]


def _step_size_class(monkeypatch):
    """The variant class the docs show, defined without registering it."""
    import models.registry

    monkeypatch.setattr(models.registry, "register_model", lambda name, target: None)
    namespace = {}
    exec(compile(variant_source(), "docs (step_size_gdn.py)", "exec"), namespace)
    return namespace["StepSizeGDN"]


def test_per_step_variant_has_the_same_gradients_with_grad_checkpointing(monkeypatch):
    variant = _step_size_class(monkeypatch)
    torch.manual_seed(0)
    plain = variant(**{**TINY, "num_steps": 3}, early_stop=False)
    with torch.no_grad():
        plain.step_size.copy_(torch.tensor([0.5, 1.5, 0.8]))
    recomputed = variant(**{**TINY, "num_steps": 3}, early_stop=False, grad_checkpointing=True)
    recomputed.load_state_dict(plain.state_dict())
    y, k, gt = torch.rand(2, 3, 24, 24), torch.full((2, 1, 5, 5), 1 / 25), torch.rand(2, 3, 24, 24)
    for net in (plain, recomputed):
        (net(y, k) - gt).abs().mean().backward()
    grads = {name: p.grad for name, p in plain.named_parameters()}
    for name, p in recomputed.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-7, msg=name)
    step_grads = grads["step_size"]
    assert bool((step_grads != 0).all()) and len(set(step_grads.tolist())) == 3    # each step its own parameter


def test_architecture_documents_every_hook_the_engine_reads():
    from models.contract import HOOK_DEFAULTS

    engine = {name: open(os.path.join(ROOT, "engine", name), encoding="utf-8").read()
              for name in os.listdir(os.path.join(ROOT, "engine")) if name.endswith(".py")}
    used = {h for text in engine.values() for h in re.findall(r"\bhas_hook\([^,]+, \"(\w+)\"\)|\bhook\([^,]+, \"(\w+)\"\)",
                                                              text) for h in h if h}
    assert used == set(HOOK_DEFAULTS)
    strays = [(name, line) for name, text in engine.items() for line in text.splitlines()
              if re.search(r"\b(getattr|hasattr)\(", line) and not re.search(r"set_epoch|\.dataset\b", line)]
    assert not strays, f"engine reads model attributes outside models.contract.hook: {strays}"
    architecture = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8").read()
    missing = [h for h in HOOK_DEFAULTS if f"`{h}`" not in architecture]
    assert not missing and "models/contract.py" in architecture and "update(x, y, k, t)" in architecture


# 4. Train, then evaluate what I trained; run my own photo ------------------------------------------------
def test_training_prints_the_command_that_evaluates_its_export(clone):
    trained = run(clone, *sets(["train_dataset.is_train=true"] + QUICK_TRAIN))
    assert trained.returncode == 0, trained.stderr
    out = trained.stdout
    assert re.search(r"validation after epoch 2 \(step 2\): PSNR \d+\.\d\d dB on 1 image\(s\) \(best so far\)", out)
    run_dir = clone / "checkpoints" / "compact_nrlgdn"
    assert f"; curves {os.path.join('checkpoints', 'compact_nrlgdn', 'curves.png')}" in out       # redrawn at the end
    assert max(json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()) == 3
    lines = out.strip().splitlines()
    assert lines[-1] == ("python deblurring.py " + " ".join(f"--set {o}" for o in QUICK_TRAIN) +
                         " --set train_dataset.is_train=false --set model.pretrained=pretrainedmodels/compact_nrlgdn_2.pth"
                         " --set test_dataset.run_name=compact_nrlgdn")

    evaluated = run(clone, *printed_command(lines[-1]), *sets(QUICK_EVAL))
    assert evaluated.returncode == 0, evaluated.stderr
    assert table_columns(evaluated.stdout, "uniform_2.55")[2] == "compact_nrlgdn_2"
    saved = json.loads((clone / "results" / "compact_nrlgdn" / "results.json").read_text())
    assert saved["config"]["model"]["pretrained"] == "pretrainedmodels/compact_nrlgdn_2.pth"

    baselines = run(clone, *sets(["test_dataset.baselines_only=true"] + QUICK_EVAL))
    assert baselines.returncode == 0, baselines.stderr
    assert sorted(os.listdir(clone / "results")) == ["compact_nrlgdn", "default_baselines"]   # each run its own


def test_test_configs_hold_only_the_test_section_or_say_so(tmp_path, capsys):
    from utils.config import load_config

    for name in os.listdir(os.path.join(ROOT, "configs")):
        data = json.load(open(os.path.join(ROOT, "configs", name), encoding="utf-8"))
        if "test_dataset" in data:
            assert set(data) - {"//"} == {"test_dataset"}, f"configs/{name} carries {sorted(data)}"
    published_style = tmp_path / "test.json"
    published_style.write_text(json.dumps({"model": {"model_select": "wiener"}, "test_dataset": {"max_images": 1}}))
    cfg = load_config(os.path.join(ROOT, "configs", "traincolor.json"), str(published_style))
    assert cfg["model"]["model_select"] == "wiener"
    assert capsys.readouterr().err == (f"note: test config {published_style} sets model, replacing the train config's "
                                       "values for those keys\n")


def test_own_photo_is_one_command(clone, monkeypatch, capsys):
    [block] = docblocks.run_by("tests/test_journeys.py::test_own_photo_is_one_command")
    [command] = docblocks.commands(block.code)
    assert command == ["python", "deblurring.py", "--input", "photo.png", "--kernel", "kernel.png"]
    from data.degrade import blur
    from data.images import read_image
    from data.kernels import load_kernels
    from utils.io import save_image

    sharp = read_image(clone / "test_dataset" / "Set12" / "05.png")[None][..., :72, :88]
    kernel = torch.from_numpy(load_kernels(clone / "test_dataset" / "kernels" / "kernels_8.mat")[1]).float()
    save_image(clone / "photo.png", blur(sharp, kernel[None, None], mode="replicate")[0].clamp(0, 1))
    save_image(clone / "kernel.png", kernel[None] / kernel.max())
    monkeypatch.chdir(clone)
    assert deblurring.main(command[2:]) == 0
    captured = capsys.readouterr()
    assert "note: real blur is not periodic: using model.options.boundary=zeros" in captured.err
    assert "note: using pretrainedmodels/compact_nrlgdn_stage5.pth, our checkpoint trained with the zero-padded" \
        in captured.err
    run_dir = clone / "results" / "photo"
    files = {"compact_nrlgdn_stage5": "real/kernel_real/photo_compact_nrlgdn_stage5.png",
             "wiener": "real/kernel_real/photo_wiener.png", "figure": "real/figures/photo_kernel_real.png"}
    assert "photo: " + ", ".join(os.path.join("results", "photo", f) for f in files.values()) in captured.out
    assert f"| photo | 17×17 | {files['compact_nrlgdn_stage5']} | {files['wiener']} | {files['figure']} |" in \
        (run_dir / "summary.md").read_text()
    report = json.loads((run_dir / "results.json").read_text())
    assert report["photos"] == [{"photo": "photo", "kernel": "17×17", "files": files}]
    assert report["config"]["model"]["options"]["boundary"] == "zeros"
    restored = np.asarray(Image.open(run_dir / files["compact_nrlgdn_stage5"])).astype(float) / 255
    blurred = np.asarray(Image.open(clone / "photo.png")).astype(float) / 255
    truth = sharp[0].permute(1, 2, 0).numpy()
    assert restored.shape == (72, 88, 3)
    assert np.abs(restored - truth).mean() < 0.8 * np.abs(blurred - truth).mean()      # closer to the sharp photo


def test_help_names_doc_sections_that_exist(capsys):
    with pytest.raises(SystemExit):
        deblurring.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    named = re.findall(r"section '(.*?)'", text)
    headings = {" ".join(h.split()) for h in docblocks.headings()}
    assert len(named) == 3 and not [n for n in named if n not in headings], (named, sorted(headings))
    assert "--input PHOTO" in text and "--kernel KERNEL" in text


def test_photo_flags_come_together(capsys):
    with pytest.raises(SystemExit) as err:
        deblurring.parse_args(["--input", "photo.png"])
    assert err.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: --input and --kernel go together: the photo and its blur kernel")


def test_figure_labels_are_drawn_inside_the_saved_image(tmp_path, monkeypatch):
    import utils.figures as figures

    drawn = {}
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi, tight=False: drawn.update(fig=fig) or
                        save(fig, path, dpi, tight))
    image = torch.rand(3, 64, 64)
    path = figures.side_by_side(tmp_path / "f.png", image, image, gt=image, kernel=torch.rand(15, 15),
                                sigma_map=torch.rand(1, 64, 64) / 10, title=None)
    fig = drawn["fig"]
    renderer = fig.canvas.get_renderer()
    inches = fig.get_tightbbox(renderer)
    width, height = Image.open(path).size
    assert abs(width - 100 * (inches.width + 0.08)) <= 1.5 and abs(height - 100 * (inches.height + 0.08)) <= 1.5
    label = next(t for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text() == "kernel 15×15")
    box, inset = label.get_window_extent(renderer), label.axes.get_window_extent(renderer)
    assert inset.x0 <= box.x0 and box.x1 <= inset.x1 and inset.y0 <= box.y0 and box.y1 <= inset.y1
