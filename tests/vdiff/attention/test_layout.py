"""vdiff/attention's modules import each other without cycles (issue 15, item 6)."""

from __future__ import annotations

import ast
from pathlib import Path

import vdiff.attention

PACKAGE = "vdiff.attention"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at module level or inside functions)."""
    root = Path(vdiff.attention.__file__).parent
    modules = {PACKAGE if p.stem == "__init__" else f"{PACKAGE}.{p.stem}": p for p in root.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
                for alias in node.names:  # `from vdiff.attention import sage` imports a module
                    sub = f"{node.module}.{alias.name}"
                    graph[name].add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.startswith(PACKAGE))
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                raise AssertionError(f"{path.name}: importlib.import_module hides an import from this check")
        graph[name].discard(name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])) is not None:
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])) is not None:
            return found
    return None


def test_no_import_cycles_inside_the_package() -> None:
    graph = _import_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    # the parts do not import the backends built from them, nor the package facade
    backends = {f"{PACKAGE}.{m}" for m in ("dense", "sage", "sparse", "calibrate", "policy")} | {PACKAGE}
    for part in ("quant", "mask", "fused", "tiled", "triton_kernels", "execute", "thresholds", "registry"):
        assert not graph[f"{PACKAGE}.{part}"] & backends, (part, graph[f"{PACKAGE}.{part}"])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
