"""The package's shape: the transformers-compatible core never imports the tools built on it, no tool reaches
into training, and no module imports itself round a cycle. Read from the source (imports only), not run."""

from __future__ import annotations

import ast
from pathlib import Path

import siglip

PACKAGE = Path(siglip.__file__).parent


def _imports() -> dict[str, set[str]]:
    """module -> the siglip modules it imports (at any depth of its code)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                names = [f"{target}.{alias.name}" for alias in node.names]
                found |= {target, *names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[module] = {name for name in found if name.startswith("siglip")}
    modules = set(graph)
    return {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}


def test_the_core_imports_nothing_from_the_tools():
    offenders = {
        m: t
        for m, t in _imports().items()
        if m.startswith("siglip.core") and any(x.startswith("siglip.tools") for x in t)
    }
    assert offenders == {}


def test_only_the_command_line_imports_training():
    offenders = {
        m: sorted(x for x in t if x.startswith("siglip.tools.training"))
        for m, t in _imports().items()
        if not m.startswith(("siglip.tools.training", "siglip.tools.cli"))
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_import_cycle_between_modules():
    graph = _imports()
    # package __init__ files re-export their children: edges into a package are not edges of the design
    graph = {
        m: {t for t in ts if not (PACKAGE.parent / t.replace(".", "/") / "__init__.py").exists()}
        for m, ts in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
