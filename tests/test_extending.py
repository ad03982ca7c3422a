"""docs/extending.md, walked: every declared extension point is documented, and the noise, kernel and
protocol recipes, saved as the files the document names in a fresh clone, run as written."""
import importlib
import json
import os
import re


from tests.test_journeys import clone, run  # noqa: F401 (fixture: a fresh clone's files, no ../shared)
from utils.registry import EXTENSION_POINTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = open(os.path.join(ROOT, "docs", "extending.md"), encoding="utf-8").read()


def _block_after(phrase: str, language: str) -> str:
    match = re.search(re.escape(phrase) + r".*?```" + language + r"\n(.*?)```", DOC, re.S)
    assert match, f"docs/extending.md: no {language} block after '{phrase}'"
    return match.group(1)


def test_every_extension_point_is_declared_documented_and_registers():
    rows = {line.split("|")[1].strip().split(" ")[0] for line in DOC.splitlines() if line.startswith("| ")}
    assert {point.name for point in EXTENSION_POINTS} <= rows
    for point in EXTENSION_POINTS:
        assert os.path.isdir(os.path.join(ROOT, point.folder)), point
        if point.register:
            module, function = point.register.split(":")
            assert callable(getattr(importlib.import_module(module), function)), point
            assert f"`{function}(" in DOC, point


def test_noise_kernels_and_protocol_recipes_run_in_a_clone(clone):
    (clone / "data" / "stripe_noise.py").write_text(_block_after("Saved as `data/stripe_noise.py`", "python"))
    (clone / "data" / "box_kernels.py").write_text(_block_after("Saved as `data/box_kernels.py`", "python"))
    protocol = _block_after("saved as `configs/stripes_protocol.json`", "json")
    (clone / "configs" / "stripes_protocol.json").write_text(protocol)
    command = _block_after("## A new evaluation protocol", "bash").split()
    assert command[:2] == ["python", "deblurring.py"]
    result = run(clone, *command[2:], "--set", "test_dataset.max_images=1", "--set", "test_dataset.kernel_indices=[0]",
                 "--set", "test_dataset.baselines_only=true")
    assert result.returncode == 0, result.stderr
    summary = json.loads((clone / "results" / "stripes_baselines" / "results.json").read_text())["summary"]
    assert set(summary) == {"stripes_circular", "stripes_real_border"}
    assert summary["stripes_circular"]["wiener"]["all"]["psnr"] > summary["stripes_circular"]["degraded"]["all"]["psnr"]

    # the training spec the document gives, through the data pipeline of the clone's own files
    code = (
        "import json, numpy as np, torch\n"
        "from data.degrade import build_degradation\n"
        "from utils.config import from_dict\n"
        "spec = {'kernels': {'type': 'box', 'size': 15}, 'noise': {'type': 'stripes', 'sigma_range': [0, 25]}}\n"
        "from_dict({'train_dataset': {'degradation': spec}})\n"
        "out = build_degradation(spec)(torch.rand(3, 40, 40), np.random.default_rng(0))\n"
        "sigma = out['sigma'][0]\n"
        "print(json.dumps([list(out['k'].shape), bool((sigma == sigma[:, :1]).all()), float(out['k'].sum())]))\n"
        "try:\n"
        "    from_dict({'train_dataset': {'degradation': {'noise': {'type': 'stripes', 'sigma_rnage': [0, 5]}}}})\n"
        "except ValueError as err:\n"
        "    print(err)\n")
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[:2]
    shape, rows_constant, total = json.loads(first)
    assert shape == [1, 15, 15] and rows_constant and abs(total - 1) < 1e-6
    assert "sigma_rnage" in second and "did you mean" in second and "sigma_range" in second
