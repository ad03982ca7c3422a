"""The documentation as tests read it: README.md and docs/*.md, their headings, sections and fenced code
blocks, each block with the annotation written on the lines directly above its fence.

An annotation is one or more HTML comments, one per line, directly above the opening fence:

    <!-- test: tests/test_readme.py::test_name[, tests/other.py::test_other] -->   a named test runs the block
    <!-- run: --set train_options.total_iters=2 ... -->   arguments appended to each `python deblurring.py` line
    <!-- missing: pretrainedmodels/NRL_GDN.pth, photo.png -->   files a user supplies; a line needing one ends
                                                              with a one-line `error:` naming it (status 2)
    <!-- nproc: 1 -->          `torchrun --nproc_per_node=N` lines run with this N instead (CPU, gloo)
    <!-- save: my_test.json --> the block is written to this path of the clone before the file's bash blocks run

A test that runs a block finds it with `run_by("tests/<file>.py::<test>")` (the blocks annotated with that
test), so a doc edit changes what the test runs; tests/test_docs.py runs every other block itself.
"""
import glob
import os
import re
import shlex
from typing import Dict, List, NamedTuple, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HEADING = re.compile(r"^(#{1,6}) (.*?)\s*$")
_FENCE = re.compile(r"^```(\S*)\s*$")
_ANNOTATION = re.compile(r"^<!-- (\w+): (.*?) -->\s*$")


class Block(NamedTuple):
    file: str                  # relative to the repository root: README.md, docs/models.md, ...
    heading: str               # the nearest heading above it, without its #s
    language: str              # python, bash, json, ... ("" for a bare fence)
    code: str
    annotation: Dict[str, str]
    line: int                  # 1-based line of the opening fence

    def where(self) -> str:
        return f"{self.file}:{self.line} (under '{self.heading}')"

    def tests(self) -> List[str]:
        return [t.strip() for t in self.annotation.get("test", "").split(",") if t.strip()]


def doc_files() -> List[str]:
    """README.md, then docs/*.md in name order (paths relative to the repository root)."""
    docs = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return ["README.md"] + [d.replace(os.sep, "/") for d in docs]


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as fh:
        return fh.read()


def text() -> str:
    """Every doc file's text, README first, separated by blank lines (for phrases wherever they now live)."""
    return "\n\n".join(read(name) for name in doc_files())


def headings() -> List[str]:
    """Every heading of every doc file (outside code blocks), without its #s."""
    return [title for name in doc_files() for _, _, title in _scan(name)[0]]


def _scan(name: str):
    """([(line index, level, title)] of the headings outside code blocks, [Block])."""
    lines = read(name).splitlines()
    heads, found, heading, i = [], [], "", 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"{name}:{start + 1}: unclosed code block"
            annotation, j = {}, start - 1
            while j >= 0 and _ANNOTATION.match(lines[j]):
                key, value = _ANNOTATION.match(lines[j]).groups()
                assert key not in annotation, f"{name}:{j + 1}: annotation '{key}' given twice"
                annotation[key] = value
                j -= 1
            found.append(Block(name, heading, fence.group(1), "\n".join(body) + "\n", annotation, start + 1))
        elif _HEADING.match(line):
            m = _HEADING.match(line)
            heading = m.group(2)
            heads.append((i, len(m.group(1)), heading))
        i += 1
    return heads, found


def blocks(files: Optional[List[str]] = None) -> List[Block]:
    """Every fenced code block of README.md and docs/*.md (or of `files`), in order."""
    return [b for name in (files or doc_files()) for b in _scan(name)[1]]


def run_by(test: str, language: Optional[str] = None) -> List[Block]:
    """The blocks whose `<!-- test: ... -->` annotation names `test` ("tests/<file>.py::<name>")."""
    found = [b for b in blocks() if test in b.tests() and (language is None or b.language == language)]
    assert found, f"no {language or ''} block of README.md or docs/*.md is annotated '<!-- test: {test} -->'"
    return found


def section(title: str) -> str:
    """The text under the heading `title` (any level, any doc file) up to the next heading of the same or a
    higher level; exactly one heading may carry that title."""
    hits = []
    for name in doc_files():
        lines, heads = read(name).splitlines(), _scan(name)[0]
        for n, (i, level, heading) in enumerate(heads):
            if heading == title:
                end = next((j for j, lev, _ in heads[n + 1:] if lev <= level), len(lines))
                hits.append((name, "\n".join(lines[i + 1:end])))
    assert len(hits) == 1, f"heading '{title}': found in {[h[0] for h in hits]} (want exactly one)"
    return hits[0][1]


def commands(code: str) -> List[List[str]]:
    """The command lines of a bash block as argument lists: continuations joined, comments dropped."""
    joined, out = code.replace("\\\n", " "), []
    for line in joined.splitlines():
        args = shlex.split(line, comments=True)
        if args:
            out.append(args)
    return out
