"""Line numbers of YAML keys, so errors in a user's YAML can name the line."""

from __future__ import annotations

from typing import Any

import yaml


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
