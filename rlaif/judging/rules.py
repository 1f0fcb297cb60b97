"""The ``rules`` judging method: declarative checks from the rubric YAML, no model, no code run.

Each check looks at one candidate response (and, for two kinds, what the policy engine reported
about it) and passes or fails; a check that cannot be evaluated is *skipped*. The score is the
weighted share of passed checks among those evaluated::

    score = sum_c w_c * passed_c / sum_c w_c      (c over checks not skipped; in [0, 1])

A response whose every check is skipped has no score (null, counted in the row's failures).

Check kinds (``kind`` in the YAML; every check takes ``weight`` > 0, default 1, and an optional
``name`` shown in `rlaif rubric preview` and the judgement details):

==============  =====================================================================================
regex           ``pattern`` (Python ``re`` syntax; flags inline, e.g. ``(?i)``) is found in the response;
                a search that runs past `REGEX_TIMEOUT_S` (catastrophic backtracking) counts as failed
not_regex       ``pattern`` is not found in the response
words           the response has between ``min`` and ``max`` whitespace-separated words (either optional)
tokens          between ``min`` and ``max`` tokens, as counted by the policy engine (candidates.jsonl
                ``num_tokens``); skipped where the candidate file has no engine count (a user
                candidates file: ``finish_reasons`` "unknown")
json            the whole response (whitespace stripped) parses as JSON
json_schema     it parses as JSON and validates against ``schema`` (inline) or ``schema_file`` (a JSON
                file beside the rubric)
no_refusal      none of ``phrases`` (case-insensitive substrings; default `REFUSAL_PHRASES`) occurs
ends_with_eos   the policy ended its turn (``finish_reason`` "stop"), not cut off at max_tokens
                ("length"); skipped where the finish reason is unknown (user candidate files)
==============  =====================================================================================
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import regex  # searches with ``re``'s syntax and a time limit: untrusted text cannot stall a judge

from rlaif.judging.paths import rubric_relative

REGEX_TIMEOUT_S = 1.0  # per search of one check on one response
CHECK_KINDS = ("regex", "not_regex", "words", "tokens", "json", "json_schema", "no_refusal", "ends_with_eos")
UNKNOWN_FINISH = ("", "unknown", None)
CHECK_KEYS = {"regex": {"pattern"}, "not_regex": {"pattern"}, "words": {"min", "max"}, "tokens": {"min", "max"},
              "json": set(), "json_schema": {"schema", "schema_file"}, "no_refusal": {"phrases"},
              "ends_with_eos": set()}  # the keys of each kind, besides kind, name and weight

# Common openings of a refusal by an instruction-tuned model (matched case-insensitively).
REFUSAL_PHRASES = (
    "I'm sorry, but", "I am sorry, but", "I apologize, but", "I cannot help", "I can't help", "I cannot assist",
    "I can't assist", "I cannot provide", "I can't provide", "I'm unable to", "I am unable to", "I'm not able to",
    "I am not able to", "I won't be able to", "I will not be able to", "As an AI", "as a language model",
    "I cannot comply", "I can't comply", "I must decline",
)


@dataclass
class Check:
    kind: str
    weight: float = 1.0
    name: str = ""
    pattern: str | None = None
    min: int | None = None
    max: int | None = None
    schema: dict[str, Any] | None = None
    phrases: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name or self.kind


@dataclass
class Outcome:
    """One check on one response: passed True/False, or None when skipped; ``why`` says what was seen."""

    check: str
    kind: str
    weight: float
    passed: bool | None
    why: str


def load_schema_file(base: Path | None, name: str) -> dict[str, Any]:
    """Read ``schema_file`` relative to the rubric's folder (and inside it, see `rlaif.judging.paths`);
    ValueError with a one-line reason."""
    path = rubric_relative(base or Path.cwd(), name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ValueError(f"schema_file {path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"schema_file {path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"schema_file {path}: a JSON schema is a JSON object")
    return data


def checks_from_data(items: Sequence[dict[str, Any]], base: Path | None) -> list[Check]:
    """Checks from the rubric's validated ``checks`` list (``schema_file`` read from ``base``)."""
    out = []
    for item in items:
        schema = item.get("schema")
        if "schema_file" in item:
            schema = load_schema_file(base, item["schema_file"])
        phrases = list(item.get("phrases", REFUSAL_PHRASES if item["kind"] == "no_refusal" else []))
        out.append(Check(kind=item["kind"], weight=float(item.get("weight", 1.0)), name=item.get("name", ""),
                         pattern=item.get("pattern"), min=item.get("min"), max=item.get("max"), schema=schema,
                         phrases=phrases))
    return out


def check_errors(checks: Any, base: Path | None) -> list[tuple[tuple[Any, ...], str]]:
    """rules: regexes compile, schemas are JSON Schemas (inline or file), min <= max, and each
    check carries only the keys of its kind (``base``: the rubric's folder, for ``schema_file``)."""
    out: list[tuple[tuple[Any, ...], str]] = []
    for index, spec in enumerate(checks if isinstance(checks, list) else []):
        if not isinstance(spec, dict) or spec.get("kind") not in CHECK_KINDS:
            continue
        at = ("checks", index)
        for key in sorted(set(spec) - CHECK_KEYS[spec["kind"]] - {"kind", "name", "weight"}):
            out.append((at + (key,), f"field 'checks.{index}.{key}' does not apply to a {spec['kind']} check"))
        if isinstance(spec.get("pattern"), str):
            try:
                re.compile(spec["pattern"])
            except re.error as e:
                out.append((at + ("pattern",), f"field 'checks.{index}.pattern': invalid regex: {e}"))
        if isinstance(spec.get("min"), int) and isinstance(spec.get("max"), int) and spec["min"] > spec["max"]:
            out.append((at + ("max",), f"field 'checks.{index}': min {spec['min']} > max {spec['max']}"))
        out += _schema_errors(spec, index, base)
    return out


def _schema_errors(spec: dict[str, Any], index: int, base: Path | None) -> list[tuple[tuple[Any, ...], str]]:
    """A json_schema check's schema (inline or ``schema_file``) is a valid JSON Schema."""
    import jsonschema

    at = ("checks", index)
    schema, where_ = spec.get("schema"), at + ("schema",)
    if isinstance(spec.get("schema_file"), str):
        where_ = at + ("schema_file",)
        try:
            schema = load_schema_file(base, spec["schema_file"])
        except ValueError as e:
            return [(where_, f"field 'checks.{index}.schema_file': {e}")]
    if not isinstance(schema, dict):
        return []
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        field_ = ".".join(map(str, e.absolute_path))
        return [(where_ + tuple(e.absolute_path if spec.get("schema") is not None else ()),
                 f"field 'checks.{index}': not a valid JSON Schema{' at ' + field_ if field_ else ''}: {e.message}")]
    return []


def _bounds(n: int, check: Check, unit: str) -> tuple[bool, str]:
    ok = (check.min is None or n >= check.min) and (check.max is None or n <= check.max)
    lo = "" if check.min is None else f">= {check.min}"
    hi = "" if check.max is None else f"<= {check.max}"
    return ok, f"{n} {unit if n != 1 else unit[:-1]} (want {' and '.join(x for x in (lo, hi) if x)})"


def _parse_json(text: str) -> tuple[bool, Any, str]:
    try:
        return True, json.loads(text.strip()), "valid JSON"
    except json.JSONDecodeError as e:
        return False, None, f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"


def _search(check: Check, response: str) -> tuple[bool, str]:
    """A regex / not_regex check; a search past `REGEX_TIMEOUT_S` fails the check, whatever its kind."""
    try:
        m = regex.search(check.pattern or "", response, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        return False, f"check {check.label!r}: regex timed out after {REGEX_TIMEOUT_S:g}s (catastrophic backtracking?)"
    return (m is not None) == (check.kind == "regex"), (f"found {m.group(0)[:40]!r}" if m else "no match")


def run_check(check: Check, response: str, finish_reason: str | None = None,
              num_tokens: int | None = None) -> Outcome:
    """Evaluate one check on one response (pure)."""
    passed: bool | None
    kind = check.kind
    if kind in ("regex", "not_regex"):
        passed, why = _search(check, response)
    elif kind == "words":
        passed, why = _bounds(len(response.split()), check, "words")
    elif kind == "tokens":
        if num_tokens is None or finish_reason in UNKNOWN_FINISH:
            passed, why = None, "skipped: no token count from the policy engine"
        else:
            passed, why = _bounds(num_tokens, check, "tokens")
    elif kind == "json":
        passed, _, why = _parse_json(response)
    elif kind == "json_schema":
        import jsonschema

        passed, obj, why = _parse_json(response)
        if passed:
            err = next(iter(sorted(jsonschema.Draft202012Validator(check.schema or {}).iter_errors(obj),
                                   key=lambda e: list(map(str, e.path)))), None)
            passed = err is None
            where = ".".join(map(str, err.path)) if err is not None else ""
            why = "valid against the schema" if err is None else \
                f"schema: {(where + ': ') if where else ''}{err.message}"[:200]
    elif kind == "no_refusal":
        low = response.lower()
        hit = next((p for p in check.phrases if p.lower() in low), None)
        passed, why = hit is None, (f"refusal phrase {hit!r}" if hit else "no refusal phrase")
    elif kind == "ends_with_eos":
        if finish_reason in UNKNOWN_FINISH:
            passed, why = None, "skipped: finish reason unknown"
        else:
            passed, why = finish_reason == "stop", f"finish_reason {finish_reason!r}"
    else:  # the rubric schema admits only CHECK_KINDS
        raise ValueError(f"unknown check kind {kind!r}")
    return Outcome(check.label, kind, check.weight, passed, why)


def score_response(checks: Sequence[Check], response: str, finish_reason: str | None = None,
                   num_tokens: int | None = None) -> tuple[float | None, list[Outcome]]:
    """(weighted share of passed checks among those evaluated, or None if all skipped; outcomes)."""
    outcomes = [run_check(c, response, finish_reason, num_tokens) for c in checks]
    ran = [o for o in outcomes if o.passed is not None]
    total = sum(o.weight for o in ran)
    if not ran or total <= 0:
        return None, outcomes
    return sum(o.weight for o in ran if o.passed) / total, outcomes
