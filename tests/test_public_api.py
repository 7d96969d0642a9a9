"""The public API (`tfsim.PUBLIC_API`): `import tfsim` imports no TensorFlow, every listed module
and name resolves and is its module's `__all__`, no released name (tests/public_api.txt)
disappears, and the command-line pipelines import nothing else from tfsim."""

import ast
import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tfsim

ROOT = Path(tfsim.__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("public_api.txt")
PIPELINES = ROOT / "tfsim" / "pipelines"


def _released() -> set[str]:
    return {line.strip() for line in GOLDEN.read_text().splitlines() if line.strip() and not line.startswith("#")}


def _listed() -> set[str]:
    return {f"{module}.{name}" for module, names in tfsim.PUBLIC_API.items() for name in names}


def test_import_tfsim_imports_no_tensorflow():
    code = ("import sys, tfsim; tfsim.config; tfsim.errors; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'scann', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout  # (the config and the errors are TensorFlow-free too)


def test_public_modules_are_lazy_attributes_of_tfsim():
    assert set(tfsim.__all__) == {"PUBLIC_API", "__version__", *tfsim.PUBLIC_API}
    assert set(tfsim.__all__) <= set(dir(tfsim))
    assert tfsim.layers is importlib.import_module("tfsim.layers")
    with pytest.raises(AttributeError, match="public modules are"):
        tfsim.pipelines_  # noqa: B018


def test_version_comes_from_the_package_metadata():
    assert tfsim.__version__ == importlib.metadata.version("tfsim")
    assert tfsim.__version__.split(".")[0].isdigit()


@pytest.mark.parametrize("module", sorted(tfsim.PUBLIC_API))
def test_every_listed_name_resolves_and_is_the_modules_all(module):
    mod = getattr(tfsim, module)
    names = tfsim.PUBLIC_API[module]
    missing = [name for name in names if not hasattr(mod, name)]
    assert not missing, f"tfsim.{module} lacks {missing}"
    assert list(names) == sorted(names), f"keep PUBLIC_API[{module!r}] sorted"
    assert sorted(mod.__all__) == sorted(names), (
        f"tfsim.{module}.__all__ and tfsim.PUBLIC_API[{module!r}] differ: "
        f"only in __all__ {sorted(set(mod.__all__) - set(names))}, only listed {sorted(set(names) - set(mod.__all__))}")


def test_no_released_name_disappears():
    gone = sorted(_released() - _listed())
    assert not gone, (f"released public names removed from tfsim.PUBLIC_API: {gone}. Removing or renaming a public "
                      "name breaks users' code: keep it (deprecated), or make a new major version and edit "
                      "tests/public_api.txt")
    new = sorted(_listed() - _released())
    assert not new, f"new public names: add them to tests/public_api.txt (a minor version): {new}"


# -- the command-line pipelines use only the public API ------------------------------------------------------

def private_imports(source: str, filename: str = "<source>") -> list[str]:
    """What `source` takes from tfsim outside `tfsim.PUBLIC_API`: imports of other tfsim modules or
    names, and attributes of an imported public module that it does not list. (tfsim.pipelines'
    own modules, `_cli` included, are the pipelines themselves.)"""
    tree = ast.parse(source, filename)
    bad, public_aliases = [], {}

    def allowed_module(name: str) -> bool:
        parts = name.split(".")
        return (name == "tfsim" or parts[:2] == ["tfsim", "pipelines"]
                or (len(parts) == 2 and parts[1] in tfsim.PUBLIC_API))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tfsim" and not allowed_module(alias.name):
                    bad.append(f"{filename}:{node.lineno} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tfsim":
            parts = node.module.split(".")
            for alias in node.names:
                if node.module == "tfsim":
                    if alias.name in tfsim.PUBLIC_API:
                        public_aliases[alias.asname or alias.name] = alias.name
                    elif alias.name not in ("__version__", "PUBLIC_API"):
                        bad.append(f"{filename}:{node.lineno} from tfsim import {alias.name}")
                elif parts[1] == "pipelines":
                    continue
                elif not (len(parts) == 2 and alias.name in tfsim.PUBLIC_API.get(parts[1], ())):
                    bad.append(f"{filename}:{node.lineno} from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in public_aliases
                and node.attr not in tfsim.PUBLIC_API[public_aliases[node.value.id]]):
            bad.append(f"{filename}:{node.lineno} tfsim.{public_aliases[node.value.id]}.{node.attr}")
    return bad


def test_the_checker_finds_private_imports():
    assert private_imports("from tfsim.index import storage\nfrom tfsim.training.loop import summarize_names\n"
                           "import tfsim.options\nfrom tfsim import runs\n") == [
        "<source>:1 from tfsim.index import storage", "<source>:2 from tfsim.training.loop import summarize_names",
        "<source>:3 import tfsim.options", "<source>:4 from tfsim import runs"]
    assert private_imports("from tfsim import config as c\nc.load()\nc.parsing.load()\n") == [
        "<source>:3 tfsim.config.parsing"]
    assert private_imports("from tfsim import config, errors\nfrom tfsim.index import Index\n"
                           "from tfsim.pipelines import _cli\nconfig.load()\n") == []


def test_the_pipelines_import_only_the_public_api():
    files = sorted(PIPELINES.glob("*.py"))
    assert {f.name for f in files} >= {"_cli.py", "train.py", "evaluate.py", "index.py", "search.py", "tune.py"}
    bad = [line for f in files for line in private_imports(f.read_text(), f.relative_to(ROOT).as_posix())]
    assert not bad, f"the pipelines use tfsim names outside tfsim.PUBLIC_API: {bad}"
