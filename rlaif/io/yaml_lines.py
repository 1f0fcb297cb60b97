"""YAML of untrusted files: loading with a bound on alias expansion, and line numbers of keys (so errors
in a user's YAML can name the line)."""

from __future__ import annotations

from typing import Any

import yaml


MAX_NODES = 100_000  # YAML nodes after alias expansion (a 3.5 KB alias bomb expands to millions)


def load_limited(text: str, max_nodes: int = MAX_NODES) -> Any:
    """``yaml.safe_load(text)``, refusing a document whose aliases expand to more than ``max_nodes``
    nodes (or refer to themselves): anything that walks the data (schema checks, error messages,
    line maps) would otherwise do exponential work. ValueError with a one-line reason."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if expanded_size(root, max_nodes) > max_nodes:
            raise ValueError(f"YAML aliases expand to more than {max_nodes:,} values (an alias bomb?)")
        return loader.construct_document(root)
    finally:
        loader.dispose()


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in ``root`` with every alias expanded, counted once per distinct node (memoised), so a
    bomb is measured without expanding it; ``limit + 1`` once over ``limit`` or on a cycle."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = limit + 1  # in progress: a recursive alias counts as too big
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        total = 1
        for child in children:
            total = min(total + size(child), limit + 1)
        sizes[id(node)] = total
        return total

    return size(root)


def key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Map each YAML key path (``("scale", "3")``, ``("examples", 2, "better")``) to its 1-based line."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (str(k.value),)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def line_of(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int | None:
    """Line of the deepest known prefix of ``path``."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None
