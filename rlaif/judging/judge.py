"""Judge candidate responses against a rubric with a judge model: three methods.

- logprob (G-Eval, Liu et al. 2023): one forward pass per candidate; the judge's next-token
  probabilities p(s) of the scale tokens after ``assistant_prefix`` ("Score: ") give the
  expected score sum_s s * p(s) / sum_s p(s). No sampling; the distribution is stored.
- verdict: the judge writes a rationale and a JSON verdict constrained to the rubric's schema
  (``SamplingParams.json_schema``: structured outputs where the engine has them). Replies are
  parsed tolerantly and validated with jsonschema; the invalid ones are re-asked (batched, with
  the error fed back) up to ``verdict_retries`` times, then recorded as failed with their raw text.
- pairwise (Lee et al. 2023, "RLAIF vs RLHF"): every pair i<j is shown in both orders; with
  p_first = P(i better | i shown as A) and p_second = P(i better | i shown as B), the preference
  is p = (p_first + p_second) / 2, which cancels the judge's position bias to first order;
  ``consistent`` records whether both orders prefer the same response. A response's score is its
  mean p against the others, in [0, 1].

Every method sends all its items in one engine call (plus one per verdict retry round), so the
caller sets the batch size by how many items it passes. Bad judge replies never raise: they are
recorded (score null, error text) and counted in ``failures``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from rlaif.backends.base import Backend, Conversation, SamplingParams
from rlaif.io.seeds import stable_seed
from rlaif.judging.rubrics import Rubric, judge_conversation
from rlaif.judging.verdicts import expected_score, pairwise_probability, parse_verdict

RETRY_TEMPERATURE = 0.7  # re-asks sample (seeded) so a greedy judge does not repeat its mistake
MAX_ECHO_CHARS = 1500  # how much of a failed reply is echoed back in the re-ask


@dataclass
class JudgeItem:
    id: str
    messages: list[dict[str, str]]  # the prompt conversation
    responses: list[str]


@dataclass
class Request:
    """One judge conversation: response ``i`` alone, or the ordered pair (``i`` as A, ``j`` as B)."""

    item: int
    i: int
    j: int | None
    conversation: Conversation


def requests_for(rubric: Rubric, item: JudgeItem, item_index: int = 0, seed: int = 0) -> list[Request]:
    """The judge conversations for one item, in the order `judge_items` sends them."""
    out = []
    if rubric.method == "pairwise":
        for i in range(len(item.responses)):
            for j in range(i + 1, len(item.responses)):
                principles = rubric.select_principles(f"{item.id}:{i}-{j}", seed)  # same for both orders
                for first, second in ((i, j), (j, i)):
                    conv = judge_conversation(rubric, item.messages, response_a=item.responses[first],
                                              response_b=item.responses[second], principles=principles)
                    out.append(Request(item_index, first, second, conv))
    else:
        for i, response in enumerate(item.responses):
            principles = rubric.select_principles(f"{item.id}:{i}", seed)
            conv = judge_conversation(rubric, item.messages, response=response, principles=principles)
            out.append(Request(item_index, i, None, conv))
    return out


def _row(item: JudgeItem, rubric: Rubric, backend: Backend) -> dict[str, Any]:
    n = len(item.responses)
    scale = [0, 1] if rubric.method == "pairwise" else [min(rubric.scale), max(rubric.scale)]
    return {"id": item.id, "rubric": rubric.name, "method": rubric.method, "judge": backend.model_id,
            "scale": scale, "scores": [None] * n, "details": [{} for _ in range(n)],
            "comparisons": [], "failures": 0}


def _finite(lp: dict[str, float]) -> dict[str, float | None]:
    """Choice log-probs for JSON: labels stripped, -inf (not in the engine's top-k) as null."""
    return {k.strip(): (v if math.isfinite(v) else None) for k, v in lp.items()}


def judge_items(backend: Backend, rubric: Rubric, items: Sequence[JudgeItem], *, seed: int = 0,
                verdict_retries: int = 2, progress: bool = True) -> list[dict[str, Any]]:
    """One judgement row per item (same order); see the module docstring for the maths."""
    rows = [_row(item, rubric, backend) for item in items]
    requests = [r for k, item in enumerate(items) for r in requests_for(rubric, item, k, seed)]
    if not requests:
        return rows
    if rubric.method == "logprob":
        _score_logprob(backend, rubric, requests, rows, progress)
    elif rubric.method == "verdict":
        _score_verdict(backend, rubric, items, requests, rows, seed, verdict_retries, progress)
    else:
        _score_pairwise(backend, rubric, requests, rows, progress)
    return rows


def _score_logprob(backend: Backend, rubric: Rubric, requests: list[Request], rows: list[dict], progress: bool) -> None:
    lps = backend.choice_logprobs([r.conversation for r in requests], rubric.choices,
                                  rubric.assistant_prefix, progress=progress)
    for req, lp in zip(requests, lps):
        row = rows[req.item]
        try:
            score, dist, mass = expected_score(lp, list(rubric.scale))
            row["scores"][req.i] = score
            row["details"][req.i] = {"distribution": dist, "mass": mass}
        except ValueError as e:
            row["details"][req.i] = {"distribution": None, "error": str(e)}
            row["failures"] += 1


def _reask(conversation: Conversation, raw: str, error: str) -> Conversation:
    return conversation + [
        {"role": "assistant", "content": raw[:MAX_ECHO_CHARS]},
        {"role": "user", "content": f"That reply is not a valid verdict ({error}). Reply again with a "
                                    f"short rationale and only one JSON object that follows the schema."},
    ]


def _score_verdict(backend: Backend, rubric: Rubric, items: Sequence[JudgeItem], requests: list[Request],
                   rows: list[dict], seed: int, verdict_retries: int, progress: bool) -> None:
    assert rubric.verdict_schema is not None
    scale = list(rubric.scale)
    convs = [r.conversation for r in requests]
    pending = list(range(len(requests)))
    for attempt in range(1 + max(0, verdict_retries)):
        temperature = rubric.temperature if attempt == 0 else max(rubric.temperature, RETRY_TEMPERATURE)
        params = SamplingParams(n=1, temperature=temperature, max_tokens=rubric.max_tokens, seed=seed,
                                json_schema=rubric.verdict_schema)
        seeds = [stable_seed(seed, items[requests[k].item].id, requests[k].i, attempt) for k in pending]
        gens = backend.chat([convs[k] for k in pending], params, seeds=seeds, progress=progress)
        failed = []
        for k, gen in zip(pending, gens):
            req = requests[k]
            comp = gen.completions[0]
            parsed = parse_verdict(comp.text, rubric.verdict_schema, rubric.score_field, scale, comp.finish_reason)
            rows[req.item]["details"][req.i] = {
                "raw": comp.text, "verdict": parsed.verdict, "rationale": parsed.rationale,
                "attempts": attempt + 1, "error": parsed.error, "finish_reason": comp.finish_reason}
            rows[req.item]["scores"][req.i] = parsed.score
            if parsed.error is not None:
                failed.append(k)
                convs[k] = _reask(requests[k].conversation, comp.text, parsed.error)
        pending = failed
        if not pending:
            break
    for k in pending:
        rows[requests[k].item]["failures"] += 1


def _score_pairwise(backend: Backend, rubric: Rubric, requests: list[Request], rows: list[dict],
                    progress: bool) -> None:
    a, b = rubric.choices
    lps = backend.choice_logprobs([r.conversation for r in requests], rubric.choices,
                                  rubric.assistant_prefix, progress=progress)
    wins: dict[tuple[int, int], list[float]] = {}  # (item, response) -> p(response beats other)
    for k in range(0, len(requests), 2):  # requests come in (i, j), (j, i) couples
        req, lp_first, lp_second = requests[k], lps[k], lps[k + 1]
        row, i, j = rows[req.item], req.i, req.j
        assert j is not None
        comp: dict[str, Any] = {"i": i, "j": j, "raw": [_finite(lp_first), _finite(lp_second)]}
        try:
            p_first = pairwise_probability(lp_first, a, b)  # i shown as A
            p_second = 1.0 - pairwise_probability(lp_second, a, b)  # i shown as B
        except ValueError as e:
            comp.update(p_i_first=None, p_i_second=None, p=None, consistent=False, error=str(e))
            row["failures"] += 1
        else:
            p = (p_first + p_second) / 2
            consistent = (p_first - 0.5) * (p_second - 0.5) > 0
            comp.update(p_i_first=p_first, p_i_second=p_second, p=p, consistent=consistent)
            wins.setdefault((req.item, i), []).append(p)
            wins.setdefault((req.item, j), []).append(1.0 - p)
        row["comparisons"].append({key: comp[key] for key in
                                   ("i", "j", "p_i_first", "p_i_second", "p", "consistent", "raw", "error")
                                   if key in comp})
    for (item, i), ps in wins.items():
        rows[item]["scores"][i] = sum(ps) / len(ps)
