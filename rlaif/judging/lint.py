"""`rlaif rubric lint`: every check a rubric file can fail, as ``file:line: message`` findings.

Checks, in order: YAML syntax; the JSON schema of the rubric format; semantic checks (contiguous
integer scale with a label per point, verdict schema agrees with the scale, ...); the name
matches the file name; template syntax; template variables (unknown ones, and required ones not
used, via jinja2.meta; see the table in `rlaif.judging.rubrics`); rendering on a sample and on every
calibration example; optionally (``tokenizer``) that every score/choice string is one token after
the assistant prefix, so the judge's next-token probabilities cover it.

rules rubrics have no template: their checks are validated (kind, regex, JSON Schema via
``check_schema``, weights, min <= max) and run once on the sample and on every calibration
example. Verdict rubrics get a warning where the schema's string fields are capped to fit
``max_tokens`` (`rlaif.judging.rubrics.capped_verdict_schema`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from rlaif.io.records import as_messages
from rlaif.judging.rubrics import (REQUIRED_VARIABLES, TEMPLATE_VARIABLES, RubricError, contrast_conversation,
                                   environment, judge_conversation, key_lines, line_of, read_rubric_data,
                                   rubric_from_file, schema_errors, semantic_errors, template_source,
                                   verdict_char_budget)
from rlaif.judging.rules import score_response

SAMPLE_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SAMPLE_RESPONSES = ("The capital of France is Paris.", "It is Lyon.")


@dataclass
class Finding:
    path: Path
    line: int | None
    message: str
    level: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        loc = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{loc}: {'warning: ' if self.level == 'warning' else ''}{self.message}"


def _from_error(path: Path, e: RubricError) -> Finding:
    """Split a RubricError's ``file:line: message`` back into a Finding."""
    m = re.match(r"(.*?):(\d+): (.*)", str(e))
    if m:
        return Finding(Path(m.group(1)), int(m.group(2)), m.group(3))
    return Finding(path, None, str(e).removeprefix(f"{path}: "))


def _line_of_name(text: str, name: str) -> int:
    for n, line in enumerate(text.splitlines(), 1):
        if re.search(rf"\b{re.escape(name)}\b", line):
            return n
    return 1


def lint_file(path: str | Path, tokenizer: Any = None) -> list[Finding]:
    """All findings for one rubric file (errors first problem-by-problem, then warnings)."""
    path = Path(path)
    try:
        data, text = read_rubric_data(path)
    except RubricError as e:
        return [_from_error(path, e)]
    lines = key_lines(text)
    problems = schema_errors(data) + semantic_errors(data, path.parent)
    out = [Finding(path, line_of(lines, p) or 1, msg) for p, msg in problems]
    if out:
        return out
    method = data["method"]
    if data["name"] != path.stem:
        out.append(Finding(path, lines.get(("name",)), f"name '{data['name']}' differs from the file name "
                           f"'{path.stem}' (rubrics are looked up by file name; judgements are keyed by name)"))
    if method == "rules":
        if not data.get("examples"):
            out.append(Finding(path, None, "no calibration examples: `rlaif rubric calibrate` will need --examples",
                               "warning"))
        return out + _rules_checks(path, lines)
    if method == "verdict":
        out += _verdict_cap_warnings(path, data, lines)
    try:
        template, tpath, offset = template_source(path, data, lines)
    except RubricError as e:
        return out + [_from_error(path, e)]
    try:
        ast = environment().parse(template)
    except jinja2.TemplateSyntaxError as e:
        return out + [Finding(tpath, offset + (e.lineno or 1), f"template syntax: {e.message}")]
    used = meta.find_undeclared_variables(ast)
    if data.get("contrast_template"):
        try:
            used |= meta.find_undeclared_variables(environment().parse(data["contrast_template"]))
        except jinja2.TemplateSyntaxError as e:
            return out + [Finding(path, (lines.get(("contrast_template",)) or 0) + (e.lineno or 1),
                                  f"contrast_template syntax: {e.message}")]
    allowed = {v for v, (methods, _) in TEMPLATE_VARIABLES.items() if method in methods}
    for name in sorted(used - allowed):
        hint = "" if name not in TEMPLATE_VARIABLES else f" (not available to the {method} method)"
        out.append(Finding(tpath, offset + _line_of_name(template, name),
                           f"unknown template variable '{name}'{hint}; available: {', '.join(sorted(allowed))}"))
    for name in REQUIRED_VARIABLES[method]:
        if name not in used:
            out.append(Finding(tpath, offset + 1 if offset else 1,
                               f"template never uses '{name}': the judge would not see the candidate"))
    if data.get("principles") and "principles" not in used:
        out.append(Finding(path, lines.get(("principles",)), "principles are defined but the template never "
                           "uses 'principles'"))
    if "principles" in used and not data.get("principles"):
        out.append(Finding(tpath, offset + _line_of_name(template, "principles"),
                           "template uses 'principles' but the rubric defines none (renders empty)", "warning"))
    if not used & {"prompt", "conversation"}:
        out.append(Finding(tpath, offset + 1 if offset else 1,
                           "template uses neither 'prompt' nor 'conversation': the judge cannot see the request",
                           "warning"))
    if method in ("logprob", "verdict") and "scale" not in used:
        out.append(Finding(tpath, offset + 1 if offset else 1, "template never shows the 'scale' labels", "warning"))
    if method == "verdict" and "verdict_format" not in used:
        out.append(Finding(tpath, offset + 1 if offset else 1, "template never shows 'verdict_format': engines "
                           "without structured outputs will not know the JSON to write", "warning"))
    if not data.get("examples"):
        out.append(Finding(path, None, "no calibration examples: `rlaif rubric calibrate` will need --examples",
                           "warning"))
    if any(f.level == "error" for f in out):
        return out
    out += _render_checks(path, data, lines)
    if tokenizer is not None and method in ("logprob", "pairwise") and not any(f.level == "error" for f in out):
        out += _token_checks(path, lines, rubric_from_file(path), tokenizer)
    return out


def _render_checks(path: Path, data: dict[str, Any], lines: dict[tuple[Any, ...], int]) -> list[Finding]:
    """Render the template on a sample and on every calibration example."""
    try:
        rubric = rubric_from_file(path)
    except RubricError as e:
        return [_from_error(path, e)]
    samples = [(None, SAMPLE_MESSAGES, *SAMPLE_RESPONSES)]
    samples += [(k, as_messages(ex.prompt), ex.response_a, ex.response_b)
                for k, ex in enumerate(rubric.examples)]
    for k, messages, a, b in samples:
        try:
            if rubric.method == "pairwise":
                judge_conversation(rubric, messages, response_a=a, response_b=b, principles=rubric.principles)
            elif rubric.method == "likelihood":
                judge_conversation(rubric, messages, principles=rubric.principles)
                if rubric.contrast:
                    contrast_conversation(rubric, messages, principles=rubric.principles)
            else:
                judge_conversation(rubric, messages, response=a, principles=rubric.principles)
        except RubricError as e:
            f = _from_error(path, e)
            if k is not None:
                f.message += f" (rendering example {k}, line {lines.get(('examples', k))})"
            return [f]
    return []


def _rules_checks(path: Path, lines: dict[tuple[Any, ...], int]) -> list[Finding]:
    """Load the rubric and run its checks on the sample and every calibration example's responses."""
    try:
        rubric = rubric_from_file(path)
    except RubricError as e:
        return [_from_error(path, e)]
    responses = list(SAMPLE_RESPONSES) + [r for ex in rubric.examples for r in (ex.response_a, ex.response_b)]
    for k, response in enumerate(responses):
        try:
            score_response(rubric.checks, response, "stop", len(response.split()))
        except Exception as e:  # a check that cannot run (e.g. a schema that jsonschema cannot resolve)
            ex = (k - len(SAMPLE_RESPONSES)) // 2
            at = f" (example {ex}, line {lines.get(('examples', ex))})" if k >= len(SAMPLE_RESPONSES) else ""
            return [Finding(path, lines.get(("checks",)), f"a check failed to run{at}: {type(e).__name__}: {e}")]
    return []


def _verdict_cap_warnings(path: Path, data: dict[str, Any], lines: dict[tuple[Any, ...], int]) -> list[Finding]:
    """String fields whose maxLength (or none) would not fit max_tokens: the loader caps them."""
    schema = data["verdict_schema"]
    budget = verdict_char_budget(schema, data.get("max_tokens", 384))
    out = []
    for key, prop in (schema.get("properties") or {}).items():
        if isinstance(prop, dict) and prop.get("type") == "string" and prop.get("maxLength", budget + 1) > budget:
            have = f"maxLength {prop['maxLength']}" if "maxLength" in prop else "no maxLength"
            out.append(Finding(path, line_of(lines, ("verdict_schema", "properties", key)),
                               f"verdict field '{key}' has {have}: capped to {budget} characters so the verdict "
                               f"closes within max_tokens {data.get('max_tokens', 384)}", "warning"))
    return out


def _token_checks(path: Path, lines: dict[tuple[Any, ...], int], rubric: Any, tokenizer: Any) -> list[Finding]:
    """Each choice should be one token, and no two choices may share their first token."""
    from rlaif.backends.choices import choice_token_ids

    key = ("scale",) if rubric.method == "logprob" else ("assistant_prefix",)
    line = line_of(lines, key)
    out = []
    for choice in rubric.choices:
        ids = tokenizer.encode(choice.strip(), add_special_tokens=False)
        if len(ids) != 1:
            out.append(Finding(path, line, f"choice {choice!r} is {len(ids)} tokens in this judge's tokenizer "
                               f"({tokenizer.convert_ids_to_tokens(ids)}); only its first token is scored"))
    try:
        choice_token_ids(tokenizer, rubric.choices)
    except Exception as e:  # UserError: two choices share a token
        out.append(Finding(path, line, str(e).removeprefix("choice_logprobs: ")))
    return out
