"""The package's layers hold: every `tfsim` module imports only from its own layer or the layers
below it (counting imports inside functions), no two sub-packages import each other, no modules
import each other in a circle, and an import inside a function says why it is lazy
(`# lazy: <reason>`). The layers, bottom to top, are the ones the
package docstring (`tfsim/__init__.py`) and the README's Layout describe."""

import ast
from pathlib import Path

import pytest

import tfsim

PACKAGE = Path(tfsim.__file__).parent
LAYERS = [
    {"errors", "options", "distances", "locks", "files"},
    {"data"},
    {"losses", "models"},
    {"config"},
    {"runs"},
    {"evaluation", "metrics", "calibration", "callbacks"},
    {"index", "layers"},
    {"export"},
    {"training"},
    {"tuning"},
    {"catalogue"},
    {"pipelines"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    """`tfsim.index.storage` -> `index`; `tfsim` itself -> `` (the package root)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def _imports(path: Path):
    """`(imported tfsim module, line, inside a function, source lines)` for each import in `path`."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: a relative import; tfsim imports absolutely")
            # `from package import module` imports the module; `from module import name`, the module
            names = [f"{node.module}.{alias.name}" if _is_module(f"{node.module}.{alias.name}") else node.module
                     for alias in node.names]
        for name in names:
            yield name, node.lineno, id(node) in nested, lines


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(p for p in rel.parts if p != "__init__"), path


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(module) for module, _ in _modules()} - {""}
    assert parts <= set(RANK), f"give these a layer here and in tfsim/__init__.py: {sorted(parts - set(RANK))}"


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda x: str(x) if isinstance(x, str) else "")
def test_imports_point_down(module, path):
    source_part = _part(module)
    if not source_part:
        return
    upward = sorted({f"{name} (line {line})" for name, line, _, _ in _imports(path)
                     if name.startswith("tfsim.") and _part(name) in RANK and RANK[_part(name)] > RANK[source_part]})
    assert not upward, f"{module} ({source_part}, layer {RANK[source_part]}) imports upward: {upward}"


def test_no_two_sub_packages_import_each_other():
    edges = {(_part(module), _part(name)) for module, path in _modules() for name, *_ in _imports(path)
             if name.startswith("tfsim.") and _part(module) and _part(name) != _part(module)}
    both_ways = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    assert not both_ways, f"sub-packages that import each other: {both_ways}"


def test_imports_inside_functions_say_why_they_are_lazy():
    unexplained = []
    for module, path in _modules():
        for name, line, inside, lines in _imports(path):
            if not inside:
                continue
            comments = [text.split("#", 1)[1] for text in lines[max(0, line - 4):line] if "#" in text]
            if not any(c.strip().startswith("lazy:") or " lazy:" in c for c in comments):
                unexplained.append(f"{module}:{line} {name}")
    assert not unexplained, f"function-level imports without a `# lazy: <reason>` comment: {sorted(set(unexplained))}"


def _module_graph() -> dict[str, set[str]]:
    """Module -> the tfsim modules it imports (a package counts as its `__init__`)."""
    modules = dict(_modules())
    return {module: {name for name, *_ in _imports(path) if name in modules and name != module}
            for module, path in modules.items()}


def test_no_import_cycles_among_modules():
    graph = _module_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"modules that import each other in a circle: {cycles}"
