"""Judge candidate responses against a rubric: four methods with a judge model, one without.

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
- likelihood (GPTScore, Fu et al. 2023, arXiv 2302.04166): one prefill per candidate; with the
  instruction chat c rendered from the rubric (`judge_conversation`) and the response's tokens
  y_1..y_T (its end-of-turn marker included, `rlaif.backends.turns`), the length-normalised
  log-likelihood is m = (1/T) sum_t log p(y_t | c, y_<t). The score is exp(m) in (0, 1], the
  per-token geometric-mean probability. With ``contrast`` (a PMI variant) the same mean m0 is
  taken under a neutral chat c0 (`contrast_conversation`) and the score is sigmoid(m - m0):
  0.5 where the instruction changes nothing, above where it makes the response likelier per
  token. Every candidate of an item is scored after the same instruction (principles are
  sampled per item), so the scores compare.
- rules (no model): declarative checks, score = weighted share of passed checks; see
  `rlaif.judging.rules`. ``judge`` in its rows is ``"rules"``.

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
from rlaif.judging.rubrics import Rubric, contrast_conversation, judge_conversation
from rlaif.judging.rules import score_response
from rlaif.judging.verdicts import expected_score, likelihood_score, pairwise_probability, parse_verdict

RETRY_TEMPERATURE = 0.7  # re-asks sample (seeded) so a greedy judge does not repeat its mistake
MAX_ECHO_CHARS = 1500  # how much of a failed reply is echoed back in the re-ask


@dataclass
class JudgeItem:
    id: str
    messages: list[dict[str, str]]  # the prompt conversation
    responses: list[str]
    finish_reasons: list[str] | None = None  # the policy engine's, per response (rules: ends_with_eos)
    num_tokens: list[int] | None = None  # the policy engine's token counts (rules: tokens)


@dataclass
class Request:
    """One judge conversation: response ``i`` alone, or the ordered pair (``i`` as A, ``j`` as B)."""

    item: int
    i: int
    j: int | None
    conversation: Conversation
    reply: str = ""  # likelihood: the response scored as the judge's reply
    neutral: Conversation | None = None  # likelihood with contrast: the neutral chat


def requests_for(rubric: Rubric, item: JudgeItem, item_index: int = 0, seed: int = 0) -> list[Request]:
    """The judge conversations for one item, in the order `judge_items` sends them."""
    out = []
    if rubric.method == "rules":
        return out
    if rubric.method == "likelihood":
        principles = rubric.select_principles(item.id, seed)  # one instruction for all the item's candidates
        conv = judge_conversation(rubric, item.messages, principles=principles)
        neutral = contrast_conversation(rubric, item.messages, principles=principles) if rubric.contrast else None
        return [Request(item_index, i, None, conv, response, neutral) for i, response in enumerate(item.responses)]
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


def _row(item: JudgeItem, rubric: Rubric, backend: Backend | None) -> dict[str, Any]:
    n = len(item.responses)
    judge = backend.model_id if backend is not None and rubric.needs_judge else "rules"
    return {"id": item.id, "rubric": rubric.name, "method": rubric.method, "judge": judge,
            "scale": rubric.scale_range, "scores": [None] * n, "details": [{} for _ in range(n)],
            "comparisons": [], "failures": 0}


def _finite(lp: dict[str, float]) -> dict[str, float | None]:
    """Choice log-probs for JSON: labels stripped, -inf (not in the engine's top-k) as null."""
    return {k.strip(): (v if math.isfinite(v) else None) for k, v in lp.items()}


def judge_items(backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], *, seed: int = 0,
                verdict_retries: int = 2, progress: bool = True) -> list[dict[str, Any]]:
    """One judgement row per item (same order); see the module docstring for the maths.

    ``backend`` may be None for a rubric that needs no judge (``rubric.needs_judge``: rules)."""
    if backend is None and rubric.needs_judge:
        raise ValueError(f"rubric {rubric.name!r} ({rubric.method}) needs a judge engine")
    rows = [_row(item, rubric, backend) for item in items]
    if rubric.method == "rules":
        _score_rules(rubric, items, rows)
        return rows
    requests = [r for k, item in enumerate(items) for r in requests_for(rubric, item, k, seed)]
    if not requests:
        return rows
    assert backend is not None
    if rubric.method == "likelihood":
        _score_likelihood(backend, rubric, requests, rows, progress)
    elif rubric.method == "logprob":
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


def _score_rules(rubric: Rubric, items: Sequence[JudgeItem], rows: list[dict]) -> None:
    for item, row in zip(items, rows):
        for i, response in enumerate(item.responses):
            finish = item.finish_reasons[i] if item.finish_reasons and i < len(item.finish_reasons) else None
            ntok = item.num_tokens[i] if item.num_tokens and i < len(item.num_tokens) else None
            score, outcomes = score_response(rubric.checks, response, finish, ntok)
            row["scores"][i] = score
            row["details"][i] = {"checks": [{"check": o.check, "kind": o.kind, "weight": o.weight,
                                             "passed": o.passed, "why": o.why} for o in outcomes],
                                 "passed": sum(o.passed is True for o in outcomes),
                                 "skipped": sum(o.passed is None for o in outcomes)}
            if score is None:
                row["details"][i]["error"] = "every check was skipped (no finish reason or token count)"
                row["failures"] += 1


def _score_likelihood(backend: Backend, rubric: Rubric, requests: list[Request], rows: list[dict],
                      progress: bool) -> None:
    convs = [r.conversation for r in requests] + [r.neutral for r in requests if r.neutral is not None]
    replies = [r.reply for r in requests] + [r.reply for r in requests if r.neutral is not None]
    lps = backend.response_logprobs(convs, replies, progress=progress)  # one engine call, every prefill
    neutral = lps[len(requests):] if rubric.contrast else [None] * len(requests)
    for req, lp, lp0 in zip(requests, lps, neutral):
        row = rows[req.item]
        try:
            score, details = likelihood_score(lp, lp0)
        except ValueError as e:
            row["details"][req.i] = {"error": str(e)}
            row["failures"] += 1
        else:
            row["scores"][req.i] = score
            row["details"][req.i] = details


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
