"""The public API (`tfsim.PUBLIC_API`): `import tfsim` imports no TensorFlow, every listed module
and name resolves and is its module's `__all__`, no released name (tests/public_api.txt)
disappears, no released signature breaks its callers, and the command-line pipelines import
nothing else from tfsim.

tests/public_api.txt, the golden of the released API, holds one line per public name and per
public method or property of a public class, with its signature (`inspect.signature`, without
annotations; a class's is its constructor's):

    layers.Retrieval(candidate_embeddings=None, candidate_ids=None, k=10, ...)
    layers.Retrieval.update_candidates(self, candidate_embeddings, ids=None, *, candidate_ids=None)
    layers.Retrieval.num_candidates [property]
    config.BACKBONE_KEYS                              (not callable: the name only)

Compatible changes pass: new names, methods and parameters with defaults. A released name,
method, property or parameter that disappears or is renamed fails, as do a positional
parameter that moves or becomes keyword-only, a default removed, and a new parameter without
one. A changed default value passes with a warning (a behaviour change, not a broken call).
After a release (or a deliberate major change), write the golden again from the code:

    python -m tests.test_public_api --write
"""

import ast
import importlib
import importlib.metadata
import inspect
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import pytest

import tfsim

ROOT = Path(tfsim.__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("public_api.txt")
PIPELINES = ROOT / "tfsim" / "pipelines"


def _golden() -> dict[str, str]:
    """tests/public_api.txt: `module.name[.member]` -> its signature, " [property]" or ""."""
    entries = {}
    for line in GOLDEN.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key = re.match(r"[\w.]+", line).group(0)
            entries[key] = line[len(key):].strip()
    return entries


def _released() -> set[str]:
    return {key for key in _golden() if key.count(".") == 1}


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


# -- signatures: what the golden records, and which changes break callers ------------------------------------

def _default_text(value) -> str:
    """A default as Python source without memory addresses (a quoted repr when it is not source)."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return repr(text)
    return text


def _render(signature: inspect.Signature) -> str:
    """`signature` as Python source, without annotations: `(a, /, b=1, *args, c, **kw)`."""
    params, parts = list(signature.parameters.values()), []
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        parts.append(text if p.default is p.empty else f"{text}={_default_text(p.default)}")
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    return "(" + ", ".join(parts) + ")"


def _parameters(rendered: str) -> list[tuple[str, str, Optional[str]]]:
    """`(name, kind, default source or None)` of a rendered signature, in order."""
    args = ast.parse(f"def _{rendered}: pass").body[0].args
    out = [(a.arg, "positional_only", None) for a in args.posonlyargs]
    out += [(a.arg, "positional_or_keyword", None) for a in args.args]
    for i, default in enumerate(args.defaults):  # (the last positional parameters have them)
        j = len(out) - len(args.defaults) + i
        out[j] = (out[j][0], out[j][1], ast.unparse(default))
    if args.vararg:
        out.append((args.vararg.arg, "var_positional", None))
    out += [(a.arg, "keyword_only", None if d is None else ast.unparse(d))
            for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append((args.kwarg.arg, "var_keyword", None))
    return out


def _describe(obj) -> str:
    try:
        return _render(inspect.signature(obj)) if callable(obj) else ""
    except (TypeError, ValueError):  # (a builtin type's constructor, e.g. an exception's)
        return ""


def current_api() -> dict[str, str]:
    """The public API as the golden records it: every public name, and each public method or
    property that a public class defines or inherits from a tfsim class."""
    entries = {}
    for module, names in tfsim.PUBLIC_API.items():
        mod = getattr(tfsim, module)
        for name in names:
            obj = getattr(mod, name)
            entries[f"{module}.{name}"] = _describe(obj)
            if not inspect.isclass(obj):
                continue
            for klass in obj.__mro__:
                if not klass.__module__.startswith("tfsim"):
                    continue
                for member, value in vars(klass).items():
                    key = f"{module}.{name}.{member}"
                    if member.startswith("_") or key in entries:
                        continue
                    if isinstance(value, property):
                        entries[key] = "[property]"
                    elif inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod)):
                        entries[key] = _describe(getattr(obj, member))
    return entries


def breaking_changes(released: dict[str, str], current: dict[str, str]) -> tuple[list[str], list[str]]:
    """`(breaks, changed defaults)` from the released entries to the current ones (see the module doc)."""
    breaks, defaults = [], []
    for key, was in sorted(released.items()):
        if key not in current:
            if key.count(".") > 1:  # (a name that disappears: test_no_released_name_disappears)
                breaks.append(f"{key}: removed")
            continue
        now = current[key]
        if was == "[property]" or now == "[property]" or not was.startswith("("):
            if was.startswith("(") != now.startswith("(") or (was == "[property]") != (now == "[property]"):
                breaks.append(f"{key}: was {was or 'not callable'}, now {now or 'not callable'}")
            continue
        if not now.startswith("("):
            breaks.append(f"{key}: was callable {was}, now not")
            continue
        old, new = _parameters(was), _parameters(now)
        by_name = {p[0]: p for p in new}
        positional = [p for p in new if p[1] in ("positional_only", "positional_or_keyword")]
        old_positional = [p[0] for p in old if p[1] in ("positional_only", "positional_or_keyword")]
        for name, kind, default in old:
            if kind in ("var_positional", "var_keyword"):
                if not any(p[1] == kind for p in new):
                    breaks.append(f"{key}: no longer takes {'*' if kind == 'var_positional' else '**'}{name}")
                continue
            if name not in by_name:
                breaks.append(f"{key}: parameter `{name}` removed or renamed")
                continue
            _, new_kind, new_default = by_name[name]
            if kind in ("positional_only", "positional_or_keyword"):
                index = old_positional.index(name)
                if index >= len(positional) or positional[index][0] != name:
                    breaks.append(f"{key}: positional parameter `{name}` moved or became keyword-only")
                    continue
            if kind != new_kind and not (new_kind == "positional_or_keyword" and kind != "var_keyword"):
                breaks.append(f"{key}: parameter `{name}` was {kind}, now {new_kind}")
            if default is not None and new_default is None:
                breaks.append(f"{key}: parameter `{name}` lost its default {default}")
            elif default is not None and new_default != default:
                defaults.append(f"{key}: `{name}` default {default} -> {new_default}")
        released_names = {p[0] for p in old}
        for name, kind, default in new:
            if name not in released_names and default is None and kind not in ("var_positional", "var_keyword"):
                breaks.append(f"{key}: new parameter `{name}` without a default")
    return breaks, defaults


def write_golden(path: Path = GOLDEN) -> None:
    header = [line for line in path.read_text().splitlines() if line.startswith("#")] if path.exists() else []
    lines = [f"{key}{'' if not text else text if text.startswith('(') else ' ' + text}"
             for key, text in sorted(current_api().items())]
    path.write_text("\n".join(header + lines) + "\n")


def test_no_released_signature_breaks_its_callers():
    breaks, defaults = breaking_changes(_golden(), current_api())
    for change in defaults:
        warnings.warn(f"a released default changed (a behaviour change for callers who rely on it): {change}",
                      stacklevel=1)
    assert not breaks, (f"released signatures changed in ways that break callers: {breaks}. Keep the old form "
                        "(deprecated), or make a new major version and write tests/public_api.txt again "
                        "(`python -m tests.test_public_api --write`)")


def test_the_golden_records_signatures_of_functions_classes_methods_and_properties():
    golden = _golden()
    for key in ("index.Index.search", "index.Index.save", "index.Index.load", "index.Index.build",
                "layers.Retrieval.update_candidates", "data.pk_dataset", "metrics.retrieval_metrics"):
        assert golden[key].startswith("("), key
    assert golden["layers.Retrieval.num_candidates"] == "[property]"
    assert "(threshold, " in golden["calibration.Calibration"]  # (a dataclass: its fields)
    assert "k=10" in golden["layers.Retrieval"] and golden["config.BACKBONE_KEYS"] == ""
    assert "similarity='cosine'" in golden["index.Index.build"]


def _signature_of(source: str) -> str:
    namespace: dict = {}
    exec(source, namespace)  # (a function defined by the test itself)
    return _render(inspect.signature(namespace["f"]))


@pytest.mark.parametrize("now,problem", [
    ("def f(a, b=1, *, c=None, **kw): ...", None),
    ("def f(a, b=1, d=2, *, c=None, e=3, **kw): ...", None),  # parameters added with defaults
    ("def f(a, b=1, *, c=None, e, **kw): ...", "new parameter `e` without a default"),
    ("def f(a, b=1, *, d=None, **kw): ...", "parameter `c` removed or renamed"),
    ("def f(a, bee=1, *, c=None, **kw): ...", "parameter `b` removed or renamed"),
    ("def f(a, *, b=1, c=None, **kw): ...", "positional parameter `b` moved or became keyword-only"),
    ("def f(a, d=0, b=1, *, c=None, **kw): ...", "positional parameter `b` moved"),
    ("def f(a, b, *, c=None, **kw): ...", "parameter `b` lost its default 1"),
    ("def f(a, b=1, c=None, **kw): ...", None),  # keyword-only -> positional or keyword: still callable
    ("def f(a, b=1, *, c=None): ...", "no longer takes **kw"),
    ("def f(a, b=2, *, c=None, **kw): ...", "default 1 -> 2"),  # (a warning, not a break)
])
def test_the_signature_check_tells_breaking_from_compatible_changes(now, problem):
    released = {"m.f": _signature_of("def f(a, b=1, *, c=None, **kw): ...")}
    assert released["m.f"] == "(a, b=1, *, c=None, **kw)"
    breaks, defaults = breaking_changes(released, {"m.f": _signature_of(now)})
    found = breaks + defaults
    assert (not found) if problem is None else (len(found) == 1 and problem in found[0]), found
    assert breaking_changes({"m.C.p": "[property]"}, {"m.C.p": "(self)"})[0] == ["m.C.p: was [property], now (self)"]
    assert breaking_changes({"m.C.g": "(self)"}, {})[0] == ["m.C.g: removed"]


# -- the command-line pipelines use only the public API ------------------------------------------------------

def _public_path(parts: list[str]) -> Optional[str]:
    """The first non-public prefix of the dotted name `parts` (tfsim.X.Y...), or None when it is
    public: `tfsim.<public module>.<one of its names>...`, `tfsim.pipelines...`, tfsim's own
    `__version__` and `PUBLIC_API`."""
    if parts[0] != "tfsim" or len(parts) == 1 or parts[1] in ("pipelines", "__version__", "PUBLIC_API"):
        return None
    if parts[1] not in tfsim.PUBLIC_API:
        return ".".join(parts[:2])
    if len(parts) > 2 and parts[2] not in tfsim.PUBLIC_API[parts[1]]:
        return ".".join(parts[:3])
    return None


def _imported_module(call: ast.Call) -> Optional[tuple[str, str]]:
    """`(module, what it returns)` of `importlib.import_module("...")` / `__import__("...")`
    with a string literal (a relative name resolved against a literal `package`), else None."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    literal = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in call.args]
    keywords = {k.arg: k.value for k in call.keywords}
    if name not in ("import_module", "__import__") or not literal or literal[0] is None:
        return None
    module = literal[0]
    if name == "import_module" and module.startswith("."):
        package = literal[1] if len(literal) > 1 else None
        if package is None and isinstance(keywords.get("package"), ast.Constant):
            package = keywords["package"].value
        if not isinstance(package, str):
            return None
        dots = len(module) - len(module.lstrip("."))
        base = package.split(".")[:len(package.split(".")) - dots + 1]
        module = ".".join(base + ([module[dots:]] if module[dots:] else []))
    fromlist = len(call.args) > 3 or "fromlist" in keywords
    returns = module.split(".")[0] if name == "__import__" and not fromlist else module  # (__import__: the top)
    return module, returns


def private_imports(source: str, filename: str = "<source>") -> list[str]:
    """What `source` takes from tfsim outside `tfsim.PUBLIC_API`: imports of other tfsim modules or
    names (statements, and `importlib.import_module` / `__import__` of a string literal), and
    attribute chains on an imported tfsim module that leave the public names (`import tfsim`
    then `tfsim.index.storage`; `import tfsim.config as c` then `c.parsing`). (tfsim.pipelines'
    own modules, `_cli` included, are the pipelines themselves.)"""
    tree = ast.parse(source, filename)
    bad, bound = [], {}  # bound: a local name -> the tfsim module it names ("tfsim", "tfsim.config")

    def flag(node: ast.AST, what: str) -> None:
        entry = f"{filename}:{node.lineno} {what}"
        if entry not in bad:
            bad.append(entry)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "tfsim":
                    continue
                private = _public_path(alias.name.split("."))
                if private:
                    flag(node, f"import {alias.name}")
                else:  # `import tfsim.config` binds `tfsim`; `import tfsim.config as c` binds `c`
                    bound[alias.asname or "tfsim"] = alias.name if alias.asname else "tfsim"
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tfsim":
            for alias in node.names:
                private = _public_path(node.module.split(".") + [alias.name])
                if private or (node.module != "tfsim" and len(node.module.split(".")) > 2
                               and node.module.split(".")[1] != "pipelines"):
                    flag(node, f"from {node.module} import {alias.name}")
                elif node.module == "tfsim" and alias.name in tfsim.PUBLIC_API:
                    bound[alias.asname or alias.name] = f"tfsim.{alias.name}"
        elif isinstance(node, ast.Call) and _imported_module(node):
            module, _ = _imported_module(node)
            if module.split(".")[0] == "tfsim" and _public_path(module.split(".")):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                flag(node, f"{func}({module!r})")
    for node in ast.walk(tree):  # `m = importlib.import_module("tfsim.config")` binds `m`
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and _imported_module(node.value)):
            module, returns = _imported_module(node.value)
            if module.split(".")[0] == "tfsim" and not _public_path(module.split(".")):
                bound[node.targets[0].id] = returns
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        names, root = [], node
        while isinstance(root, ast.Attribute):
            names.append(root.attr)
            root = root.value
        if isinstance(root, ast.Name) and root.id in bound:
            private = _public_path(bound[root.id].split(".") + names[::-1])
            if private:
                flag(node, private)
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


@pytest.mark.parametrize("source,found", [
    ("import tfsim\ntfsim.index.storage.load('x')\n", ["<source>:2 tfsim.index.storage"]),
    ("import tfsim\nx = tfsim.runs\n", ["<source>:2 tfsim.runs"]),
    ("import tfsim.config as c\nc.parsing.load()\n", ["<source>:2 tfsim.config.parsing"]),
    ("import tfsim.config\ntfsim.config.parsing.load()\n", ["<source>:2 tfsim.config.parsing"]),
    ("import importlib\nimportlib.import_module('tfsim.index.storage')\n",
     ["<source>:2 import_module('tfsim.index.storage')"]),
    ("from importlib import import_module\nimport_module('.storage', 'tfsim.index')\n",
     ["<source>:2 import_module('tfsim.index.storage')"]),
    ("__import__('tfsim.runs')\n", ["<source>:1 __import__('tfsim.runs')"]),
    ("import importlib\nc = importlib.import_module('tfsim.config')\nc.parsing\n",
     ["<source>:3 tfsim.config.parsing"]),
    ("t = __import__('tfsim.config')\nt.index.storage\n", ["<source>:2 tfsim.index.storage"]),
    # public: every name listed, tfsim's own attributes, the pipelines' modules, other packages
    ("import tfsim\nimport tfsim.config as c\nimport importlib\ntfsim.index.Index.build\nc.load()\n"
     "tfsim.__version__\nimportlib.import_module('tfsim.layers').Retrieval\nimport tfsim.pipelines._cli\n"
     "tfsim.pipelines._cli.main\nimportlib.import_module('json')\nother.index.storage\n", []),
])
def test_the_checker_follows_module_bindings_and_dynamic_imports(source, found):
    assert private_imports(source) == found


def test_the_pipelines_import_only_the_public_api():
    files = sorted(PIPELINES.glob("*.py"))
    assert {f.name for f in files} >= {"_cli.py", "train.py", "evaluate.py", "index.py", "search.py", "tune.py"}
    bad = [line for f in files for line in private_imports(f.read_text(), f.relative_to(ROOT).as_posix())]
    assert not bad, f"the pipelines use tfsim names outside tfsim.PUBLIC_API: {bad}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_public_api --write   (writes tests/public_api.txt from the code)")
    write_golden()
    print(f"wrote {GOLDEN} ({len(_golden())} entries)")
