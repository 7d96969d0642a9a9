"""The documentation runs and names only what exists.

* Every ```python block of docs/library.md and docs/migration.md runs, in order, in one
  namespace per document, in a fresh process whose working folder is a temporary one; a block
  preceded by `<!-- not run -->` is a fragment and is skipped. The figures the library example
  prints (held-out Recall@1 and MAP@R, untrained and trained) must match the ones its ```text
  output block shows, within what another CPU's float rounding moves them, and training must
  raise MAP@R.
* Every dotted `tfsim.X.Y` name in README.md and docs/*.md (and every `from tfsim.X import Y`)
  resolves, found by reading the source (no TensorFlow import, so this stays fast); the library
  and migration guides name only public names (`tfsim.PUBLIC_API`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import tfsim

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_DOCS = ("library.md", "migration.md")  # their python blocks run; both name public names only
SKIP_MARK = "<!-- not run -->"
FIGURES = re.compile(r"^(untrained|trained):\s+Recall@1 ([0-9.]+)\s+MAP@R ([0-9.]+)\s*$", re.M)
FIGURE_TOLERANCE = 0.03  # another CPU (or thread count) rounds differently over 120 steps
NAME = re.compile(r"(?<![\w./-])tfsim(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from (tfsim(?:\.\w+)*) import ([\w, ()]+)", re.M)


def _blocks(path: Path) -> list[tuple[int, str]]:
    """(first line number, source) of each ```python block to run, in order."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if previous != SKIP_MARK:
                out.append((i + 2, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return out


# Runs each document's blocks in one namespace; a block is compiled with its document's name and
# line numbers, so a traceback points into the document.
RUNNER = """
import json, sys
for doc, blocks in json.load(open(sys.argv[1])):
    namespace = {"__name__": "__main__"}
    for line, source in blocks:
        exec(compile("\\n" * (line - 1) + source, doc, "exec"), namespace)
"""


def _text_blocks(path: Path) -> list[str]:
    """The lines of the document's ```text blocks (what its examples print)."""
    return [line for block in re.findall(r"^```text\n(.*?)^```", path.read_text(), re.S | re.M)
            for line in block.splitlines() if line.strip()]


def _shape(line: str) -> str:
    return re.sub(r"\d+(?:\.\d+)?", "#", line.strip())


def test_blocks_are_found_and_fragments_skipped(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("text\n```python\na = 1\n```\n\n<!-- not run -->\n```python\nboom\n```\n```python\nb = a\n```\n")
    assert _blocks(doc) == [(3, "a = 1\n"), (11, "b = a\n")]
    doc.write_text("```text\nrecall 0.91 of 480\n```\n```python\nx\n```\n")
    assert [_shape(line) for line in _text_blocks(doc)] == ["recall # of #"]


@pytest.mark.slow  # trains the library example's model (120 steps), exports and indexes: about 25 s
def test_documented_python_blocks_run_and_print_the_documented_figures(tmp_path):
    docs = [(str(DOCS / name), _blocks(DOCS / name)) for name in RUN_DOCS if (DOCS / name).is_file()]
    assert docs and docs[0][1], "docs/library.md has no python block to run"
    (tmp_path / "blocks.json").write_text(json.dumps(docs))
    (tmp_path / "runner.py").write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "blocks.json")], cwd=work,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-6000:]}"
    printed = {kind: (float(r1), float(mapr)) for kind, r1, mapr in FIGURES.findall(out.stdout)}
    shown = {kind: (float(r1), float(mapr)) for kind, r1, mapr in FIGURES.findall((DOCS / "library.md").read_text())}
    assert set(printed) == set(shown) == {"untrained", "trained"}, (printed, shown)
    for kind in shown:
        for name, got, documented in zip(("Recall@1", "MAP@R"), printed[kind], shown[kind]):
            assert abs(got - documented) <= FIGURE_TOLERANCE, (
                f"{kind} {name}: the example printed {got}, docs/library.md shows {documented}; update the doc")
    assert printed["trained"][1] > printed["untrained"][1], printed
    # every output line the guide shows is printed (numbers aside: they vary by machine)
    run_lines = {_shape(line) for line in out.stdout.splitlines()}
    missing = [line for line in _text_blocks(DOCS / "library.md") if _shape(line) not in run_lines]
    assert not missing, f"docs/library.md shows output the example does not print: {missing}\n{out.stdout}"


# ---- every tfsim name the docs mention resolves (read from the source, no import) ----

def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _symbols(path: Path) -> dict[str, ast.AST]:
    """The names a module defines at top level: functions, classes, assignments, imports."""
    out: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        out[name.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = node
    return out


def _lazy_names(path: Path) -> set[str]:
    """`__all__` of a module that serves its names from a PEP 562 `__getattr__`."""
    symbols = _symbols(path)
    if "__getattr__" not in symbols or "__all__" not in symbols:
        return set()
    value = symbols["__all__"].value
    return {elt.value for elt in getattr(value, "elts", []) if isinstance(elt, ast.Constant)}


def _class_has(cls: ast.ClassDef, path: Path, attr: str) -> bool:
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == attr:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                return True
    for base in cls.bases:  # a base defined in the same module
        found = _symbols(path).get(base.id) if isinstance(base, ast.Name) else None
        if isinstance(found, ast.ClassDef) and _class_has(found, path, attr):
            return True
    return False


def _resolve_in(path: Path, package: list[str], rest: list[str]) -> bool:
    if not rest:
        return True
    name, *more = rest
    node = _symbols(path).get(name)
    if node is None:
        sub = _module_file(package + [name]) if path.name == "__init__.py" else None
        if sub is not None:
            return _resolve_in(sub, package + [name], more)
        return name in _lazy_names(path) and not more
    if isinstance(node, ast.ImportFrom):
        source = (node.module or "").split(".")
        original = next(a.name for a in node.names if (a.asname or a.name) == name)
        if source[0] != "tfsim":
            return True  # another library's name (e.g. keras), not checked here
        target = _module_file(source)
        if target is None:
            return False
        return _resolve_in(target, source if target.name == "__init__.py" else source[:-1], [original, *more])
    if isinstance(node, ast.ClassDef):
        return len(more) == 0 or (len(more) == 1 and _class_has(node, path, more[0]))
    return not more  # a function or a value: nothing below it is looked up


def resolves(dotted: str) -> bool:
    """Whether `tfsim.a.b...` names a module, or something defined (or re-exported) in one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        path = _module_file(parts[:i])
        if path is not None:
            package = parts[:i] if path.name == "__init__.py" else parts[:i - 1]
            return _resolve_in(path, package, parts[i:])
    return False


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _mentioned(path: Path) -> set[str]:
    text = path.read_text()
    names = {name.rstrip(".") for name in NAME.findall(text)}
    for module, imported in FROM_IMPORT.findall(text):
        names |= {f"{module}.{n.strip()}" for n in imported.strip("()").split(",") if n.strip()}
    return names


def test_the_resolver_can_say_no():
    assert resolves("tfsim.data.pk_dataset") and resolves("tfsim.index.Index.build")
    assert resolves("tfsim.layers.ScannRetrieval.compute_score")  # inherited from Retrieval
    assert resolves("tfsim.pipelines.train") and resolves("tfsim.PUBLIC_API")
    assert not resolves("tfsim.layers.BruteForceRetrieval")
    assert not resolves("tfsim.index.Index.lookup")
    assert not resolves("tfsim.data.pk_dataset.sampler")
    assert not resolves("tfsim.nowhere.thing")


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: p.name)
def test_every_tfsim_name_in_the_docs_resolves(doc):
    missing = sorted(name for name in _mentioned(doc) if not resolves(name))
    assert not missing, f"{doc.name} names what tfsim does not have: {missing}"


@pytest.mark.parametrize("name", RUN_DOCS)
def test_the_library_guides_name_only_public_names(name):
    doc = DOCS / name
    if not doc.is_file():
        pytest.skip(f"no docs/{name}")
    private = []
    for dotted in sorted(_mentioned(doc)):
        parts = dotted.split(".")
        if len(parts) == 1 or parts[1] in ("PUBLIC_API", "__version__") or parts[1] == "pipelines":
            continue  # (`python -m tfsim.pipelines.X`: the commands, not a Python API)
        if parts[1] not in tfsim.PUBLIC_API or (len(parts) > 2 and parts[2] not in tfsim.PUBLIC_API[parts[1]]):
            private.append(dotted)
    assert not private, f"docs/{name} names what is not in tfsim.PUBLIC_API: {private}"
