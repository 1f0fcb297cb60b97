"""Pure parsers of judge output: no model, no I/O; tested on recorded replies.

- `expected_score`: G-Eval's probability-weighted score (Liu et al. 2023, "G-Eval: NLG
  Evaluation using GPT-4 with Better Human Alignment"): with p(s) the judge's next-token
  probability of scale token s, score = sum_s s * p(s) / sum_s p(s).
- `pairwise_probability`: P(first-shown response better) = p(A) / (p(A) + p(B)).
- `parse_verdict`: find the JSON verdict in a generated reply (bare, fenced, or after prose),
  validate it with jsonschema and read the score.
- `likelihood_score`: GPTScore's length-normalised log-likelihood (Fu et al. 2023, arXiv
  2302.04166) on a bounded scale, optionally contrasted with a neutral context (PMI variant).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def softmax_over(logprobs: Mapping[str, float], keys: Sequence[str]) -> tuple[dict[str, float], float]:
    """Renormalise ``exp(logprob)`` over ``keys``; return (distribution, raw mass on keys).

    The mass (sum of the raw probabilities) says how much the judge put on the allowed tokens at
    all; a low mass means the prompt/prefix does not elicit a score. Raises ValueError when every
    key has probability 0 (all ``-inf``: none in the engine's top-k).
    """
    lps = [float(logprobs.get(k, -math.inf)) for k in keys]
    top = max(lps)
    if top == -math.inf or math.isnan(top):
        raise ValueError("no probability on any of " + ", ".join(repr(k) for k in keys))
    weights = [math.exp(x - top) for x in lps]
    z = sum(weights)
    return {k: w / z for k, w in zip(keys, weights)}, math.exp(top) * z


def expected_score(logprobs: Mapping[str, float], scale: Sequence[int]) -> tuple[float, dict[str, float], float]:
    """G-Eval score: (sum_s s * p(s) / sum_s p(s), distribution {"s": p}, raw mass)."""
    keys = [str(s) for s in scale]
    dist, mass = softmax_over(logprobs, keys)
    return sum(int(k) * p for k, p in dist.items()), dist, mass


def pairwise_probability(logprobs: Mapping[str, float], choice_first: str, choice_second: str) -> float:
    """P(the response shown first is better) = p(first) / (p(first) + p(second))."""
    dist, _ = softmax_over(logprobs, [choice_first, choice_second])
    return dist[choice_first]


def likelihood_score(logprobs: Sequence[float], neutral: Sequence[float] | None = None) -> tuple[float, dict[str, Any]]:
    """(score in [0, 1], details) from a response's per-token log-probs.

    m = mean_t logprobs[t] (the length-normalised log-likelihood); score = exp(m), the per-token
    geometric-mean probability. With ``neutral`` (the same tokens' log-probs under a neutral
    context; mean m0): score = sigmoid(m - m0) = 1 / (1 + exp(m0 - m)), a logistic of the mean
    per-token pointwise mutual information. Details keep the raw means (and token count).
    ValueError for no tokens or a non-finite log-prob.
    """
    def mean(xs: Sequence[float], what: str) -> float:
        if not xs:
            raise ValueError(f"no {what}tokens to score")
        if not all(math.isfinite(x) for x in xs):
            raise ValueError(f"a non-finite {what}log-probability from the engine")
        return sum(xs) / len(xs)

    m = mean(logprobs, "")
    details: dict[str, Any] = {"mean_logprob": m, "tokens": len(logprobs)}
    if neutral is None:
        return math.exp(m), details
    m0 = mean(neutral, "neutral ")
    details.update(mean_logprob_neutral=m0, pmi=m - m0)
    return 1.0 / (1.0 + math.exp(min(700.0, m0 - m))), details


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object in ``text``: inside ``` fences first, then anywhere, in order."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for chunk in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        i = chunk.find("{")
        while i != -1:
            try:
                obj, end = decoder.raw_decode(chunk, i)
            except json.JSONDecodeError:
                i = chunk.find("{", i + 1)
                continue
            if isinstance(obj, dict) and obj not in found:
                found.append(obj)
            i = chunk.find("{", end)
    return found


@dataclass
class VerdictParse:
    verdict: dict[str, Any] | None
    score: float | None
    rationale: str
    error: str | None


def parse_verdict(text: str, schema: Mapping[str, Any], score_field: str, scale: Sequence[int],
                  finish_reason: str = "stop") -> VerdictParse:
    """Tolerantly parse a verdict reply: the first JSON object that validates and is in scale.

    Errors (one line, for the judgement row and the re-ask message): no JSON object (or
    ``truncated`` when the engine stopped at max_tokens), schema violation, score out of scale.
    The rationale is the verdict's ``rationale`` field if present, else the prose before the JSON.
    """
    import jsonschema

    objs = json_objects(text)
    if not objs:
        why = "truncated at max_tokens before a complete JSON object" if finish_reason == "length" \
            else "no JSON object in the reply"
        return VerdictParse(None, None, text.strip(), why)
    validator = jsonschema.Draft202012Validator(dict(schema))
    lo, hi = min(scale), max(scale)
    error = ""
    for obj in objs:
        errs = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
        if errs:
            field = ".".join(map(str, errs[0].path))
            at = f"field {field!r}: " if field else ""
            error = f"verdict does not match the schema: {at}{errs[0].message}"
            continue
        score = obj.get(score_field)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            error = f"field '{score_field}' is not a number: {score!r}"
            continue
        if not lo <= score <= hi:
            error = f"field '{score_field}' = {score} is outside the scale [{lo}, {hi}]"
            continue
        rationale = obj.get("rationale")
        if not isinstance(rationale, str):
            brace = text.find("{")
            rationale = text[:brace].strip() if brace > 0 else ""
        return VerdictParse(obj, float(score), rationale, None)
    return VerdictParse(None, None, text.strip(), error)
