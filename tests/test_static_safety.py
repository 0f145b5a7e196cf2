"""Static checks of the source tree for the rules on untrusted files (docs/ARCHITECTURE.md):

- every ``torch.load`` passes ``weights_only=True`` (and the allowlist of extra globals is only
  ``argparse.Namespace``, which fair-esm checkpoints need);
- nothing unpickles: no ``pickle``/``dill``/``joblib``/``shelve``/``marshal`` loads, no
  ``pandas.read_pickle``, no ``numpy.load(..., allow_pickle=...)`` other than ``False``;
- SQL is only ever run with bound parameters: the statement given to ``execute``,
  ``executemany`` or ``executescript`` is a literal, a ``PRAGMA`` f-string of integer constants,
  or (followed through helper functions such as ``FeatureDatabase._query``) an f-string whose
  only interpolations are ``?`` placeholder lists and literal column lists; never
  ``str.format``, ``%`` or concatenation;
- the LLM API key is never written to the environment, and a value read from it never reaches
  print, logging, a file write or an f-string.

These are AST checks (not greps), so comments, docstrings and strings mentioning the calls do
not count, and aliases (``import torch as t``, ``from pickle import loads``) do.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted((REPO / "src").rglob("*.py"))
PROJECT_CODE = SOURCES + sorted((REPO / "scripts").rglob("*.py"))
API_KEY_NAMES = ("ANTHROPIC_API_KEY",)


@dataclass
class Module:
    path: Path
    tree: ast.Module
    aliases: dict[str, str]  # local name -> dotted origin ("t" -> "torch", "loads" -> "pickle.loads")
    parents: dict[ast.AST, ast.AST]

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(REPO))


def _parse(path: Path) -> Module:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    aliases: dict[str, str] = {}
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return Module(path, tree, aliases, parents)


MODULES = {p: _parse(p) for p in PROJECT_CODE}
#: The package's modules by dotted name, to follow a name imported from another of them.
PACKAGE_MODULES = {
    ".".join(p.relative_to(REPO / "src").with_suffix("").parts).removesuffix(".__init__"): MODULES[p] for p in SOURCES
}


def _imported(module: Module, name: str) -> tuple[Module, str] | None:
    """The package module and name that ``name`` was imported from (``from interplm_plugins.x import name``), if any."""
    origin = module.aliases.get(name, "")
    home, _, original = origin.rpartition(".")
    return (PACKAGE_MODULES[home], original) if home in PACKAGE_MODULES else None


def _dotted(node: ast.AST, module: Module) -> str | None:
    """``torch.serialization.load`` for an expression naming it (aliases resolved), else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(module.aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _calls(module: Module):
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call):
            yield node, _dotted(node.func, module)


def _where(module: Module, node: ast.AST) -> str:
    return f"{module.rel}:{node.lineno}"


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


# ------------------------------------------------------------------------------- torch.load


def test_sources_were_found():
    assert len(SOURCES) > 20 and REPO / "src" / "interplm_plugins" / "core" / "database" / "schema.py" in SOURCES


def _torch_load_problems(modules) -> tuple[list[str], list[str]]:
    found, bad = [], []
    for module in modules:
        for call, name in _calls(module):
            if name in ("torch.load", "torch.serialization.load"):
                found.append(_where(module, call))
                value = _keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    bad.append(_where(module, call))
    return found, bad


def test_every_torch_load_passes_weights_only_true():
    found, bad = _torch_load_problems(MODULES.values())
    assert found, "expected torch.load calls (checkpoints, ae.pt files)"
    assert bad == []


def test_only_argparse_namespace_is_allowlisted_for_weights_only_loading():
    allowed = []
    for module in MODULES.values():
        for call, name in _calls(module):
            if name and name.endswith(("add_safe_globals", "safe_globals")) and name.startswith("torch"):
                for arg in call.args:
                    items = arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else [arg]
                    allowed += [(_dotted(item, module) or ast.dump(item), _where(module, call)) for item in items]
    assert allowed and {name for name, _ in allowed} == {"argparse.Namespace"}, allowed


UNPICKLERS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.load", "cPickle.loads",
    "dill.load", "dill.loads", "joblib.load", "shelve.open", "marshal.load", "marshal.loads", "pandas.read_pickle",
    "cloudpickle.load", "cloudpickle.loads", "torch.serialization._load",
}  # fmt: skip


def _unpickle_problems(modules) -> list[str]:
    bad = []
    for module in modules:
        for call, name in _calls(module):
            if name in UNPICKLERS or (name and name.endswith(".read_pickle")):
                bad.append(f"{_where(module, call)} {name}")
            if name in ("numpy.load", "np.load"):
                value = _keyword(call, "allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    bad.append(f"{_where(module, call)} numpy.load(allow_pickle=...)")
    return bad


def test_nothing_unpickles():
    assert _unpickle_problems(MODULES.values()) == []


# ------------------------------------------------------------------------------------- SQL

SQL_METHODS = ("execute", "executemany", "executescript")


def _module_int_constants(module: Module, follow_imports: bool = True) -> set[str]:
    """Module-level integer constants, and those imported from another module of the package."""
    out = set()
    for node in module.tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, int) and not isinstance(node.value.value, bool):
                out |= {t.id for t in targets if isinstance(t, ast.Name)}
    if follow_imports:
        for name in module.aliases:
            found = _imported(module, name)
            if found and found[1] in _module_int_constants(found[0], follow_imports=False):
                out.add(name)
    return out


def _enclosing_function(module: Module, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    while node in module.parents:
        node = module.parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node
    return None


def _local_assignments(function: ast.AST, name: str) -> list[ast.AST]:
    return [
        node.value
        for node in ast.walk(function)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    ]


def _is_placeholder_list(node: ast.AST) -> bool:
    """``", ".join("?" * n)``: a list of bound-parameter placeholders."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "join"
        and isinstance(node.func.value, ast.Constant)
        and len(node.args) == 1
        and isinstance(node.args[0], ast.BinOp)
        and isinstance(node.args[0].op, ast.Mult)
        and any(isinstance(side, ast.Constant) and side.value == "?" for side in (node.args[0].left, node.args[0].right))
    )


def _is_literal_identifier_list(node: ast.AST, module: Module) -> bool:
    """``", ".join(names)`` where ``names`` is a local tuple/list of literal identifiers (column names)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"):
        return False
    if not (isinstance(node.func.value, ast.Constant) and len(node.args) == 1 and isinstance(node.args[0], ast.Name)):
        return False
    function = _enclosing_function(module, node)
    values = _local_assignments(function, node.args[0].id) if function else []
    return bool(values) and all(
        isinstance(v, (ast.Tuple, ast.List))
        and all(isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value.isidentifier() for e in v.elts)
        for v in values
    )


def _parameter_index(function: ast.AST, name: str) -> int | None:
    params = [a.arg for a in function.args.posonlyargs + function.args.args]
    return params.index(name) if name in params else None


def _call_sites(module: Module, function_name: str, index: int, param: str) -> list[ast.AST] | None:
    """The arguments passed for parameter ``param`` (position ``index``, self included) at every
    call of ``function_name`` in the module; None if some call passes it in a way we cannot see."""
    args = []
    for call, _ in _calls(module):
        func = call.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if called != function_name:
            continue
        offset = 1 if isinstance(func, ast.Attribute) else 0  # self.method(...): self is not in args
        keyword = _keyword(call, param)
        if keyword is not None:
            args.append(keyword)
        elif 0 <= index - offset < len(call.args):
            args.append(call.args[index - offset])
        elif any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            return None
    return args


def _is_integer(node: ast.AST, int_constants: set[str]) -> bool:
    """An integer by construction: an int literal or module constant, ``int(...)``, or arithmetic on those."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        return node.id in int_constants
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "int"
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        return _is_integer(node.left, int_constants) and _is_integer(node.right, int_constants)
    return False


def _module_literal_dict(module: Module, name: str) -> bool:
    """``name`` is a module-level dict whose values are all string literals (e.g. the migrations), defined
    in ``module`` or imported from another module of the package."""
    for node in module.tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = node.value
            return isinstance(value, ast.Dict) and all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in value.values)
    found = _imported(module, name)
    return found is not None and found[0] is not module and _module_literal_dict(*found)


def _sql_problems(node: ast.AST, module: Module, depth: int = 0) -> list[str]:
    """Why ``node`` (an SQL statement) might not be a constant statement with bound parameters."""
    where = _where(module, node)
    if depth > 4:
        return [f"{where}: SQL passed through too many functions to follow"]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return []
    if isinstance(node, ast.JoinedStr):
        literal = "".join(v.value for v in node.values if isinstance(v, ast.Constant)).lstrip().upper()
        int_constants = _module_int_constants(module)
        problems = []
        for value in (v.value for v in node.values if isinstance(v, ast.FormattedValue)):
            if literal.startswith("PRAGMA"):  # PRAGMA values cannot be bound parameters
                if not _is_integer(value, int_constants):
                    problems.append(f"{where}: PRAGMA f-string interpolates {ast.unparse(value)}, not an integer constant")
            elif _is_placeholder_list(value) or _is_literal_identifier_list(value, module):
                continue
            elif isinstance(value, ast.Name):
                problems += _name_problems(value, module, depth)
            else:
                problems.append(f"{where}: SQL f-string interpolates {ast.unparse(value)}")
        return problems
    if isinstance(node, ast.Name):
        return _name_problems(node, module, depth)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and _module_literal_dict(module, node.value.id):
        return []
    return [f"{where}: SQL built by {type(node).__name__} ({ast.unparse(node)[:80]})"]


def _name_problems(node: ast.Name, module: Module, depth: int) -> list[str]:
    function = _enclosing_function(module, node)
    if function is None:
        return [f"{_where(module, node)}: SQL from a module-level name {node.id}"]
    index = _parameter_index(function, node.id)
    if index is not None:  # a parameter: what does every caller pass?
        args = _call_sites(module, function.name, index, node.id)
        if not args:  # None: a call passes it unseen (*args); []: no caller in the module to check
            return [f"{_where(module, node)}: cannot follow every call of {function.name}"]
        return [p for arg in args for p in _sql_problems(arg, module, depth + 1)]
    values = _local_assignments(function, node.id)
    home, name = module, node.id
    if not values and _imported(module, node.id):  # a literal of another module, such as the schema script
        home, name = _imported(module, node.id)
    if not values:  # a module-level literal such as the schema script
        values = [n.value for n in home.tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in n.targets)]  # fmt: skip
    if not values:
        return [f"{_where(module, node)}: cannot see where SQL {node.id} comes from"]
    return [p for v in values for p in _sql_problems(v, home, depth + 1)]


def test_sql_statements_use_only_bound_parameters():
    statements, problems = 0, []
    for module in MODULES.values():
        for call, _ in _calls(module):
            if isinstance(call.func, ast.Attribute) and call.func.attr in SQL_METHODS and call.args:
                statements += 1
                problems += _sql_problems(call.args[0], module)
    assert statements >= 10, "expected the feature database's SQL"
    assert problems == []


@pytest.mark.parametrize(
    "source, ok",
    [
        ('con.execute("SELECT * FROM t WHERE a = ?", (x,))', True),
        ('con.execute(f"PRAGMA user_version = {VERSION}")', True),
        ('con.execute(f"PRAGMA user_version = {version}")', False),
        ('con.execute(f"PRAGMA user_version = {int(version) + 1}")', True),
        ('con.execute(f"PRAGMA user_version = {version + 1}")', False),
        ('con.execute(f"SELECT * FROM t WHERE a = {x}")', False),
        ('con.execute("SELECT * FROM t WHERE a = {}".format(x))', False),
        ('con.execute("SELECT * FROM t WHERE a = %s" % x)', False),
        ('con.execute("SELECT * FROM t WHERE a = " + x)', False),
        ('con.execute(f"SELECT * FROM t WHERE a IN ({\', \'.join(\'?\' * len(xs))})", xs)', True),
    ],
)
def test_the_sql_check_catches_interpolation(tmp_path, source, ok):
    path = tmp_path / "example.py"
    path.write_text(f"VERSION = 3\n\ndef f(con, x, xs, version):\n    {source}\n")
    module = _parse(path)
    module.path = REPO / "example.py"  # for _where's relative path
    (call,) = [c for c, _ in _calls(module) if isinstance(c.func, ast.Attribute) and c.func.attr == "execute"]
    assert (_sql_problems(call.args[0], module) == []) == ok


# ------------------------------------------------------------------------------ the API key


def _string_constants() -> dict[str, set[str]]:
    """Module-level ``NAME = "text"`` across the project (API_KEY_ENV = "ANTHROPIC_API_KEY")."""
    out: dict[str, set[str]] = {}
    for module in MODULES.values():
        for node in module.tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        out.setdefault(t.id, set()).add(node.value.value)
    return out


CONSTANTS = _string_constants()


def _names_api_key(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return any(k in node.value for k in API_KEY_NAMES)
    if isinstance(node, ast.Name):
        return any(any(k in v for k in API_KEY_NAMES) for v in CONSTANTS.get(node.id, ()))
    if isinstance(node, ast.Dict):
        return any(_names_api_key(k) for k in node.keys)
    return False


def _is_environ(node: ast.AST, module: Module) -> bool:
    return _dotted(node, module) in ("os.environ", "environ", "os.environb")


def _key_reads(module: Module):
    """Expressions reading the API key: os.environ[KEY], os.environ.get(KEY), os.getenv(KEY)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Subscript) and _is_environ(node.value, module) and _names_api_key(node.slice):
            if isinstance(node.ctx, ast.Load):
                yield node
        elif isinstance(node, ast.Call):
            name = _dotted(node.func, module) or ""
            if name in ("os.environ.get", "os.getenv", "environ.get") and node.args and _names_api_key(node.args[0]):
                yield node


def _environment_writes(modules) -> list[str]:
    bad = []
    for module in modules:
        for node in ast.walk(module.tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if isinstance(target, ast.Subscript) and _is_environ(target.value, module) and _names_api_key(target.slice):
                    bad.append(_where(module, node))
            if isinstance(node, ast.Call):
                name = _dotted(node.func, module) or ""
                writes = name in ("os.putenv", "os.environ.setdefault", "os.environ.update", "os.environ.__setitem__",
                                  "environ.setdefault", "environ.update")  # fmt: skip
                if writes and any(_names_api_key(a) for a in [*node.args, *(k.value for k in node.keywords)]) or (
                    writes and any(k.arg in API_KEY_NAMES for k in node.keywords)
                ):
                    bad.append(_where(module, node))
    return bad


def test_no_code_writes_the_api_key_into_the_environment():
    assert _environment_writes(MODULES.values()) == []


SINKS = {"print", "write", "write_text", "write_bytes", "writelines", "dump", "dumps", "debug", "info", "warning", "warn",
         "error", "exception", "critical", "log", "setattr", "echo", "secho"}  # fmt: skip


#: Calls whose result still carries the key (the walk goes on through them); methods on the key
#: itself (``key.strip()``) are followed too.
PASS_THROUGH = {"str", "repr", "format", "join", "strip", "encode", "decode", "bytes", "dict", "list", "tuple"}


def _sink_of(node: ast.AST, module: Module) -> str | None:
    """The output a use of the key flows straight into: a print/log/write call, an f-string, an attribute."""
    child = node
    while child in module.parents:
        parent = module.parents[child]
        if isinstance(parent, ast.Call) and child is not parent.func:
            func = parent.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in SINKS:
                return f"{called}()"
            if called not in PASS_THROUGH:  # consumed by the call (e.g. the SDK client's api_key=)
                return None
        if isinstance(parent, (ast.JoinedStr, ast.FormattedValue)):
            return "an f-string"
        if isinstance(parent, ast.Assign) and any(isinstance(t, ast.Attribute) for t in parent.targets):
            return "an attribute"
        if isinstance(parent, ast.stmt):
            return None
        child = parent
    return None


def _key_leaks(modules) -> tuple[int, list[str]]:
    reads, bad = 0, []
    for module in modules:
        for read in _key_reads(module):
            reads += 1
            sink = _sink_of(read, module)
            if sink:
                bad.append(f"{_where(module, read)}: the key goes into {sink}")
            # a variable holding the key: every later use in the function
            statement = read
            while not isinstance(statement, ast.stmt):
                statement = module.parents[statement]
            if isinstance(statement, ast.Assign):
                names = {t.id for t in statement.targets if isinstance(t, ast.Name)}
                function = _enclosing_function(module, statement) or module.tree
                for use in ast.walk(function):
                    if isinstance(use, ast.Name) and use.id in names and isinstance(use.ctx, ast.Load):
                        sink = _sink_of(use, module)
                        if sink:
                            bad.append(f"{_where(module, use)}: {use.id} (the key) goes into {sink}")
    return reads, bad


def test_the_api_key_never_reaches_logs_files_or_messages():
    reads, bad = _key_leaks(MODULES.values())
    assert bad == []
    assert reads >= 1, "expected the describe client to read the key from the environment"


@pytest.mark.parametrize(
    "source, check",
    [
        ("import torch\ntorch.load('x.pt')", "torch"),
        ("import torch as t\nt.load('x.pt', weights_only=False)", "torch"),
        ("from pickle import loads\nloads(b'')", "pickle"),
        ("import numpy as np\nnp.load('x.npy', allow_pickle=True)", "pickle"),
        ("import pandas as pd\npd.read_pickle('x')", "pickle"),
        ("import os\nos.environ['ANTHROPIC_API_KEY'] = 'k'", "env"),
        ("import os\nos.environ.setdefault('ANTHROPIC_API_KEY', 'k')", "env"),
        ("import os\nos.environ.update(ANTHROPIC_API_KEY='k')", "env"),
        ("import os\nprint(os.environ['ANTHROPIC_API_KEY'])", "leak"),
        ("import os, logging\nkey = os.environ.get('ANTHROPIC_API_KEY', '').strip()\nlogging.info(f'key {key}')", "leak"),
        ("import os\ndef f(out):\n    k = os.getenv('ANTHROPIC_API_KEY')\n    out.write_text(k)", "leak"),
        ("import os\nclass C:\n    def __init__(self):\n        self.key = os.environ['ANTHROPIC_API_KEY']", "leak"),
    ],
)
def test_the_checks_catch_violations(tmp_path, source, check):
    path = tmp_path / "example.py"
    path.write_text(source + "\n")
    module = _parse(path)
    module.path = REPO / "example.py"
    if check == "torch":
        assert _torch_load_problems([module])[1]
    elif check == "pickle":
        assert _unpickle_problems([module])
    elif check == "env":
        assert _environment_writes([module])
    else:
        assert _key_leaks([module])[1]


def test_the_checks_accept_the_safe_forms(tmp_path):
    path = tmp_path / "example.py"
    path.write_text(
        "import os, torch, anthropic\nimport numpy as np\n"
        "state = torch.load('x.pt', map_location='cpu', weights_only=True)\n"
        "array = np.load('x.npy', mmap_mode='r')\n"
        "class C:\n    def __init__(self):\n"
        "        key = os.environ.get('ANTHROPIC_API_KEY', '').strip()\n"
        "        if not key:\n            raise RuntimeError('ANTHROPIC_API_KEY is not set')\n"
        "        self._client = anthropic.Anthropic(api_key=key)\n"
    )
    module = _parse(path)
    module.path = REPO / "example.py"
    assert _torch_load_problems([module])[1] == [] and _unpickle_problems([module]) == []
    assert _environment_writes([module]) == [] and _key_leaks([module]) == (1, [])


def test_no_key_is_hard_coded():
    hits = [str(p.relative_to(REPO)) for p in PROJECT_CODE if "sk-ant-" in p.read_text(encoding="utf-8")]
    assert hits == []
