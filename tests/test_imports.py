"""The package's import graph follows the layer order and has no cycle, function-level (lazy)
imports included.

Layers, top to bottom (`LAYERS`); a module may import its own package or any lower layer, never a
higher one nor a sibling package of its own layer:

    cli -> commands -> review -> loop -> eval -> dataset | train.online -> rewards -> train | studio
        -> judging -> backends -> io | config | errors | models | shipped | rlaif (the package itself)

``train.online`` sits above ``rewards`` (online trainers score rollouts with reward sources) and the
rest of ``train`` below it (``rm:DIR`` rewards score with `rlaif.train.score`). ``studio`` (the
``rlaif rubric studio`` server, imported by commands) may use judging, backends and io only.
``review`` (`rlaif review`: sampler, page, figures) reads run folders with dataset's code.
A module falls in the layer of the longest package prefix naming it, so new modules
(``rlaif.judging.methods``, ``rlaif.train.online.algorithms``) land in their package's layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rlaif"

# Top to bottom; a row's packages are siblings (they may not import each other).
LAYERS: list[tuple[str, ...]] = [
    ("rlaif.cli",),
    ("rlaif.commands",),
    ("rlaif.review",),
    ("rlaif.loop",),
    ("rlaif.eval",),
    ("rlaif.dataset", "rlaif.train.online"),
    ("rlaif.rewards",),
    ("rlaif.train", "rlaif.studio"),
    ("rlaif.judging",),
    ("rlaif.backends",),
    ("rlaif.io", "rlaif.config", "rlaif.errors", "rlaif.models", "rlaif.shipped", "rlaif"),
]
BASE_LAYER = len(LAYERS) - 1  # its modules are plumbing that any module, and each other, may use


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_imports(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def import_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    """Edges module -> rlaif module it imports, from every import statement anywhere in the file;
    ``runtime_only`` leaves out those under ``if TYPE_CHECKING:``."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_imports(tree) if runtime_only else set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import name` imports pkg.name when that is a module, else pkg.
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            graph[mod].update(t for t in targets if t in modules and t != mod)
    return graph


def package_of(module: str) -> tuple[int, str]:
    """(layer index, package prefix) of ``module``: the longest prefix in `LAYERS` that names it."""
    matches = [(len(prefix), index, prefix) for index, row in enumerate(LAYERS) for prefix in row
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module}: in no layer of LAYERS; add its package to the table")
    _, index, prefix = max(matches)
    return index, prefix


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that import upwards, or across sibling packages of one layer (the base layer excepted)."""
    bad = []
    for module, targets in sorted(graph.items()):
        layer, package = package_of(module)
        for target in sorted(targets):
            target_layer, target_package = package_of(target)
            upward = target_layer < layer
            sideways = target_layer == layer and target_package != package and layer != BASE_LAYER
            if upward or sideways:
                bad.append(f"{module} -> {target} ({package} may not import {target_package})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_lazy_imports():
    graph = import_graph()
    assert "rlaif.backends.vllm" in graph["rlaif.backends"]  # imported inside load_backend


def test_graph_can_leave_out_type_checking_imports():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rlaif.io import store\n")
    assert len(_type_checking_imports(tree)) >= 2  # the ImportFrom and its alias


def test_no_import_cycle():
    """Imports that run: a type-only import (``if TYPE_CHECKING:``) never executes, so it cannot
    make a cycle; the layer order below still counts it."""
    cycle = find_cycle(import_graph(runtime_only=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layer_table_classifies_by_longest_prefix():
    assert package_of("rlaif.train.online.algorithms.grpo")[1] == "rlaif.train.online"
    assert package_of("rlaif.train.score")[1] == "rlaif.train"
    assert package_of("rlaif.judging.methods")[1] == "rlaif.judging"
    assert package_of("rlaif")[1] == "rlaif" and package_of("rlaif.cli")[1] == "rlaif.cli"
    assert package_of("rlaif.train.online")[0] < package_of("rlaif.rewards.rm")[0] < package_of("rlaif.train")[0]


def test_layer_check_sees_upward_and_sideways_imports():
    graph = {"rlaif.io.store": {"rlaif.dataset.pairs"}, "rlaif.dataset.pairs": {"rlaif.train.online.step"},
             "rlaif.eval.plan": {"rlaif.dataset.generate", "rlaif.io.store"}, "rlaif.io.log": {"rlaif.config"}}
    assert layer_violations(graph) == [
        "rlaif.dataset.pairs -> rlaif.train.online.step (rlaif.dataset may not import rlaif.train.online)",
        "rlaif.io.store -> rlaif.dataset.pairs (rlaif.io may not import rlaif.dataset)"]


def test_every_module_has_a_layer():
    for module in import_graph():
        package_of(module)


def test_imports_follow_the_layer_order():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
