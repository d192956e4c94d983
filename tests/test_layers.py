"""The package imports downward only: app -> engine -> inference -> metrics -> data, models,
losses -> base. Every import counts, also those inside functions."""
import ast
from pathlib import Path

import pytest

import scrollseg

PACKAGE = Path(scrollseg.__file__).parent

# lower number = lower layer; a module may import its own layer (without cycles) or below
LAYERS = {
    "constants": 0, "errors": 0, "config": 0, "dist": 0, "checkpoint": 0, "precision": 0, "progress": 0,
    "data": 1, "models": 1, "losses": 1,
    "metrics": 2,
    "inference": 3,
    "engine": 4,
    "launch": 5, "wheelhouse": 5, "report": 5, "doctor": 5, "export": 5, "plan": 5,
    "api": 6,
    "demo": 7, "cli": 8, "__main__": 9, "__init__": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Package-internal modules that ``path`` imports, as dotted names under the package."""
    package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("scrollseg"):
                target = node.module[len("scrollseg"):].lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import api` imports a module
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if (PACKAGE / sub.replace(".", "/")).with_suffix(".py").exists() or (PACKAGE / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name[len("scrollseg"):].lstrip(".") for a in node.names if a.name.startswith("scrollseg.")}
    return {f for f in found if f and f != name}


def layer(name: str) -> int:
    top = name.split(".")[0]
    assert top in LAYERS, f"scrollseg.{name} belongs to no layer; add it to LAYERS in this test"
    return LAYERS[top]


GRAPH = {module_name(p): imports_of(p, module_name(p)) for p in PACKAGE.rglob("*.py")}


def test_the_graph_is_read():
    assert "engine.trainer" in GRAPH and "inference.predict" in GRAPH["engine.validation"]
    assert "api" in GRAPH["cli"] or any(i.startswith("api") for i in GRAPH["cli"])


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_downward(module):
    upward = [i for i in GRAPH[module] if layer(i) > layer(module)]
    assert not upward, f"scrollseg.{module} imports a higher layer: {upward}"


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            nxt = nxt if nxt in GRAPH else nxt.rsplit(".", 1)[0]
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt in GRAPH and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if not state.get(module):
            visit(module, [module])
