"""verdict: the judge writes a rationale and a JSON verdict constrained to the rubric's schema.

The verdict schema goes to the engine as ``SamplingParams.json_schema`` (structured outputs where
the engine has them). Replies are parsed tolerantly and validated with jsonschema; the invalid
ones are re-asked (batched, with the error fed back) up to ``verdict_retries`` times, then
recorded as failed with their raw text.

Verdict replies must close their JSON within ``max_tokens``: on loading, every string property
of the verdict schema gets a ``maxLength`` of at most `verdict_char_budget` characters
(`capped_verdict_schema`), so structured outputs end the rationale in time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rlaif.backends.base import Backend, Conversation, SamplingParams
from rlaif.io.seeds import stable_seed
from rlaif.judging.items import JudgeItem, Request
from rlaif.judging.methods.base import Problem, ScaleMethod, scale_points
from rlaif.judging.verdicts import parse_verdict

if TYPE_CHECKING:
    from rlaif.judging.rubrics import Rubric

VERDICT_KEYS = ("verdict_schema", "score_field", "max_tokens", "temperature")
VERDICT_JSON_TOKENS = 6  # per verdict field: quotes, key, colon, comma (the braces are counted once)
RETRY_TEMPERATURE = 0.7  # re-asks sample (seeded) so a greedy judge does not repeat its mistake
MAX_ECHO_CHARS = 1500  # how much of a failed reply is echoed back in the re-ask


def verdict_char_budget(schema: dict[str, Any], max_tokens: int) -> int:
    """Characters each string field of a verdict may have so the JSON closes within ``max_tokens``.

    The tokens left after the JSON's own (braces, and `VERDICT_JSON_TOKENS` per field for quotes,
    key, colon, comma, plus a few for a number) are shared by the string fields at one character
    per token: a token of Latin-script text is at least one character, so the bound holds there.
    """
    properties = schema.get("properties") or {}
    strings = [key for key, value in properties.items() if isinstance(value, dict) and value.get("type") == "string"]
    skeleton = 2 + sum(VERDICT_JSON_TOKENS + len(str(key)) // 4 for key in properties) + 4
    return max(16, (max_tokens - skeleton) // max(1, len(strings)))


def _over_budget(prop: Any, budget: int) -> bool:
    return isinstance(prop, dict) and prop.get("type") == "string" and prop.get("maxLength", budget + 1) > budget


def capped_verdict_schema(schema: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """A copy of ``schema`` whose top-level string properties have ``maxLength`` <= the budget."""
    budget = verdict_char_budget(schema, max_tokens)
    properties = dict(schema.get("properties") or {})
    for key, prop in properties.items():
        if _over_budget(prop, budget):
            properties[key] = {**prop, "maxLength": budget}
    return {**schema, "properties": properties} if properties else dict(schema)


def _schema_errors(schema: dict[str, Any], score_field: str, scale: Any) -> list[Problem]:
    """The verdict schema is a JSON schema whose required numeric ``score_field`` spans the scale."""
    import jsonschema

    out: list[Problem] = []
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        out.append((("verdict_schema",) + tuple(e.absolute_path), f"not a valid JSON schema: {e.message}"))
    prop = (schema.get("properties") or {}).get(score_field)
    if not isinstance(prop, dict):
        return out + [(("verdict_schema",), f"verdict_schema has no property '{score_field}' (score_field)")]
    at = ("verdict_schema", "properties", score_field)
    if prop.get("type") not in ("integer", "number"):
        out.append((at, f"'{score_field}' must have type integer or number"))
    if score_field not in (schema.get("required") or []):
        out.append((("verdict_schema",), f"verdict_schema must list '{score_field}' in required"))
    points = scale_points(scale)
    if points:
        low, high = min(points), max(points)
        if prop.get("minimum", low) != low or prop.get("maximum", high) != high:
            out.append((at, f"'{score_field}' minimum/maximum must match the scale [{low}, {high}]"))
    return out


def _reask(conversation: Conversation, raw: str, error: str) -> Conversation:
    return conversation + [
        {"role": "assistant", "content": raw[:MAX_ECHO_CHARS]},
        {"role": "user", "content": f"That reply is not a valid verdict ({error}). Reply again with a "
                                    f"short rationale and only one JSON object that follows the schema."},
    ]


class VerdictMethod(ScaleMethod):
    name = "verdict"
    view = "verdict"

    def semantic_errors(self, data: dict[str, Any], base: Path | None) -> list[Problem]:
        out = []
        if isinstance(data.get("verdict_schema"), dict):
            out += _schema_errors(data["verdict_schema"], data.get("score_field", "score"), data.get("scale"))
        if "assistant_prefix" in data:
            out.append((("assistant_prefix",), "assistant_prefix applies to logprob and pairwise methods"))
        return out

    def foreign_key_errors(self, data: dict[str, Any], method: str) -> list[Problem]:
        return [((key,), f"'{key}' applies to the verdict method only (method is {method})")
                for key in VERDICT_KEYS if key in data]

    def variables(self, rubric: Rubric, messages: list[dict[str, str]], **kwargs: Any) -> dict[str, Any]:
        return {**super().variables(rubric, messages, **kwargs),
                "verdict_format": json.dumps(rubric.verdict_schema, indent=2)}

    def score(self, backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], requests: list[Request],
              rows: list[dict[str, Any]], *, seed: int, verdict_retries: int, progress: bool) -> None:
        """Ask every request; re-ask the invalid replies (error fed back) up to ``verdict_retries`` rounds."""
        assert backend is not None and rubric.verdict_schema is not None
        conversations = [r.conversation for r in requests]
        pending = list(range(len(requests)))
        for attempt in range(1 + max(0, verdict_retries)):
            temperature = rubric.temperature if attempt == 0 else max(rubric.temperature, RETRY_TEMPERATURE)
            params = SamplingParams(n=1, temperature=temperature, max_tokens=rubric.max_tokens, seed=seed,
                                    json_schema=rubric.verdict_schema)
            seeds = [stable_seed(seed, items[requests[index].item].id, requests[index].i, attempt) for index in pending]
            generations = backend.chat([conversations[index] for index in pending], params, seeds=seeds,
                                       progress=progress)
            failed = []
            for index, generation in zip(pending, generations):
                completion = generation.completions[0]
                if not self._record(rubric, requests[index], rows, completion, attempt):
                    failed.append(index)
                    conversations[index] = _reask(requests[index].conversation, completion.text,
                                                  rows[requests[index].item]["details"][requests[index].i]["error"])
            pending = failed
            if not pending:
                break
        for index in pending:
            rows[requests[index].item]["failures"] += 1

    @staticmethod
    def _record(rubric: Rubric, request: Request, rows: list[dict[str, Any]], completion: Any, attempt: int) -> bool:
        """Store one reply's parse in its row; True when it is a valid verdict."""
        assert rubric.verdict_schema is not None
        parsed = parse_verdict(completion.text, rubric.verdict_schema, rubric.score_field, list(rubric.scale),
                               completion.finish_reason)
        rows[request.item]["details"][request.i] = {
            "raw": completion.text, "verdict": parsed.verdict, "rationale": parsed.rationale,
            "attempts": attempt + 1, "error": parsed.error, "finish_reason": completion.finish_reason}
        rows[request.item]["scores"][request.i] = parsed.score
        return parsed.error is None

    def preview_lines(self, row: dict[str, Any]) -> list[str]:
        out = []
        for index, (score, details) in enumerate(zip(row["scores"], row["details"])):
            out.append(f"response {index}: score {score if score is not None else 'FAILED'} after "
                       f"{details['attempts']} attempt(s)" + (f"; error: {details['error']}" if details["error"] else ""))
            out.append(f"  rationale: {details['rationale']}")
            out.append(f"  verdict:   {json.dumps(details['verdict'])}")
            if details["error"]:
                out.append(f"  raw reply: {details['raw']!r}")
        return out

    def template_warnings(self, used: set[str]) -> list[str]:
        out = super().template_warnings(used)
        if "verdict_format" not in used:
            out.append("template never shows 'verdict_format': engines without structured outputs will not know "
                       "the JSON to write")
        return out

    def lint_warnings(self, data: dict[str, Any]) -> list[Problem]:
        """String fields whose maxLength (or none) would not fit max_tokens: the loader caps them."""
        schema, max_tokens = data["verdict_schema"], data.get("max_tokens", 384)
        budget = verdict_char_budget(schema, max_tokens)
        out: list[Problem] = []
        for key, prop in (schema.get("properties") or {}).items():
            if _over_budget(prop, budget):
                have = f"maxLength {prop['maxLength']}" if "maxLength" in prop else "no maxLength"
                out.append((("verdict_schema", "properties", key),
                            f"verdict field '{key}' has {have}: capped to {budget} characters so the verdict "
                            f"closes within max_tokens {max_tokens}"))
        return out
