"""Rubric validation: the JSON schema of the format, then the checks it cannot express.

The schema is ``rlaif/judging/schemas/rubric.schema.json``; `semantic_errors` adds a contiguous
integer scale with a label per point, the method's own checks (`JudgeMethod.semantic_errors`) and
keys that belong to another method. Each problem is (key path, message); the loader and
`rlaif rubric lint` turn key paths into file lines.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from rlaif.judging.methods import METHODS
from rlaif.judging.methods.base import Problem, scale_points

SCHEMA_PATH = Path(__file__).parent / "schemas" / "rubric.schema.json"


@lru_cache(maxsize=1)
def rubric_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _schema_message(error: Any, path: tuple[Any, ...], data: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    """(key path, one-line message) for one jsonschema error, in the rubric format's words."""
    if error.validator == "oneOf" and not path:
        return path, "give exactly one of 'template' or 'template_file'"
    if error.validator == "not" and not path:
        at = next(((key,) for key in ("template", "template_file") if key in data), path)
        return at, "rules rubrics have no template: they run 'checks' (no judge model)"
    if error.validator == "oneOf" and path[:1] == ("checks",) and len(path) == 2:
        return path, f"field '{'.'.join(map(str, path))}': give exactly one of 'schema' or 'schema_file'"
    if error.validator == "anyOf" and path[:1] == ("checks",):
        return path, f"field '{'.'.join(map(str, path))}': give 'min', 'max' or both"
    field_ = ".".join(map(str, path))
    return path, (f"field '{field_}': " if field_ else "") + error.message


def schema_errors(data: dict[str, Any]) -> list[Problem]:
    """(key path, message) for every JSON-schema violation."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(rubric_schema())
    out = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            path += (next((key for key in error.instance if key not in known), ""),)  # point at the extra key
        out.append(_schema_message(error, path, data))
    return out


def _scale_errors(scale: Any) -> list[Problem]:
    """An integer scale must be contiguous, with a label for every point, listed low to high."""
    points = scale_points(scale)
    if not points:
        return []
    out: list[Problem] = []
    ordered = sorted(points)
    if ordered != list(range(ordered[0], ordered[-1] + 1)):
        missing = sorted(set(range(ordered[0], ordered[-1] + 1)) - set(ordered))
        out.append((("scale",), f"scale must be contiguous integers with a label for every point; missing {missing}"))
    if points != ordered:
        out.append((("scale",), "list scale points in increasing order"))
    return out


def semantic_errors(data: dict[str, Any], base: Path | None = None) -> list[Problem]:
    """Checks the schema cannot express: the scale, the method's own (``base``: the rubric's folder,
    for files it names), keys that belong to another method, principle options without principles."""
    name = data.get("method")
    method = METHODS.get(name) if isinstance(name, str) else None
    out = _scale_errors(data.get("scale"))
    if method is not None:
        out += method.semantic_errors(data, base)
    for other in METHODS.values():
        if other is not method:
            out += other.foreign_key_errors(data, name)
    for key in ("principles_mode", "principles_per_judgement"):
        if key in data and "principles" not in data:
            out.append(((key,), f"'{key}' without principles"))
    return out
