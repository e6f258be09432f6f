"""Import rules of vlmedge, checked on the source with ``ast`` (nothing is imported, so a broken module cannot
hide its imports and the check costs no torch):

* no import cycle between the project's modules;
* the core (``vlmedge/`` except ``vlmedge/cli/``) imports neither ``vlmedge.runtime`` nor ``vlmedge.export``,
  nor torch: it is what the device and the host share;
* ``vlmedge.runtime`` (the device library) imports neither ``vlmedge.export`` nor torch or a library built on it.

Every import counts wherever it is written: module level, inside a function (a lazy import still runs, and a
cycle through one still bites at call time), ``from . import x`` resolved against the importing module,
``importlib.import_module("literal")``, and the lazy attribute tables of the package ``__init__`` files
(``_LAZY = {"Name": ("module", "attr")}``). Names built at run time are not seen.

The checker lives here, not in the package: it is a test of the tree. ``test_checker_finds_*`` run it on a small
fake tree with known faults, so a checker that stopped seeing imports fails instead of passing quietly.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# source folder -> the package it is installed as (package-dir in pyproject.toml)
LAYOUT = {"vlmedge": "vlmedge", "runtime": "vlmedge.runtime", "export": "vlmedge.export"}
SKIP_PARTS = {"assets", "build", "__pycache__"}  # shipped data and build trees, not modules

# torch and what imports it on import: none of them may reach the device library or the core
TORCH_STACK = ("torch", "torchvision", "torchaudio", "functorch", "timm", "open_clip", "transformers",
               "safetensors.torch")


# ------------------------------------------------------------------------------------------------ the checker

@dataclass(frozen=True)
class Import:
    importer: str  # module name of the importing file
    name: str  # absolute dotted name imported (a project module, or anything outside the project)
    path: Path
    line: int
    how: str  # "module level", "in a function", "importlib", "lazy table"

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line} ({self.how})"


@dataclass(frozen=True)
class Step:
    """One edge of a cycle: ``module`` needs ``needs`` because of ``imp`` (an import of ``needs`` itself, or of a
    module inside the package ``needs``, whose ``__init__`` runs first)."""

    module: str
    needs: str
    imp: Import


@dataclass
class Findings:
    modules: dict[str, Path]
    imports: list[Import]
    cycles: list[list[Step]] = field(default_factory=list)  # each: the steps of one cycle, in order
    forbidden: list[str] = field(default_factory=list)

    def message(self, root: Path) -> str:
        lines = []
        for cycle in self.cycles:
            lines.append("import cycle: " + " -> ".join([s.module for s in cycle] + [cycle[0].module]))
            for s in cycle:
                via = "" if s.imp.name == s.needs else f" (imports {s.imp.name})"
                lines.append(f"    {s.module} -> {s.needs}{via} at {s.imp.where(root)}")
        lines += [f"forbidden: {f}" for f in self.forbidden]
        return "\n".join(lines)


def discover(root: Path, layout: dict[str, str] = LAYOUT) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package __init__) for every .py under the layout's folders."""
    modules = {}
    for folder, package in layout.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder)
            if SKIP_PARTS.intersection(rel.parts):
                continue
            parts = rel.with_suffix("").parts
            is_package = parts[-1] == "__init__"
            modules[".".join((package, *(parts[:-1] if is_package else parts)))] = (path, is_package)
    return modules


def _absolute(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if not level:
        return module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_import_module_call(node: ast.Call) -> bool:
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or \
        (isinstance(f, ast.Name) and f.id in ("import_module", "__import__"))


def _lazy_table_names(node: ast.Assign) -> list[tuple[str, int]]:
    """``_LAZY = {"Name": ("module", "attr"), ...}`` at module level -> [(module, line)]."""
    named = any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
    if not named or not isinstance(node.value, ast.Dict):
        return []
    out = []
    for value in node.value.values:
        if isinstance(value, ast.Tuple) and value.elts and _literal(value.elts[0]):
            out.append((_literal(value.elts[0]), value.lineno))
    return out


def imports_of(module: str, path: Path, is_package: bool, known: set[str]) -> list[Import]:
    """Every import written in one file, as absolute names. For ``from X import y`` the name is ``X.y`` when that
    is a module of the project (importing a submodule), else ``X``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_function: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(fn) if n is not fn)
    out: list[Import] = []

    def add(name: str, node: ast.AST, how: str | None = None) -> None:
        how = how or ("in a function" if id(node) in in_function else "module level")
        out.append(Import(module, name, path, node.lineno, how))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                add(sub if sub in known else base, node)
        elif isinstance(node, ast.Call) and _is_import_module_call(node) and node.args:
            name = _literal(node.args[0])
            if name is None:
                continue  # built at run time: not visible here
            if name.startswith("."):
                package = next((_literal(k.value) for k in node.keywords if k.arg == "package"), None)
                if package is None and any(k.arg == "package" and isinstance(k.value, ast.Name)
                                           and k.value.id in ("__name__", "__package__") for k in node.keywords):
                    package = module if is_package else module.rpartition(".")[0]
                if package is None:
                    continue
                level = len(name) - len(name.lstrip("."))
                name = _absolute(package, True, level, name.lstrip(".") or None)
            add(name, node, "importlib")
        elif isinstance(node, ast.Assign) and node in tree.body:
            for name, line in _lazy_table_names(node):
                out.append(Import(module, name, path, line, "lazy table"))
    return out


def _project_module(name: str, known: set[str]) -> str | None:
    """The project module an imported name lands in (its longest known prefix), None outside the project."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _edges(imports: list[Import], known: set[str]) -> dict[str, dict[str, Import]]:
    """importer -> {imported project module -> first import that makes the edge}.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: those packages are edges too, except the
    importer's own packages (Python initializes them before the importer, so they cannot close a new cycle). An
    edge to one of the importer's own packages written out (``from vlmedge import __version__``) counts."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in known}
    for imp in imports:
        target = _project_module(imp.name, known)
        if target is None:
            continue
        own = set(_ancestors(imp.importer))
        for t in [*(a for a in _ancestors(target) if a in known and a not in own), target]:
            if t != imp.importer:
                graph[imp.importer].setdefault(t, imp)
    return graph


def _strong_components(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep import chains); components of 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _cycle_path(graph: dict[str, dict[str, Import]], component: list[str]) -> list[Step]:
    """One shortest cycle through the component's first module, as its steps (breadth-first search)."""
    members, start = set(component), component[0]
    previous: dict[str, Step] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w, imp in sorted(graph[v].items()):
                if w not in members:
                    continue
                if w == start:
                    path = [Step(v, w, imp)]
                    while path[0].module != start:
                        path.insert(0, previous[path[0].module])
                    return path
                if w not in previous:
                    previous[w] = Step(v, w, imp)
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")  # a strong component always has one


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _forbidden(imp: Import) -> str | None:
    """Why this import breaks a direction rule, or None."""
    src, name = imp.importer, imp.name
    torch = next((t for t in TORCH_STACK if _within(name, t)), None)
    if _within(src, "vlmedge.runtime"):
        if _within(name, "vlmedge.export"):
            return "the device library must not need the export toolchain"
        if torch:
            return "the device library is torch-free" + ("" if torch == "torch" else f" ({torch} imports torch)")
    elif not _within(src, "vlmedge.export") and not _within(src, "vlmedge.cli"):  # the core
        if _within(name, "vlmedge.runtime") or _within(name, "vlmedge.export"):
            return "the core is shared by device and host: it imports neither side"
        if torch:
            return "the core is torch-free" + ("" if torch == "torch" else f" ({torch} imports torch)")
    return None


def check_tree(root: Path, layout: dict[str, str] = LAYOUT) -> Findings:
    found = discover(root, layout)
    known = set(found)
    imports = [imp for name, (path, is_package) in found.items() for imp in imports_of(name, path, is_package, known)]
    findings = Findings({n: p for n, (p, _) in found.items()}, imports)
    graph = _edges(imports, known)
    findings.cycles = [_cycle_path(graph, c) for c in _strong_components(graph)]
    for imp in imports:
        reason = _forbidden(imp)
        if reason:
            findings.forbidden.append(f"{imp.importer} -> {imp.name} at {imp.where(root)}: {reason}")
    return findings


# ------------------------------------------------------------------------------------------ the real tree

def test_the_tree_has_no_import_cycles_and_no_forbidden_imports():
    findings = check_tree(ROOT)
    # sanity: the walk saw the tree (a wrong root or layout would find nothing and pass)
    assert len(findings.modules) > 40 and len(findings.imports) > 200
    for name in ("vlmedge", "vlmedge.cli.main", "vlmedge.runtime.app", "vlmedge.export.bundle"):
        assert name in findings.modules
    if findings.cycles or findings.forbidden:
        pytest.fail("\n" + findings.message(ROOT), pytrace=False)


# ------------------------------------------------------------------------------- the checker on a fake tree

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


CLEAN = {
    "vlmedge/__init__.py": "from vlmedge.errors import Error\n",
    "vlmedge/errors.py": "class Error(Exception):\n    pass\n",
    "vlmedge/geometry.py": "from . import errors\nfrom .errors import Error\n",
    "vlmedge/cli/__init__.py": "from vlmedge.cli.main import main\n",
    "vlmedge/cli/main.py": "from vlmedge.cli import run\n\ndef main():\n    return run.go()\n",
    "vlmedge/cli/run.py": "def go():\n    from vlmedge.runtime.loop import step\n    import vlmedge.export.tool\n",
    "vlmedge/assets/model/not_a_module.py": "import torch\n",
    "runtime/__init__.py": '_LAZY = {"step": ("vlmedge.runtime.loop", "step")}\n',
    "runtime/loop.py": "import numpy\nfrom ..geometry import Error\n\ndef step():\n    pass\n",
    "export/__init__.py": "",
    "export/tool.py": "import torch\nfrom vlmedge.runtime import loop\n",
}


def test_checker_passes_a_clean_fake_tree(tmp_path):
    _write(tmp_path, CLEAN)
    findings = check_tree(tmp_path)
    assert findings.cycles == [] and findings.forbidden == [], findings.message(tmp_path)
    assert "vlmedge.assets.model.not_a_module" not in findings.modules
    edges = {(i.importer, i.name) for i in findings.imports}
    assert ("vlmedge.geometry", "vlmedge.errors") in edges  # `from . import errors`: the submodule
    assert ("vlmedge.runtime.loop", "vlmedge.geometry") in edges  # `from ..geometry import Error`
    assert ("vlmedge.runtime", "vlmedge.runtime.loop") in edges  # the lazy table
    assert ("vlmedge.cli.main", "vlmedge.cli.run") in edges


def test_checker_finds_cycles_and_forbidden_imports(tmp_path):
    _write(tmp_path, {
        **CLEAN,
        # a three-module cycle through a function-level relative import and an importlib call
        "vlmedge/a.py": "from vlmedge import b\n",
        "vlmedge/b.py": "def later():\n    from . import c\n",
        "vlmedge/c.py": "import importlib\n\nA = importlib.import_module('vlmedge.a')\n",
        # a cycle only through a package __init__, which importing its submodule runs first
        "vlmedge/scenes/__init__.py": "from vlmedge.scenes.render import draw\nfrom vlmedge import resample\n",
        "vlmedge/scenes/render.py": "def draw():\n    pass\n",
        "vlmedge/resample.py": "import vlmedge.scenes.render\n",
        # the core reaching into the device library
        "vlmedge/geometry.py": "from vlmedge.runtime.loop import step\n",
        # the device library needing torch (in a function) and the exporter (relative, two levels up)
        "runtime/loop.py": "def step():\n    import torch.nn\n    from ..export import tool\n",
        "export/tool.py": "def export():\n    pass\n",
    })
    findings = check_tree(tmp_path)
    text = findings.message(tmp_path)
    cycles = {tuple(step.module for step in c) for c in findings.cycles}
    assert cycles == {("vlmedge.a", "vlmedge.b", "vlmedge.c"), ("vlmedge.resample", "vlmedge.scenes")}, text
    assert "import cycle: vlmedge.a -> vlmedge.b -> vlmedge.c -> vlmedge.a" in text
    assert "vlmedge/b.py:2 (in a function)" in text and "vlmedge/c.py:3 (importlib)" in text
    assert ("vlmedge.resample -> vlmedge.scenes (imports vlmedge.scenes.render) at vlmedge/resample.py:1 "
            "(module level)") in text
    forbidden = sorted(f.split(": ")[0] for f in findings.forbidden)
    assert forbidden == [
        "vlmedge.geometry -> vlmedge.runtime.loop at vlmedge/geometry.py:1 (module level)",
        "vlmedge.runtime.loop -> torch.nn at runtime/loop.py:2 (in a function)",
        "vlmedge.runtime.loop -> vlmedge.export.tool at runtime/loop.py:3 (in a function)",
    ], text  # and nothing from vlmedge/cli/run.py, which may use both sides
