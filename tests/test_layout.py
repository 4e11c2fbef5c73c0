"""The package's shape: the transformers-compatible core never imports the tools built on it, no tool reaches
into training or into a model family, the two families build on the shared two-tower machinery and never on each
other, no module imports itself round a cycle (package `__init__` files included), and the core imports alone,
on any platform. Read from the source (imports only), except the checks that run a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import siglip

PACKAGE = Path(siglip.__file__).parent
FAMILIES = ("siglip.core.siglip", "siglip.core.siglip2")
POSIX_ONLY = {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "syslog"}


def _family(module: str) -> str | None:
    """The family package `module` belongs to, or None."""
    parts = module.split(".")
    package = ".".join(parts[:3])
    return package if package in FAMILIES else None


def _imports(siglip_only: bool = True) -> dict[str, set[str]]:
    """module -> the siglip modules it imports (at any depth of its code); with `siglip_only=False`, every
    module name it imports, siglip's or not.

    `from package import name` is an edge to the submodule `package.name` when there is one, else to the
    package itself: its `__init__` runs to give the name, so its imports are part of the importer's."""
    paths = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
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
                names = (f"{target}.{alias.name}" for alias in node.names)
                found |= {name if name in paths else target for name in names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[module] = {t for t in found if t in paths and t != module} if siglip_only else found
    return graph


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


def test_no_family_imports_another_family():
    """SigLIP and SigLIP 2 both build on `siglip.core.two_tower`, which knows neither of them."""
    offenders = {
        m: sorted(x for x in t if _family(x) not in (None, _family(m)))
        for m, t in _imports().items()
        if _family(m) is not None or m.startswith("siglip.core.two_tower")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_tools_reach_models_only_through_the_family_neutral_entry_points():
    offenders = {
        m: sorted(x for x in t if _family(x) is not None)
        for m, t in _imports().items()
        if m.startswith("siglip.tools")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_no_posix_only_module_is_imported():
    """The package imports on Windows: no module of the standard library that only POSIX systems have."""
    offenders = {m: sorted(t & POSIX_ONLY) for m, t in _imports(siglip_only=False).items() if t & POSIX_ONLY}
    assert offenders == {}


def test_importing_the_core_loads_no_tool():
    """`import siglip` and `import siglip.core` load no tool (nor fcntl); every core module imports without
    one. In a fresh interpreter, since this one has loaded the tools already."""
    script = """
import json, pkgutil, importlib, sys
import siglip, siglip.core
first = sorted(m for m in sys.modules if m.startswith("siglip.tools") or m == "fcntl")
for info in pkgutil.walk_packages(siglip.core.__path__, "siglip.core."):
    importlib.import_module(info.name)
print(json.dumps([first, sorted(m for m in sys.modules if m.startswith("siglip.tools"))]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    after_import, after_every_core_module = json.loads(done.stdout.splitlines()[-1])
    assert after_import == []
    assert after_every_core_module == []


def test_no_import_cycle_between_modules():
    """Package `__init__` files included: importing a module runs its package's `__init__` first (an edge to
    the parent), so an `__init__` that imports modules deeper than its own children (as `siglip/__init__.py`
    once imported every tool) puts each of them on a cycle. A package's `__init__` may import its own children
    (a facade over its modules)."""
    graph = _imports()
    for module, targets in graph.items():
        parent = module.rpartition(".")[0]
        targets -= {t for t in targets if t.rpartition(".")[0] == module}
        if parent:
            targets.add(parent)
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


def test_old_public_paths_still_import():
    """`siglip.inference` and `siglip.loss` moved under `siglip.tools` / `siglip.core`; their old paths alias
    the new homes (README and user code name them)."""
    from siglip.core import loss
    from siglip.inference import InferenceMode, export_onnx
    from siglip.loss import siglip_loss, sigmoid_loss
    from siglip.tools.embeddings import inference, onnx_export

    assert (InferenceMode, export_onnx) == (inference.InferenceMode, onnx_export.export_onnx)
    assert (siglip_loss, sigmoid_loss) == (loss.siglip_loss, loss.sigmoid_loss)
