"""The import graph follows the layers of docs/DESIGN.md: every import (module level or inside a
function) points down or sideways, and no set of modules imports itself round in a cycle."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the package it installs as (pyproject.toml maps kernels/ and blocks/ under zoo)
PACKAGES = {"kernels": "zoo.kernels", "blocks": "zoo.blocks", "zoo": "zoo"}

# lowest first; a module belongs to the first entry that is a prefix of its name (module or package)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernels", ("zoo.kernels",)),
    ("blocks", ("zoo.blocks",)),
    ("files", ("zoo.files", "zoo.extras")),
    ("weights", ("zoo.pretrained", "zoo.checkpoint")),
    ("quantization", ("zoo.quant",)),
    ("pruning", ("zoo.pruning",)),
    ("hub", ("zoo.model_card", "zoo.network", "zoo.hub")),
    ("building", ("zoo.registry", "zoo.features", "zoo.builder", "zoo.factory")),
    ("models", ("zoo.models", "zoo.deploy", "zoo.onnx_export", "zoo.metrics", "zoo.profiling")),
    ("data", ("zoo.data",)),
    ("tasks", ("zoo.tasks",)),
    ("training", ("zoo.training",)),
    ("apps", ("zoo.generation", "zoo.inference", "zoo.timm_bridge", "zoo.__main__", "zoo")),
    ("scripts", ("train",)),
]


def _module_files() -> dict[str, Path]:
    found = {"train": ROOT / "train.py"}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = package.split(".") + list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _module_files()


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/DESIGN.md)")


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement loads (``from pkg import name`` counts ``pkg.name`` when
    that is a module, else ``pkg``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
    targets = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.append(name)
    return targets


def import_edges() -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    edges: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(module, node):
                    edges.setdefault(module, {}).setdefault(target, node.lineno)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in sorted(import_edges().items()):
        for target, line in sorted(targets.items()):
            if layer_of(target) > layer_of(module):
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) "
                              f"imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = import_edges()
    found = cycles(edges)
    lines = []
    for component in found:
        inner = [f"{a} -> {b} (line {edges[a][b]})" for a in component for b in edges.get(a, {}) if b in component]
        lines.append(", ".join(component) + ": " + "; ".join(inner))
    assert not found, "import cycles:\n" + "\n".join(lines)


def test_the_checker_sees_upward_and_circular_imports():
    """The checks above can fail: a made-up edge against the order and a made-up cycle are caught."""
    assert layer_of("zoo.files") < layer_of("zoo.hub") < layer_of("zoo.models.rcan") < layer_of("zoo.__main__")
    assert cycles({"zoo.hub": {"zoo.files": 1}, "zoo.files": {"zoo.hub": 3}}) == [["zoo.files", "zoo.hub"]]
    edges = import_edges()
    assert "zoo.files" in edges.get("zoo.hub", {})  # a real edge is seen
    assert "zoo.models.decoding" in edges.get("zoo.models.moc_lm", {})
