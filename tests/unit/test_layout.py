"""The house rules of the package layout, checked on the source: no import cycle in ``stream``,
and the pure core imports no Kafka, Redis or Faust client (nor any adapter of ours)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stream"
SERVICE_CLIENTS = ("faust", "mode", "aiokafka", "confluent_kafka", "redis", "hiredis", "kafka")
ADAPTERS = ("stream.live", "stream.state", "stream.tools", "stream.cli", "stream.topics", "stream.offline",
            "stream.settings", "stream.metrics")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (anywhere in the file, also lazily)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _graph() -> dict[str, set[str]]:
    """Module -> the modules of ``stream`` it imports (a name imported from a package counts as the
    package unless it is a submodule)."""
    return {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_the_module_list_is_not_empty() -> None:
    assert "stream.core.detector" in MODULES and "stream.live.worker" in MODULES


def test_no_import_cycle_in_stream() -> None:
    graph = _graph()
    # a package's __init__ that re-exports its submodules is an edge package -> submodule; a
    # submodule importing its own package face would close a cycle and is caught like any other
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("stream.core")))
def test_the_core_imports_no_service_client_and_no_adapter(module: str) -> None:
    for name in _imports(MODULES[module]):
        root = name.split(".")[0]
        assert root not in SERVICE_CLIENTS, f"{module} imports {name}"
        assert not name.startswith(ADAPTERS), f"{module} imports the adapter {name}"
