"""The archive layer sits below the model families: it imports none of them (imports inside functions count too),
and neither the archive, SIREN and NeRF packages together nor izoo.fitting holds an import cycle."""

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


@pytest.mark.parametrize("packages", [("izoo.archive", "izoo.siren", "izoo.nerf"), ("izoo.fitting",)])
def test_no_import_cycle_among(packages):
    graph = import_graph()
    inside = {m: {t for t in imported if t.startswith(packages)} for m, imported in graph.items()
              if m.startswith(packages)}
    try:
        graphlib.TopologicalSorter(inside).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
