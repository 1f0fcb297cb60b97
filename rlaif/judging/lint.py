"""`rlaif rubric lint`: every check a rubric file can fail, as ``file:line: message`` findings.

Checks, in order: YAML syntax; the JSON schema of the rubric format; semantic checks (contiguous
integer scale with a label per point, verdict schema agrees with the scale, ...); the name
matches the file name; template syntax; template variables (unknown ones, and required ones not
used, via jinja2.meta; see the table in `rlaif.judging.variables`); rendering on a sample and on every
calibration example; optionally (``tokenizer``) that every score/choice string is one token after
the assistant prefix, so the judge's next-token probabilities cover it.

What differs per method comes from the method (`rlaif.judging.methods`): its variables, its
template warnings, its key warnings (verdict: string fields capped to fit ``max_tokens``) and its
dry run. rules rubrics have no template: their checks are validated (kind, regex, JSON Schema via
``check_schema``, weights, min <= max) and run once on the sample and on every calibration
example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from rlaif.io.records import as_messages
from rlaif.io.yaml_lines import key_lines, line_of
from rlaif.judging.methods import METHODS, JudgeMethod
from rlaif.judging.rubrics import read_rubric_data, rubric_from_file, template_source
from rlaif.judging.templates import RubricError, environment, one_line
from rlaif.judging.validation import schema_errors, semantic_errors
from rlaif.judging.variables import TEMPLATE_VARIABLES, variables_of

SAMPLE_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SAMPLE_RESPONSES = ("The capital of France is Paris.", "It is Lyon.")
NO_EXAMPLES = "no calibration examples: `rlaif rubric calibrate` will need --examples"


@dataclass
class Finding:
    path: Path
    line: int | None
    message: str
    level: str = "error"  # "error" | "warning"

    def __post_init__(self) -> None:
        self.message = one_line(self.message)  # a message may quote a huge value

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
    out = [Finding(path, line_of(lines, key_path) or 1, message) for key_path, message in problems]
    if out:
        return out
    method = METHODS[data["method"]]
    if data["name"] != path.stem:
        out.append(Finding(path, lines.get(("name",)), f"name '{data['name']}' differs from the file name "
                           f"'{path.stem}' (rubrics are looked up by file name; judgements are keyed by name)"))
    out += [Finding(path, line_of(lines, key_path), message, "warning")
            for key_path, message in method.lint_warnings(data)]
    if not method.templated:
        if not data.get("examples"):
            out.append(Finding(path, None, NO_EXAMPLES, "warning"))
        return out + _dry_runs(path, lines)
    out += _template_findings(path, data, lines, method)
    if any(f.level == "error" for f in out):
        return out
    out += _dry_runs(path, lines)
    if tokenizer is not None and not any(f.level == "error" for f in out):
        rubric = rubric_from_file(path)
        if rubric.choices:
            out += _token_checks(path, lines, rubric, tokenizer)
    return out


def _template_findings(path: Path, data: dict[str, Any], lines: dict[tuple[Any, ...], int],
                       method: JudgeMethod) -> list[Finding]:
    """Template syntax, unknown and missing variables, principles, what a good template shows."""
    try:
        template, template_path, offset = template_source(path, data, lines)
    except RubricError as e:
        return [_from_error(path, e)]
    first_line = offset + 1 if offset else 1
    try:
        used = meta.find_undeclared_variables(environment().parse(template))
    except jinja2.TemplateSyntaxError as e:
        return [Finding(template_path, offset + (e.lineno or 1), f"template syntax: {e.message}")]
    if data.get("contrast_template"):
        try:
            used |= meta.find_undeclared_variables(environment().parse(data["contrast_template"]))
        except jinja2.TemplateSyntaxError as e:
            return [Finding(path, (lines.get(("contrast_template",)) or 0) + (e.lineno or 1),
                            f"contrast_template syntax: {e.message}")]
    allowed = variables_of(method.name)
    out = []
    for name in sorted(used - allowed):
        hint = "" if name not in TEMPLATE_VARIABLES else f" (not available to the {method.name} method)"
        out.append(Finding(template_path, offset + _line_of_name(template, name),
                           f"unknown template variable '{name}'{hint}; available: {', '.join(sorted(allowed))}"))
    for name in method.required_variables:
        if name not in used:
            out.append(Finding(template_path, first_line,
                               f"template never uses '{name}': the judge would not see the candidate"))
    if data.get("principles") and "principles" not in used:
        out.append(Finding(path, lines.get(("principles",)), "principles are defined but the template never "
                           "uses 'principles'"))
    if "principles" in used and not data.get("principles"):
        out.append(Finding(template_path, offset + _line_of_name(template, "principles"),
                           "template uses 'principles' but the rubric defines none (renders empty)", "warning"))
    if not used & {"prompt", "conversation"}:
        out.append(Finding(template_path, first_line,
                           "template uses neither 'prompt' nor 'conversation': the judge cannot see the request",
                           "warning"))
    out += [Finding(template_path, first_line, message, "warning") for message in method.template_warnings(used)]
    if not data.get("examples"):
        out.append(Finding(path, None, NO_EXAMPLES, "warning"))
    return out


def _dry_runs(path: Path, lines: dict[tuple[Any, ...], int]) -> list[Finding]:
    """Build the judge input (rules: run the checks) on a sample and on every calibration example."""
    try:
        rubric = rubric_from_file(path)
    except RubricError as e:
        return [_from_error(path, e)]
    samples = [(None, SAMPLE_MESSAGES, *SAMPLE_RESPONSES)]
    samples += [(index, as_messages(example.prompt), example.response_a, example.response_b)
                for index, example in enumerate(rubric.examples)]
    for index, messages, response_a, response_b in samples:
        at = "" if index is None else f"example {index}, line {lines.get(('examples', index))}"
        try:
            rubric.judge_method.dry_run(rubric, messages, response_a, response_b)
        except RubricError as e:
            finding = _from_error(path, e)
            if at:
                finding.message += f" (rendering {at})"
            return [finding]
        except Exception as e:  # a rules check that cannot run (e.g. a schema that jsonschema cannot resolve)
            return [Finding(path, lines.get(("checks",)), f"a check failed to run{f' ({at})' if at else ''}: "
                                                          f"{type(e).__name__}: {e}")]
    return []


def _token_checks(path: Path, lines: dict[tuple[Any, ...], int], rubric: Any, tokenizer: Any) -> list[Finding]:
    """Each choice should be one token, and no two choices may share their first token."""
    from rlaif.backends.choices import choice_token_ids

    line = line_of(lines, rubric.judge_method.choices_key)
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
