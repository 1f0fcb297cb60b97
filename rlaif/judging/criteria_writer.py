"""The judge writes per-prompt criteria from the prompt and the group's rollouts (``judge:auto``).

As open-instruct's rubric manager does (its ``INSTANCE_WISE_RUBRIC_GENERATION_PROMPT``): shown the
request and the current group of responses, the judge writes 1-5 criteria that separate the better
responses from the worse, never a criterion and its mirror, each scored 0-2 later. The prompt is a
sandboxed Jinja template users can edit (shipped: ``rubrics/criteria_writer.jinja``; variables
``prompt``, ``responses``, ``min_criteria``, ``max_criteria``, ``max_chars``).

The answer is asked for under a JSON schema (`CRITERIA_SCHEMA`; structured outputs on vLLM and
OpenAI-compatible servers, ignored by the others) and parsed leniently (`parse_criteria_answer`: the first JSON list, inside a code fence or
amid other text; or an object with a ``criteria`` list; items may be bare strings, weight 1) and
linted (`rlaif.judging.criteria_lint`). An unusable answer is re-asked with the reason fed back, up to
``retries`` times (later attempts sample at `RETRY_TEMPERATURE`, seeded); after the last attempt the
criteria lint flags are dropped, and if fewer than one or more than five remain there is no rubric
(`Written.criteria` None: the caller masks the group and counts it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlaif.backends.base import Backend, Conversation, SamplingParams
from rlaif.errors import UserError
from rlaif.io.seeds import stable_seed
from rlaif.judging.criteria_lint import (MAX_CRITERIA, MAX_CRITERION_CHARS, MIN_CRITERIA, CriterionFinding,
                                         lint_criteria)
from rlaif.judging.templates import DATA_NOTE, fence, last_user_message, render

DEFAULT_TEMPLATE = "criteria_writer.jinja"
# structured outputs where the engine has them (vLLM, an OpenAI-compatible server); others ignore it
CRITERIA_SCHEMA: dict[str, Any] = {
    "type": "array", "minItems": MIN_CRITERIA, "maxItems": MAX_CRITERIA,
    "items": {"type": "object", "required": ["criterion", "weight"], "additionalProperties": False,
              "properties": {"criterion": {"type": "string"}, "weight": {"type": "number"}}}}
# (no maxLength: it makes xgrammar's grammar 300x slower to compile; lint checks the length)
RETRY_TEMPERATURE = 0.7
MAX_ECHO_CHARS = 1500  # how much of an unusable answer is echoed back in the re-ask
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class CriteriaParseError(ValueError):
    """The judge's answer holds no usable criteria list (the message says why, for the re-ask)."""


@dataclass
class WriterTemplate:
    """The writer's prompt template: its text and the file it came from (for error lines)."""

    text: str
    path: Path

    @classmethod
    def load(cls, path: str | Path | None = None) -> "WriterTemplate":
        """``path``, or the shipped `DEFAULT_TEMPLATE` (rubrics/ of the checkout or the package)."""
        from rlaif.shipped import shipped_dir

        file = Path(path).expanduser() if path else shipped_dir("rubrics") / DEFAULT_TEMPLATE
        try:
            return cls(file.read_text(encoding="utf-8"), file)
        except OSError as e:
            raise UserError(f"option 'auto_rubric_template': {file}: {e.strerror or e}") from None

    def conversation(self, messages: list[dict[str, str]], responses: Sequence[str]) -> Conversation:
        """The writer's chat: the data note as system message, the rendered template as user message."""
        text = render(self.text, {"prompt": fence("PROMPT", last_user_message(messages)),
                                  "responses": [fence("RESPONSE", r) for r in responses],
                                  "min_criteria": MIN_CRITERIA, "max_criteria": MAX_CRITERIA,
                                  "max_chars": MAX_CRITERION_CHARS}, self.path, 0)
        return [{"role": "system", "content": DATA_NOTE}, {"role": "user", "content": text}]


def _json_values(text: str) -> list[Any]:
    """Top-level JSON lists and objects in ``text``: inside ``` fences first, then anywhere, in order."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    for chunk in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        i = next((k for k, c in enumerate(chunk) if c in "[{"), -1)
        while i != -1:
            try:
                value, end = decoder.raw_decode(chunk, i)
            except json.JSONDecodeError:
                end = i + 1
            else:
                found.append(value)
            i = next((k for k in range(end, len(chunk)) if chunk[k] in "[{"), -1)
    return found


def _item(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        return {"criterion": value.strip(), "weight": 1.0}
    if not isinstance(value, dict):
        return None
    text = value.get("criterion", value.get("description"))
    if not isinstance(text, str):
        return None
    weight = value.get("weight", 1.0)
    if isinstance(weight, str):
        try:
            weight = float(weight)
        except ValueError:
            return None
    return {"criterion": text.strip(), "weight": weight}


def parse_criteria_answer(text: str) -> list[dict[str, Any]]:
    """The first JSON list of criteria in the judge's answer (see the module docstring);
    CriteriaParseError saying what is wrong otherwise."""
    values = _json_values(text)
    for value in values:
        items = value.get("criteria") if isinstance(value, dict) else value
        if isinstance(items, list) and items:
            parsed = [_item(v) for v in items]
            if all(p is not None for p in parsed):
                return [p for p in parsed if p is not None]
    if not values:
        raise CriteriaParseError("no JSON list found")
    raise CriteriaParseError('no JSON list of {"criterion": text, "weight": number} objects found')


def keep_clean(criteria: list[dict[str, Any]], findings: list[CriterionFinding]) -> list[dict[str, Any]] | None:
    """The criteria without those lint flagged; None when the rest is not 1-5 criteria."""
    bad = {f.index for f in findings if f.level == "error" and f.index is not None}
    kept = [c for k, c in enumerate(criteria) if k not in bad]
    return kept if MIN_CRITERIA <= len(kept) <= MAX_CRITERIA else None


@dataclass
class Written:
    """One prompt's writing: the criteria (None: none usable), the last raw answer, attempts made,
    the last attempt's lint findings, and the reason when there is no rubric."""

    criteria: list[dict[str, Any]] | None
    raw: str = ""
    attempts: int = 0
    findings: list[CriterionFinding] = field(default_factory=list)
    error: str | None = None


def _reask(conversation: Conversation, raw: str, why: str) -> Conversation:
    return conversation + [
        {"role": "assistant", "content": raw[:MAX_ECHO_CHARS]},
        {"role": "user", "content": f"That answer cannot be used ({why}). Answer again with only a JSON list of "
                                    f"{MIN_CRITERIA}-{MAX_CRITERIA} objects {{\"criterion\": text, \"weight\": "
                                    f"non-zero number}}."},
    ]


def _judge(raw: str, last: bool) -> Written:
    """Parse and lint one answer: usable criteria, or the reason (``last``: drop what lint flags)."""
    try:
        criteria = parse_criteria_answer(raw)
    except CriteriaParseError as e:
        return Written(None, raw, error=str(e))
    findings = lint_criteria(criteria)
    errors = [f for f in findings if f.level == "error"]
    if not errors:
        return Written(criteria, raw, findings=findings)
    kept = keep_clean(criteria, findings) if last else None
    why = "; ".join(str(f) for f in errors)
    return Written(kept, raw, findings=findings, error=None if kept else why)


def write_criteria(backend: Backend, template: WriterTemplate, groups: Sequence[tuple[str, list[dict[str, str]],
                   Sequence[str]]], *, seed: int, retries: int = 2, max_tokens: int = 400) -> list[Written]:
    """Criteria for each ``(prompt id, messages, responses)`` group, batched across groups; unusable
    answers re-asked up to ``retries`` times (see the module docstring)."""
    base = [template.conversation(messages, responses) for _, messages, responses in groups]
    conversations = list(base)
    out = [Written(None) for _ in groups]
    pending = list(range(len(groups)))
    for attempt in range(1 + max(0, retries)):
        params = SamplingParams(n=1, temperature=0.0 if attempt == 0 else RETRY_TEMPERATURE, max_tokens=max_tokens,
                                seed=seed, json_schema=CRITERIA_SCHEMA)
        seeds = [stable_seed(seed, "criteria", groups[k][0], attempt) for k in pending]
        generations = backend.chat([conversations[k] for k in pending], params, seeds=seeds, progress=False)
        failed = []
        for k, generation in zip(pending, generations):
            raw = generation.completions[0].text
            out[k] = _judge(raw, last=attempt == retries)
            out[k].attempts = attempt + 1
            if out[k].criteria is None:
                failed.append(k)
                conversations[k] = _reask(base[k], raw, out[k].error or "unusable")
        pending = failed
        if not pending:
            break
    return out
