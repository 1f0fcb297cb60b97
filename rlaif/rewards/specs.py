"""Validate reward specs and weights without loading anything heavy (no model, no user import)."""

from __future__ import annotations

import ast
import json
import math
import numbers
from pathlib import Path

from rlaif.errors import UserError
from rlaif.rewards.base import spec_error

SCHEMES = ("rm", "judge", "python", "rubrics")
AUTO = "auto"  # judge:auto (a rubric file named auto.yaml needs its path: judge:./auto.yaml)


def _check_python_target(spec: str, target: str) -> None:
    file, sep, func = target.rpartition(":")
    if not sep or not file or not func:
        raise spec_error(spec, "expected python:FILE.py:FUNC")
    if not file.endswith(".py"):
        raise spec_error(spec, f"'{file}' is not a .py file (expected python:FILE.py:FUNC)")
    path = Path(file).expanduser()
    if not path.is_file():
        raise spec_error(spec, f"{file}: no such file")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise spec_error(spec, f"{file}:{e.lineno}: syntax error: {e.msg}") from None
    if func not in _top_level_names(tree):
        raise spec_error(spec, f"{file}: no top-level function '{func}'")


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level: defs, classes, assignments, imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try)):  # definitions under `if`/`try` still count
            blocks = [node.body, node.orelse, *(getattr(node, "finalbody", []),),
                      *(handler.body for handler in getattr(node, "handlers", []))]
            names |= _top_level_names(ast.Module(body=[stmt for block in blocks for stmt in block], type_ignores=[]))
    return names


def _check_rm_target(spec: str, target: str) -> None:
    path = Path(target).expanduser()
    if not path.is_dir():
        raise spec_error(spec, f"{target}: no such folder (expected an `rlaif train rm` output)")
    config = path / "config.json"
    if not config.is_file():
        raise spec_error(spec, f"{target}: not a model folder (no config.json)")
    try:
        archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, OSError) as e:
        raise spec_error(spec, f"{config}: unreadable ({e})") from None
    if not any(str(arch).endswith("ForSequenceClassification") for arch in archs):
        raise spec_error(spec, f"{target} is not a reward model (architectures: {', '.join(archs) or 'none'}); "
                               f"train one with `rlaif train rm`")


def _check_judge_target(spec: str, target: str) -> None:
    from rlaif.judging.rubrics import load_rubric

    if target == AUTO:  # judge:auto: criteria written per prompt by the judge (rlaif.rewards.auto_judge)
        return
    try:
        load_rubric(target)
    except UserError as e:
        raise spec_error(spec, str(e)) from None


def _check_rubrics_target(spec: str, target: str) -> None:
    """``rubrics:FIELD[:SCORING]``: a field name of the prompt file (its rows are checked when the prompts
    are read) and optionally how the judge scores them (`rlaif.judging.criteria.split_target`)."""
    from rlaif.judging.criteria import split_target

    try:
        target = split_target(target)[0]
    except UserError as e:
        raise spec_error(spec, str(e)) from None
    if not target.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise spec_error(spec, f"'{target}' is not a field name (expected rubrics:FIELD, the prompt file's column "
                               "holding each prompt's criteria)")


def _check_weights(specs: list[str], weights: list[float]) -> list[float]:
    if not weights:
        return [1.0] * len(specs)
    if len(weights) != len(specs):
        raise UserError(f"option 'reward_weights': {len(weights)} weights for {len(specs)} reward specs "
                        f"({', '.join(specs)}); give one per spec")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise UserError(f"option 'reward_weights': {weight!r} is not a finite number")
    return [float(weight) for weight in weights]


def parse_reward_specs(specs: list[str], weights: list[float]) -> list[tuple[str, str, float]]:
    """Validate the specs and weights without loading anything heavy; ``[(scheme, target, weight)]``.

    The spec's name (its key in metrics and `combine_rewards`) is ``f"{scheme}:{target}"``.
    """
    if not specs:
        raise UserError("option 'reward': give at least one reward spec (rm:DIR, judge:RUBRIC, judge:auto, "
                        "rubrics:FIELD or python:FILE.py:FUNC)")
    specs = [spec.strip() for spec in specs]
    dupes = sorted({spec for spec in specs if specs.count(spec) > 1})
    if dupes:
        raise UserError(f"option 'reward': '{dupes[0]}' is given twice; weight it with reward_weights instead")
    checks = {"rm": _check_rm_target, "judge": _check_judge_target, "python": _check_python_target,
              "rubrics": _check_rubrics_target}
    out = []
    for spec, weight in zip(specs, _check_weights(specs, weights)):
        scheme, sep, target = spec.partition(":")
        if not sep or scheme not in SCHEMES:
            raise spec_error(spec, f"unknown kind '{scheme if sep else spec}' (expected rm:DIR, judge:RUBRIC, "
                                   f"judge:auto, rubrics:FIELD or python:FILE.py:FUNC)")
        if not target:
            raise spec_error(spec, f"nothing after '{scheme}:'")
        checks[scheme](spec, target)
        out.append((scheme, target, weight))
    return out
