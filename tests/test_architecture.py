"""The package's layering, read from its import statements (docs/ARCHITECTURE.md draws it).

Shared ground (I/O, data, models, metrics, bundle, ...) sits below the stages, the stages below
the two entry points, and no module imports upward or in a circle. Every ``import`` counts,
lazy ones inside functions included: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ecgrisk"

# the layer of each top-level part of the package; a module imports lower layers, its own part,
# and other parts of its own layer only in the shared ground and among the entry points
LAYERS = {
    "shared": ["files", "paths", "progress", "config", "runs", "preprocess", "metrics",
               "calibration", "plotting", "io", "models", "data", "bundle", "bundle_files",
               "windowing", "shipped", "signals", "conformal", "input_spec", "hardware",
               "provenance", "groups", "overrides"],
    "feedback": ["feedback"],  # the judgements both refinement and review use
    "stages": ["pretrain", "finetune", "refine", "scoring"],
    "apps": ["review"],
    "entry": ["cli", "demo", "convert", "entry", "__init__"],
}
RANK = {part: rank for rank, parts in enumerate(LAYERS.values()) for part in parts}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` is ``a.b`` when b is a module)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_part_of_the_package_has_a_layer():
    parts = {_part(m) for m in _modules()}
    assert parts <= set(RANK), f"add {sorted(parts - set(RANK))} to LAYERS in this test"


def test_no_module_imports_a_higher_layer_or_a_sibling_stage():
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            a, b = _part(mod), _part(dep)
            same_layer_ok = RANK[a] == RANK[b] and a in LAYERS["shared"] + LAYERS["entry"]
            if a != b and RANK[b] >= RANK[a] and not same_layer_ok:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that run upward or across stages:\n" + "\n".join(sorted(bad))


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "refine"])
def test_each_training_stage_is_one_package_runnable_with_python_m(stage):
    pkg = PACKAGE / stage
    assert (pkg / "__init__.py").is_file() and (pkg / "__main__.py").is_file()
    assert "main" in (pkg / "__main__.py").read_text()


def test_finding_and_reading_files_stands_on_no_dataset():
    # io is what a reader process, `ecgrisk convert` and every dataset stand on: the folder scan
    # lives in io (io/scan.py), so finding and reading ECG files never pulls in datasets
    reach = {dep for mod, deps in _graph().items() if _part(mod) == "io" for dep in deps}
    assert {_part(d) for d in reach} <= {"io", "files", "preprocess"}, sorted(reach)
