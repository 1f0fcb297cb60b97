"""Benchmark rows and their checkers: is a response right, given the row's reference answer?

A benchmark is a JSONL file (or a shipped set by name: ``basic``) of rows
``{"id"?, "prompt" | "messages", "answer": ..., "check"?, "tolerance"?}``; ``check`` defaults to the
file-level default (option ``check``). Checkers:

- ``exact``: the response equals the answer after SQuAD-style normalisation (Rajpurkar et al. 2016,
  the official evaluation script): lower case, punctuation removed, the articles a/an/the removed,
  whitespace collapsed. ``answer`` may be a list: any of them.
- ``regex``: the pattern ``answer`` is found in the response (``re`` syntax, the ``regex`` module with a
  time limit per search, as the ``rules`` rubrics do; a search past the limit counts as wrong).
- ``number``: the last number in the response (``-1,234.5``, ``3e8``) is within ``tolerance`` of the answer:
  ``|x - y| <= max(abs, rel * |y|)``; ``tolerance`` is a number (absolute) or ``{"abs": a, "rel": r}``
  (default: option ``tolerance``). ``answer`` may be a list: any of them.
- ``python:FILE.py:FUNC``: ``FUNC(response, answer, row) -> bool | number`` (right when truthy); the file is
  imported once by path, as ``python:`` rewards are (`rlaif.rewards.python_function`). A function that
  raises is a one-line error naming the benchmark row (file:line) and the line of FILE.py that raised.

Bad rows (no answer, unknown checker, a bad pattern, tolerance or answer type) are one-line errors
naming file:line:field, found before any model is loaded.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import regex

from rlaif.errors import UserError, where
from rlaif.io.records import Prompt, read_prompts

REGEX_TIMEOUT_S = 1.0
CHECKS = ("exact", "regex", "number")  # and python:FILE.py:FUNC
ARTICLES = re.compile(r"\b(a|an|the)\b")
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
PUNCTUATION = set(string.punctuation)


@dataclass
class Item:
    """One benchmark row: the prompt, its reference answer(s) and its checker."""

    prompt: Prompt
    answers: list[Any]
    check: str
    tolerance: tuple[float, float] = (0.0, 0.0)  # (absolute, relative), number checker
    raw: dict[str, Any] = field(default_factory=dict)  # the row as written (python checkers get it)

    @property
    def source(self) -> str:
        return self.prompt.source


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands commas allowed), or None."""
    found = [m.group(0) for m in NUMBER.finditer(text) if any(ch.isdigit() for ch in m.group(0))]
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def check_exact(response: str, answers: list[Any]) -> bool:
    got = normalise(response)
    return any(got == normalise(str(answer)) for answer in answers)


def check_regex(response: str, answers: list[Any]) -> bool:
    try:
        return any(regex.search(str(pattern), response, timeout=REGEX_TIMEOUT_S) for pattern in answers)
    except TimeoutError:
        return False


def check_number(response: str, answers: list[Any], tolerance: tuple[float, float]) -> bool:
    got = last_number(response)
    if got is None:
        return False
    absolute, relative = tolerance
    return any(abs(got - float(y)) <= max(absolute, relative * abs(float(y))) for y in answers)


def _tolerance(value: Any, source: str) -> tuple[float, float]:
    def number(x: Any, name: str) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise UserError(f"{source}: field '{name}': expected a number >= 0, got {x!r}")
        return float(x)
    if isinstance(value, dict):
        unknown = set(value) - {"abs", "rel"}
        if unknown:
            raise UserError(f"{source}: field 'tolerance': unknown key {sorted(unknown)[0]!r} (use abs, rel)")
        return number(value.get("abs", 0.0), "tolerance.abs"), number(value.get("rel", 0.0), "tolerance.rel")
    return number(value, "tolerance"), 0.0


def _checker_error(source: str, check: str) -> UserError:
    return UserError(f"{source}: field 'check': unknown checker {check!r} (use exact, regex, number or "
                     f"python:FILE.py:FUNC)")


def _item(prompt: Prompt, default_check: str, default_tolerance: float) -> Item:
    row = prompt.metadata
    source = prompt.source
    if row.get("answer") is None:
        raise UserError(f"{source}: field 'answer': missing (every benchmark row needs its reference answer)")
    answers = list(row["answer"]) if isinstance(row["answer"], list) else [row["answer"]]
    if not answers:
        raise UserError(f"{source}: field 'answer': an empty list")
    check = row.get("check", default_check)
    if not isinstance(check, str) or (check not in CHECKS and not check.startswith("python:")):
        raise _checker_error(source, str(check))
    tolerance = _tolerance(row.get("tolerance", default_tolerance), source)
    for answer in answers:
        if check == "number" and (isinstance(answer, bool) or not isinstance(answer, (int, float, str))
                                  or last_number(str(answer)) is None):
            raise UserError(f"{source}: field 'answer': {answer!r} is not a number (check 'number')")
        if check in ("exact", "regex") and not isinstance(answer, (str, int, float)):
            raise UserError(f"{source}: field 'answer': expected a string (or a list of strings), got {answer!r}")
        if check == "regex":
            try:
                regex.compile(str(answer))
            except regex.error as e:
                raise UserError(f"{source}: field 'answer': bad regular expression ({e})") from None
    if check == "number":
        answers = [last_number(str(answer)) for answer in answers]
    return Item(prompt, answers, check, tolerance, dict(row))


def read_benchmark(path: str, default_check: str = "exact", default_tolerance: float = 1e-6) -> list[Item]:
    """The rows of a benchmark file (or shipped set by name), checked; one-line errors naming file:line."""
    from rlaif.shipped import shipped_dir

    if default_check not in CHECKS and not default_check.startswith("python:"):
        raise UserError(f"option 'check': unknown checker {default_check!r} (use exact, regex, number or "
                        f"python:FILE.py:FUNC)")
    shipped = shipped_dir("benchmarks") / f"{path}.jsonl"
    if not Path(path).is_file() and not Path(path).suffix and shipped.is_file():
        path = str(shipped)
    elif not Path(path).is_file():
        names = ", ".join(sorted(p.stem for p in shipped_dir("benchmarks").glob("*.jsonl")))
        raise UserError(f"{path}: file not found (give a benchmark file, or a shipped set: {names})")
    return [_item(prompt, default_check, default_tolerance) for prompt in read_prompts(path)]


class Checkers:
    """Scores responses: ``checkers(item, response) -> bool``; ``python:`` functions are imported once."""

    def __init__(self, items: list[Item]) -> None:
        from rlaif.rewards.python_function import PythonReward

        modules: dict = {}
        self.functions: dict[str, tuple[Path, Callable[..., Any]]] = {}
        for item in items:
            if item.check.startswith("python:") and item.check not in self.functions:
                target = item.check.split(":", 1)[1]
                if target.count(":") < 1:
                    raise UserError(f"{item.source}: field 'check': {item.check!r}: expected python:FILE.py:FUNC")
                try:
                    loaded = PythonReward(item.check, target, modules)
                except UserError as e:
                    raise UserError(f"{item.source}: field 'check': {e}") from None
                self.functions[item.check] = (loaded.file, loaded.fn)

    def __call__(self, item: Item, response: str) -> bool:
        if item.check == "exact":
            return check_exact(response, item.answers)
        if item.check == "regex":
            return check_regex(response, item.answers)
        if item.check == "number":
            return check_number(response, item.answers, item.tolerance)
        file, fn = self.functions[item.check]
        answer = item.raw["answer"]
        try:
            value = fn(response, answer, item.raw)
        except Exception as e:
            from rlaif.rewards.python_function import _first_line, _where_raised

            raise UserError(f"{item.source}: field 'check': {item.check} raised {_first_line(e)}"
                            f"{_where_raised(e, file)} on the response {response[:60]!r}") from None
        if value is None or isinstance(value, str):
            raise UserError(f"{where(item.source)}field 'check': {item.check} returned {value!r}; expected a bool "
                            f"or a number")
        return bool(value)
