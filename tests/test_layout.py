"""The layout of ``interplm_plugins.core`` (docs/ARCHITECTURE.md): stages, no import cycles, no GUI, no session state.

Every module under ``src/interplm_plugins/core`` is parsed with :mod:`ast` (nothing is imported)
and its imports of ``interplm_plugins`` modules are collected: ``import`` and ``from ... import``,
relative ones resolved against the module's package, ``importlib.import_module("...")`` /
``__import__("...")`` with a literal name, and **function-local imports too** (an import hidden
in a function body is still a dependency the design must not need to break a cycle; imports under
``if TYPE_CHECKING:`` count as well). ``from package import name`` is an edge to
``package.name`` when that is a module, else to ``package``.

The checks:

1. no import cycles among core modules;
2. stage layering, in the order data flows: ``inputs`` imports no other stage; ``plm`` only
   ``inputs``; ``sae`` only ``inputs`` and ``plm``; ``concepts`` only those and ``sae``;
   ``database`` only those and ``concepts``; ``interpret`` any stage. The shared helpers at core's
   top level (:data:`SHARED`) may be imported by every stage and import no stage themselves;
   every core module belongs to a stage or is one of those helpers;
3. nothing in core imports a GUI toolkit (:data:`GUI_MODULES`) or this package's own outer layers
   (:data:`OUTER_LAYERS`: the command line, the plugins, the plugins' session);
4. no ``global`` statement in core: session state lives outside it (``interplm_plugins.session``).

Each check returns the offending modules, and the tests at the end run the checks on small
generated source trees that break each rule, to show that every check can fail.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "interplm_plugins"
CORE = f"{PACKAGE}.core"

#: The pipeline's stages, in the order data flows through them.
STAGES = ("inputs", "plm", "sae", "concepts", "database", "interpret")
#: Which other stages each stage may import.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "inputs": frozenset(),
    "plm": frozenset({"inputs"}),
    "sae": frozenset({"inputs", "plm"}),
    "concepts": frozenset({"inputs", "plm", "sae"}),
    "database": frozenset({"inputs", "plm", "sae", "concepts"}),
    "interpret": frozenset({"inputs", "plm", "sae", "concepts", "database"}),
}
#: Modules at core's top level that every stage uses; they import no stage.
SHARED = frozenset({f"{CORE}.atomic", f"{CORE}.allocator", f"{CORE}.parallel"})
#: Modules of this package outside core that core may import.
ALLOWED_OUTSIDE_CORE = frozenset({PACKAGE, f"{PACKAGE}.errors"})
#: This package's layers above core: core must never import them.
OUTER_LAYERS = (f"{PACKAGE}.cli", f"{PACKAGE}.pymol_plugin", f"{PACKAGE}.napari_plugin", f"{PACKAGE}.session")
#: GUI toolkits and viewers: core runs without any of them.
GUI_MODULES = ("pymol", "napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (dotted)
    line: int
    local: bool  # inside a function body

    def __str__(self) -> str:
        return f"{self.source} imports {self.target} (line {self.line}{', in a function' if self.local else ''})"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules(src: Path) -> dict[str, Path]:
    """Every module of ``interplm_plugins.core`` under ``src``, by dotted name."""
    return {module_name(p, src): p for p in sorted((src / PACKAGE / "core").rglob("*.py"))}


def _literal_import(node: ast.Call) -> str | None:
    """The module of ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def imports_of(path: Path, module: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in one file (see the module docstring), all modules, not only this package's."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(module, alias.name, child.lineno, local) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(base_parts + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.append(Import(module, candidate if candidate in known else base, child.lineno, local))
            elif isinstance(child, ast.Call) and (target := _literal_import(child)):
                found.append(Import(module, target, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph(src: Path) -> dict[str, list[Import]]:
    """Each core module's imports."""
    modules = core_modules(src)
    known = set(modules) | {module_name(p, src) for p in (src / PACKAGE).rglob("*.py")}
    return {name: imports_of(path, name, path.name == "__init__.py", known) for name, path in modules.items()}


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def stage_of(module: str) -> str | None:
    """``inputs`` ... ``interpret`` for a module of a stage; None for the rest of core."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == CORE.split(".") and parts[2] in STAGES else None


# ----------------------------------------------------------------------------------------- checks


def import_cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The cycles among core modules (strongly connected components of more than one module, or a
    module importing itself), each listed from its first module in name order."""
    edges = {m: sorted({i.target for i in imps if i.target in graph}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(cycles)


def layering_violations(graph: dict[str, list[Import]]) -> list[str]:
    """Imports against the stage order, and core modules outside every stage and the shared helpers."""
    bad = []
    for module, imps in sorted(graph.items()):
        own = stage_of(module)
        if own is None and module not in SHARED and module != CORE:
            bad.append(f"{module} belongs to no stage ({', '.join(STAGES)}) and is not a shared helper ({', '.join(sorted(SHARED))})")
        for imp in imps:
            if not _within(imp.target, CORE):
                continue
            target = stage_of(imp.target)
            if target is None or target == own:
                continue  # the shared helpers, core's own __init__, or the same stage
            if own is None:
                bad.append(f"{imp}: a shared helper imports the {target} stage")
            elif target not in MAY_IMPORT[own]:
                bad.append(f"{imp}: the {own} stage may import only {', '.join(sorted(MAY_IMPORT[own])) or 'no other stage'}")
    return bad


def forbidden_imports(graph: dict[str, list[Import]]) -> list[str]:
    """Imports of GUI toolkits, of the package's outer layers, or of anything else of the package outside core."""
    bad = []
    for module, imps in sorted(graph.items()):
        for imp in imps:
            if any(_within(imp.target, gui) for gui in GUI_MODULES):
                bad.append(f"{imp}: a GUI toolkit")
            elif any(_within(imp.target, layer) for layer in OUTER_LAYERS):
                bad.append(f"{imp}: a layer above core")
            elif _within(imp.target, PACKAGE) and not _within(imp.target, CORE) and imp.target not in ALLOWED_OUTSIDE_CORE:
                bad.append(f"{imp}: outside core (core may import only {', '.join(sorted(ALLOWED_OUTSIDE_CORE))})")
    return bad


def global_statements(src: Path) -> list[str]:
    """``global`` statements in core modules."""
    bad = []
    for name, path in core_modules(src).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Global):
                bad.append(f"{name} line {node.lineno}: global {', '.join(node.names)}")
    return bad


# ----------------------------------------------------------------------------------------- the tree


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC)


def test_the_graph_sees_the_whole_core(graph):
    assert set(graph) >= {f"{CORE}.{stage}" for stage in STAGES} | SHARED
    assert len(graph) > 50
    edges = {(imp.source, imp.target) for imps in graph.values() for imp in imps}
    assert (f"{CORE}.sae.files", f"{CORE}.sae.normalize") in edges  # a module-level import
    assert any(imp.local for imps in graph.values() for imp in imps)  # function-local imports are collected


def test_no_import_cycles_in_core(graph):
    assert import_cycles(graph) == []


def test_stages_import_only_earlier_stages(graph):
    assert layering_violations(graph) == []


def test_core_imports_no_gui_and_no_outer_layer(graph):
    assert forbidden_imports(graph) == []


def test_core_has_no_global_statement():
    assert global_statements(SRC) == []


# ------------------------------------------------------------------- each check can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """A source tree ``tmp_path/src`` with an (empty) package skeleton and ``files`` (paths under interplm_plugins/)."""
    src = tmp_path / "src"
    for package in ["", "core", *(f"core/{s}" for s in STAGES)]:
        (src / PACKAGE / package).mkdir(parents=True, exist_ok=True)
        (src / PACKAGE / package / "__init__.py").write_text('"""x"""\n')
    for rel, text in files.items():
        (src / PACKAGE / rel).write_text(text)
    return src


def test_a_cycle_is_found_even_through_a_function_local_import(tmp_path):
    src = _tree(tmp_path, {
        "core/sae/a.py": "from interplm_plugins.core.sae.b import f\n",
        "core/sae/b.py": "def f():\n    from . import a\n",
        "core/plm/c.py": "import interplm_plugins.core.plm.c\n",
    })  # fmt: skip
    assert import_cycles(import_graph(src)) == [[f"{CORE}.plm.c"], [f"{CORE}.sae.a", f"{CORE}.sae.b"]]


def test_a_stage_importing_a_later_one_is_named(tmp_path):
    src = _tree(tmp_path, {
        "core/plm/embed.py": "from interplm_plugins.core.sae.model import SparseAutoencoder\n",
        "core/inputs/seq.py": "def g():\n    from ..interpret import pipeline\n",
        "core/atomic.py": "from interplm_plugins.core.inputs import seq\n",
        "core/stray.py": "",
    })  # fmt: skip
    bad = layering_violations(import_graph(src))
    assert len(bad) == 4, bad
    assert any(b.startswith(f"{CORE}.plm.embed imports {CORE}.sae.model") and "only inputs" in b for b in bad)
    assert any(b.startswith(f"{CORE}.inputs.seq imports {CORE}.interpret") and "in a function" in b for b in bad)
    assert any(b.startswith(f"{CORE}.atomic imports {CORE}.inputs.seq") and "shared helper" in b for b in bad)
    assert any(b.startswith(f"{CORE}.stray belongs to no stage") for b in bad)


def test_gui_and_outer_layer_imports_are_named(tmp_path):
    src = _tree(tmp_path, {
        "core/interpret/view.py": (
            "import importlib\nfrom qtpy import QtWidgets\n"
            "def show():\n    import pymol.cmd\n    from interplm_plugins.session import current_pipeline\n"
            "    importlib.import_module('napari')\n    from interplm_plugins import cli\n"
        ),
        "cli.py": "",
        "session.py": "",
    })  # fmt: skip
    bad = forbidden_imports(import_graph(src))
    assert [b.split(" (line")[0] for b in bad] == [
        f"{CORE}.interpret.view imports qtpy",
        f"{CORE}.interpret.view imports pymol.cmd",
        f"{CORE}.interpret.view imports {PACKAGE}.session",
        f"{CORE}.interpret.view imports napari",
        f"{CORE}.interpret.view imports {PACKAGE}.cli",
    ]


def test_a_global_statement_is_named(tmp_path):
    src = _tree(tmp_path, {"core/interpret/state.py": "_x = None\n\ndef set_x(v):\n    global _x\n    _x = v\n"})
    assert global_statements(src) == [f"{CORE}.interpret.state line 4: global _x"]
