"""izoo's import graph has no cycle and its layers point one way (docs/DESIGN.md, "Dependency order").

Imports inside functions count too: a lazy import hides a cycle from Python's import machinery, not from the
reader, who still has to understand both modules together.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "izoo"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → imported modules, for every import in ``izoo`` (``from a import b`` reaches ``a`` and ``a.b``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    prefix = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(prefix + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_archive_imports_no_model_family_and_no_fitting():
    graph = import_graph()
    reached = {t for m, imported in graph.items() if m.startswith("izoo.archive") for t in imported}
    above = sorted(t for t in reached if t.startswith(("izoo.fitting", "izoo.nerf"))
                   or (t.startswith("izoo.siren") and t not in ("izoo.siren", "izoo.siren.model")))
    assert above == [], f"izoo.archive imports {above}; families register with izoo.archive.families instead"


def test_izoo_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40, f"izoo's modules not found under {PACKAGE}"
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_sees_a_cycle():
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).prepare()


#: package -> the packages above it, which it must not import (the order of docs/DESIGN.md)
MUST_NOT_IMPORT = {
    "izoo.errors": ("izoo.",),
    "izoo.atomic": ("izoo.archive", "izoo.config", "izoo.datasets", "izoo.fitting", "izoo.siren", "izoo.nerf",
                    "izoo.benchmarks", "izoo.interop", "izoo.reports", "izoo.cli"),
    "izoo.config": ("izoo.archive", "izoo.datasets", "izoo.fitting", "izoo.siren", "izoo.nerf", "izoo.benchmarks",
                    "izoo.interop", "izoo.reports", "izoo.cli"),
    "izoo.datasets": ("izoo.archive", "izoo.fitting", "izoo.siren", "izoo.nerf", "izoo.benchmarks", "izoo.interop",
                      "izoo.reports", "izoo.cli"),
    "izoo.fitting": ("izoo.nerf", "izoo.benchmarks", "izoo.interop", "izoo.reports", "izoo.cli"),
    "izoo.benchmarks": ("izoo.fitting", "izoo.interop", "izoo.reports", "izoo.cli"),
}


@pytest.mark.parametrize("layer", sorted(MUST_NOT_IMPORT))
def test_lower_layer_does_not_import_upper(layer):
    reached = {f"{m} -> {t}" for m, imported in import_graph().items() if m == layer or m.startswith(layer + ".")
               for t in imported if t.startswith(MUST_NOT_IMPORT[layer]) and t != "izoo.errors"}
    assert not reached, f"{layer} reaches up: " + ", ".join(sorted(reached))
