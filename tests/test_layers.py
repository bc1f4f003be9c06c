"""The house rules of DESIGN §2, checked on the source: layers import only layers below them, and nothing imports in
a circle, counting imports inside functions (only ``if TYPE_CHECKING:`` blocks are excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "evalproxy"
# Bottom first. A module may import its own layer and those before it.
LAYERS = ["core", "config", "flow", "chain", "registry", "server"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(path: Path) -> set[str]:
    """Every evalproxy module ``path`` imports, anywhere in the file (functions included), but type-only imports."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("evalproxy"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evalproxy"):
            found.add(node.module)
            # ``from evalproxy.adapter import core`` imports the submodule too.
            found.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] == ["evalproxy", "adapter"] and len(parts) > 2 and parts[2] in LAYERS:
        return LAYERS.index(parts[2])
    return None


def test_no_import_circle() -> None:
    """No module reaches itself through imports (a depth-first search finds no back edge)."""
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n])
            elif n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            dfs(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_import_only_layers_below() -> None:
    """Each adapter layer imports only its own layer and the ones below it, and nothing outside the adapter."""
    bad = []
    for m, deps in graph().items():
        mine = layer_of(m)
        if mine is None:
            continue
        for d in deps:
            theirs = layer_of(d)
            if d.startswith("evalproxy.adapter.") and theirs is not None and theirs <= mine:
                continue
            if d in ("evalproxy.adapter", "evalproxy"):
                continue
            bad.append(f"{m} ({LAYERS[mine]}) imports {d}")
    assert not bad, "\n".join(sorted(bad))


def test_interceptors_and_hooks_know_nothing_of_each_other() -> None:
    """An interceptor imports no other interceptor and no hook; a hook imports no interceptor."""
    bad = []
    for m, deps in graph().items():
        for kind, other in (("interceptors", "hooks"), ("hooks", "interceptors")):
            if not m.startswith(f"evalproxy.{kind}."):
                continue
            unit = m.split(".")[2]
            for d in deps:
                if d.startswith(f"evalproxy.{other}") or (
                        d.startswith(f"evalproxy.{kind}.") and d.split(".")[2] != unit):
                    bad.append(f"{m} imports {d}")
    assert not bad, "\n".join(sorted(bad))


def test_demo_never_imports_cli() -> None:
    """The demo starts the proxy through the server layer, not through the command line module."""
    assert "evalproxy.cli" not in graph()["evalproxy.demo"]


def test_the_check_sees_a_circle(tmp_path: Path) -> None:
    """The import scanner finds imports inside functions (so a circle closed there would be caught)."""
    imports = imports_of(PKG / "adapter" / "registry" / "registry.py")
    assert "evalproxy.adapter.chain.interceptor" in imports
    probe = tmp_path / "layers_probe.py"
    probe.write_text("def f():\n    from evalproxy.cli import main\nif TYPE_CHECKING:\n    import evalproxy.demo\n")
    assert imports_of(probe) == {"evalproxy.cli", "evalproxy.cli.main"}


# The packages of evalproxy, bottom first; a package imports only its own and those of groups below it.
PACKAGE_LAYERS = [
    ("adapter",),
    ("evalproxy", "storage"),
    ("interceptors", "hooks", "nemo_compat", "simulator"),
    ("records",),
    ("jobs",),
    ("demo",),
    ("cli",),
    ("__main__",),
]


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "evalproxy"


def test_packages_import_only_packages_below() -> None:
    """adapter < storage < interceptors and hooks < records < jobs < cli: no package imports one above it, nor a
    sibling of its own group."""
    level = {pkg: i for i, group in enumerate(PACKAGE_LAYERS) for pkg in group}
    bad = []
    for m, deps in graph().items():
        mine = package_of(m)
        for d in deps:
            theirs = package_of(d)
            if theirs != mine and level[theirs] >= level[mine]:
                bad.append(f"{m} ({mine}) imports {d} ({theirs})")
    assert not bad, "\n".join(sorted(bad))
    assert set(level) >= {package_of(m) for m in graph()}, "a package is missing from PACKAGE_LAYERS"


def test_only_storage_imports_sqlite3() -> None:
    """No module outside evalproxy/storage imports sqlite3 (or diskcache), anywhere in the file: every store error
    reaches the rest of the code as the StoreError subtree."""
    bad = []
    for path in PKG.rglob("*.py"):
        name = module_name(path)
        if name.startswith("evalproxy.storage"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{name} imports {n}" for n in names if n.split(".")[0] in ("sqlite3", "diskcache")]
    assert not bad, "\n".join(sorted(bad))


def test_readers_use_the_store_interface_only() -> None:
    """Outside evalproxy/storage, no module imports a backend (disk, redis, the diskcache adapter): the CLI, reports,
    compare and caching reach every store through ``open_store`` and the ``Store`` interface."""
    backends = {"evalproxy.storage.disk", "evalproxy.storage.redis", "evalproxy.storage.diskcache_table"}
    bad = [f"{m} imports {d}" for m, deps in graph().items() if not m.startswith("evalproxy.storage")
           for d in deps if d in backends]
    assert not bad, "\n".join(sorted(bad))


def test_only_main_imports_cli() -> None:
    """The command line is the top: no module but ``evalproxy.__main__`` (and the cli package itself) imports it."""
    bad = [f"{m} imports {d}" for m, deps in graph().items()
           if m != "evalproxy.__main__" and not (m == "evalproxy.cli" or m.startswith("evalproxy.cli."))
           for d in deps if d == "evalproxy.cli" or d.startswith("evalproxy.cli.")]
    assert not bad, "\n".join(sorted(bad))


def test_one_run_orchestration() -> None:
    """Only ``records/run.py`` runs a harness command through a proxy and writes its run record (``evalproxy run``
    and the jobs service's jobs share it), and only it feeds the ledger from the proxy."""
    entry_points = {"evalproxy.adapter.server.running.run_command", "evalproxy.records.record_run",
                    "evalproxy.records.run.record_run", "evalproxy.records.ledger_feed.ledger_observer"}
    users = {module_name(p) for p in PKG.rglob("*.py") if imports_of(p) & entry_points}
    assert users <= {"evalproxy.records.run", "evalproxy.records"}, sorted(users)


def test_no_side_channels_through_state() -> None:
    """The state keys that carried a callback, an answer or a stream's usage around the chain are gone: nothing in
    src names them (the transport's answer is the only interface; observers get the answer as an argument)."""
    removed = ("WRITE_HELD", "EVENTS_AT_HAND", "STREAM_USAGE", "ANSWER =", "state[ANSWER]")
    bad = [f"{p.relative_to(SRC)} names {name}" for p in PKG.rglob("*.py") for name in removed
           if name in p.read_text()]
    assert not bad, "\n".join(bad)
