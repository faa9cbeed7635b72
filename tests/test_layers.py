"""The package's imports follow the layers of ../shared/DESIGN.md: no module imports a higher
layer, and no two packages import each other (directly or around a circle). Function-level
imports count too."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "__init__": 0,
    "sandbox": 1,
    "tasks": 2, "models": 2,
    "svf": 3, "lora": 3, "artifacts": 3,
    "engines": 4,
    "eval": 5, "distributed": 5,
    "rl": 6, "t2l": 6, "adapt": 6,
    "experiments": 7,
    "serve": 8,
    "cli": 9, "job": 9, "jobs": 9,
}


def _package(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "jobs":
        return "jobs"
    return parts[1]  # t2ray/<package>/... or t2ray/<module>.py


def _imports(path: Path) -> set[str]:
    """The t2ray packages a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                     if node.module == "t2ray"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "t2ray" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in [*(ROOT / "t2ray").rglob("*.py"), *(ROOT / "jobs").glob("*.py")]:
        source = _package(path)
        assert source in LAYERS, f"{path} belongs to no layer: add it to DESIGN.md and here"
        edges.setdefault(source, set()).update(_imports(path) - {source})
    return edges


def test_no_module_imports_a_higher_layer():
    upward = [f"{src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
              for src, targets in _edges().items() for dst in targets if LAYERS[dst] > LAYERS[src]]
    assert upward == []


def test_no_two_packages_import_each_other():
    edges = _edges()
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in trail:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            else:
                visit(nxt, trail + [nxt])

    for start in edges:
        visit(start, [start])
    assert cycles == []


def test_the_check_sees_real_imports():
    """The walker finds what the code imports (a check that saw nothing would pass anyway)."""
    edges = _edges()
    assert {"svf", "lora", "models"} <= edges["engines"]
    assert {"engines", "eval", "distributed"} <= edges["rl"]
    assert "experiments" in edges["cli"] and "cli" in edges["jobs"]
