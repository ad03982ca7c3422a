"""Every fenced code block of README.md and docs/*.md is executed by a test (syntax: tests/docblocks.py,
docs/testing.md). A block annotated `<!-- test: tests/<file>.py::<test> -->` is run by that test, which reads
it with `docblocks.run_by(...)`; every other block is run here, in a fresh clone (no ../shared beside it):
```python blocks with `python -`, ```bash blocks line by line (`python deblurring.py ...` and
`torchrun ... deblurring.py ...`, with the block's `run:` arguments appended), ```json blocks loaded as
configs. A block no test runs fails `test_every_block_is_run_by_a_test`, naming its file and heading."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests import docblocks
from tests.test_journeys import make_clone

ROOT = docblocks.ROOT
KEYS = {"test", "run", "missing", "nproc", "save"}
RUNNABLE = {"python", "bash", "json"}
GENERIC = [b for b in docblocks.blocks() if not b.tests()]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _test_functions(path):
    """Names of the test functions defined at the top level of a test file."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def _command_problem(args, block):
    """Why the generic runner cannot run this command line, or None."""
    if args[:2] == ["python", "deblurring.py"]:
        return None
    if args[0] == "torchrun" and "deblurring.py" in args:
        return None if "nproc" in block.annotation else "a torchrun line needs <!-- nproc: N -->"
    return f"the generic runner runs only `python deblurring.py` / `torchrun ... deblurring.py` lines, not {args[0]!r}"


def test_every_block_is_run_by_a_test():
    problems = []
    for b in docblocks.blocks():
        unknown = set(b.annotation) - KEYS
        if unknown:
            problems.append(f"{b.where()}: unknown annotation {sorted(unknown)} (known: {sorted(KEYS)})")
        for test in b.tests():
            path, _, name = test.partition("::")
            if not os.path.isfile(os.path.join(ROOT, path)) or name.split("[")[0] not in _test_functions(path):
                problems.append(f"{b.where()}: the annotated test {test} does not exist")
                continue
            source = open(os.path.join(ROOT, path), encoding="utf-8").read()
            reads = re.search(r"run_by\(\s*['\"]" + re.escape(test) + r"['\"]", source) or \
                os.path.basename(b.file) in source          # or reads the doc file itself (a test of its own)
            if not reads:
                problems.append(f"{b.where()}: {test} does not read the block (docblocks.run_by('{test}'))")
        if b.tests():
            continue
        if b.language not in RUNNABLE:
            problems.append(f"{b.where()}: a ```{b.language} block that no test runs: annotate it "
                            "<!-- test: tests/<file>.py::<test> --> and read it there with docblocks.run_by")
        elif b.language == "bash":
            for args in docblocks.commands(b.code):
                why = _command_problem(args, b)
                if why:
                    problems.append(f"{b.where()}: {why}")
        elif b.language == "json" and "save" not in b.annotation and not _is_config(json.loads(b.code)):
            problems.append(f"{b.where()}: a JSON block that is not a config: annotate the test that uses it")
    assert not problems, "\n".join(problems)


def test_run_by_names_only_annotated_blocks():
    """Every docblocks.run_by("...") in tests/ names a test that some block is annotated with."""
    annotated = {t for b in docblocks.blocks() for t in b.tests()}
    for name in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if name.endswith(".py") and name != "docblocks.py":
            source = open(os.path.join(ROOT, "tests", name), encoding="utf-8").read()
            for test in re.findall(r"run_by\(\s*['\"](tests/[^'\"]+)['\"]", source):
                assert test in annotated, f"tests/{name}: run_by('{test}'), but no block carries that annotation"


# the generic runner --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_clone(tmp_path_factory.mktemp("docs") / "clone")


def _fresh(template, tmp_path, n):
    """A fresh clone per command line: each one runs as if typed first, like the doc shows it."""
    root = tmp_path / f"clone{n}"
    shutil.copytree(template, root)
    return root


def _is_config(data):
    from utils.config import SCHEMA

    return isinstance(data, dict) and bool(set(data) - {"//"}) and set(data) - {"//"} <= set(SCHEMA)


def _load_json_config(path, data):
    from utils.config import load_config

    return load_config(None, str(path)) if set(data) - {"//"} == {"test_dataset"} else load_config(str(path), None)


def _saved_blocks(block):
    """The `save:` JSON blocks of the block's doc file: (path in the clone, text)."""
    return [(b.annotation["save"], b.code) for b in docblocks.blocks([block.file]) if "save" in b.annotation]


def _argv(args, block):
    extra = docblocks.commands(block.annotation.get("run", ""))
    extra = extra[0] if extra else []
    if args[0] == "torchrun":
        nproc = block.annotation["nproc"]
        at = args.index("deblurring.py")
        flags = [f"--nproc_per_node={nproc}" if a.startswith("--nproc_per_node") else a for a in args[1:at]]
        if not any(f.startswith(("--rdzv", "--master", "--standalone")) for f in flags):
            flags.append("--standalone")                # a free port of this machine
        return [sys.executable, "-m", "torch.distributed.run", *flags, *args[at:], *extra]
    return [sys.executable, *args[1:], *extra]


def _run_bash(block, template, tmp_path):
    missing = [m.strip() for m in block.annotation.get("missing", "").split(",") if m.strip()]
    named = set()
    for n, args in enumerate(docblocks.commands(block.code)):
        clone = _fresh(template, tmp_path, n)
        for path, text in _saved_blocks(block):
            (clone / path).write_text(text, encoding="utf-8")
        argv = _argv(args, block)
        done = subprocess.run(argv, cwd=clone, env=_env(), capture_output=True, text=True, timeout=600)
        shown = " ".join(args)
        if done.returncode == 0:
            continue
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and lines and "Traceback" not in done.stderr, \
            f"{block.where()}: `{shown}` exited with {done.returncode}:\n{done.stderr[-3000:]}"
        last = lines[-1]
        assert last.startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, \
            f"{block.where()}: `{shown}` must end with one line `error: ...`, got:\n{done.stderr[-3000:]}"
        hit = [m for m in missing if m in last]
        assert hit, (f"{block.where()}: `{shown}` failed, but its error names none of the files a user supplies "
                     f"(<!-- missing: ... -->: {missing}):\n{last}")
        for m in hit:
            assert not os.path.exists(os.path.join(clone, m)), f"{m} exists in a fresh clone: not missing"
        named.update(hit)
    stale = sorted(set(missing) - named)
    assert not stale, f"{block.where()}: <!-- missing: --> lists {stale}, which no line of the block needs"


def _run_python(block, template, tmp_path):
    clone = _fresh(template, tmp_path, 0)
    done = subprocess.run([sys.executable, "-"], input=block.code, cwd=clone, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{block.where()}:\n{done.stderr[-3000:]}"


def _run_json(block, tmp_path):
    data = json.loads(block.code)
    path = tmp_path / os.path.basename(block.annotation.get("save", "block.json"))
    path.write_text(block.code, encoding="utf-8")
    assert _is_config(data), f"{block.where()}: not a config (sections {sorted(data)})"
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)                                  # relative paths as from the repository root
        _load_json_config(path, data)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("block", GENERIC, ids=[f"{b.file}:{b.line}" for b in GENERIC])
def test_block_runs_as_written(block, template, tmp_path):
    if block.language == "bash":
        _run_bash(block, template, tmp_path)
    elif block.language == "python":
        _run_python(block, template, tmp_path)
    elif block.language == "json":
        _run_json(block, tmp_path)
    else:
        pytest.fail(f"{block.where()}: no test runs this ```{block.language} block (see test_every_block_is_run_by_a_test)")


# text blocks with a test of their own, and the docs' own shape -----------------------------------------
def test_architecture_tree_names_paths_that_exist():
    """docs/ARCHITECTURE.md's layout tree: every folder and .py file it names exists."""
    import glob

    [block] = docblocks.run_by("tests/test_docs.py::test_architecture_tree_names_paths_that_exist")
    parent, absent = "", []
    for line in block.code.splitlines():
        first = line.split()[0] if line and not line[0].isspace() else ""
        if first.endswith("/"):
            parent = first
            for folder in line.split("  ")[0].split():      # "tests/ benchmarks/ tools/"
                if not os.path.isdir(os.path.join(ROOT, folder)):
                    absent.append(folder)
        elif first and not os.path.exists(os.path.join(ROOT, first)):
            absent.append(first)
        for name in re.findall(r"[\w*/]+\.py\b", line):
            if not (glob.glob(os.path.join(ROOT, name)) or glob.glob(os.path.join(ROOT, parent, name))):
                absent.append(os.path.join(parent, name) if "/" not in name else name)
    assert not absent, f"docs/ARCHITECTURE.md names paths that do not exist: {absent}"


def _slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_docs_resolve():
    """Every relative link of README.md and docs/*.md points to a file that exists, and to a heading there."""
    broken = []
    for name in docblocks.doc_files():
        text = re.sub(r"```.*?```", "", docblocks.read(name), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(name), path)) if path else \
                os.path.join(ROOT, name)
            if not os.path.exists(full):
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and full.endswith(".md"):
                rel = os.path.relpath(full, ROOT).replace(os.sep, "/")
                heads = [_slug(t) for _, _, t in docblocks._scan(rel)[0]] if rel in docblocks.doc_files() else \
                    [_slug(m) for m in re.findall(r"^#+ (.*)$", open(full, encoding="utf-8").read(), re.M)]
                if anchor not in heads:
                    broken.append(f"{name}: {target} (no heading '#{anchor}')")
    assert not broken, "\n".join(broken)


def test_readme_is_short_and_both_indexes_list_every_doc():
    readme = docblocks.read("README.md")
    assert len(readme.splitlines()) <= 110, f"README.md has {len(readme.splitlines())} lines: move text to docs/"
    index = docblocks.read("docs/README.md")
    for name in docblocks.doc_files():
        if name.startswith("docs/") and not os.path.basename(name).startswith("_") and name != "docs/README.md":
            assert f"]({name})" in readme, f"README.md does not link {name}"
            assert f"]({os.path.basename(name)}" in index, f"docs/README.md does not link {name}"
    assert "](docs/extending.md)" in readme and "](extending.md)" in index      # written beside these docs
