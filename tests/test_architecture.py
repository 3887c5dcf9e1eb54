"""The package's shape (docs/architecture.md): no import circles, library code never imports a
command or anything outside the package, every module within a size that keeps one concern."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "maestro_jax"
COMMANDS = {
    "maestro_jax.demo", "maestro_jax.generate", "maestro_jax.train", "maestro_jax.evaluate",
    "maestro_jax.sweep", "maestro_jax.separate", "maestro_jax.encode_audio",
    "maestro_jax.toy.build", "maestro_jax.toy.evaluate", "maestro_jax.toy.evaluate_long",
    "maestro_jax.lower", "maestro_jax.app",
    "maestro_jax.ablate",
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package_parents(graph):
    # `import maestro_jax.audio.io` also runs maestro_jax/audio/__init__: a package's own
    # re-exports of its modules are not circles
    return {n for n in graph if (PKG / n.replace("maestro_jax.", "", 1).replace(".", "/")).is_dir()}


def test_no_import_circles():
    graph = _graph()
    parents = _package_parents(graph)
    pruned = {
        n: {m for m in deps if not (n in parents and m.startswith(n + "."))}
        for n, deps in graph.items()
    }
    assert _cycles(pruned) == []


def test_library_imports_no_command_and_nothing_outside_the_package():
    for path in PKG.rglob("*.py"):
        name = _module_name(path)
        for m in _imports(path):
            top = m.split(".")[0]
            assert top not in ("configs", "data", "convert", "tests", "benchmarks"), (name, m)
            if name not in COMMANDS:
                assert m not in COMMANDS, f"{name} imports the command {m}"


def test_modules_stay_small():
    """A module over ~500 lines is allowed only when it holds one network (models/*.py)."""
    big = {
        _module_name(p): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 520 and "models" not in p.parts
    }
    assert big == {}
