"""Judgements -> preference pairs, and a train/test split by prompt.

Scores. Each rubric scores every response on its own scale ``[lo, hi]``; a score is normalised
to ``(s - lo) / (hi - lo)`` in [0, 1] and the rubrics are combined as a weighted mean
``S = sum_r w_r * s_r / sum_r w_r`` (UltraFeedback-style aspects). A response with a failed
(None) score on any rubric has no combined score: it is dropped, never ranked (comparing None
or picking ``max``/``min`` over equal scores is how pipelines silently emit bad pairs).

Pairs. ``best-vs-worst`` (default): the highest against the lowest combined score, one pair per
prompt; equal scores are a tie and give no pair. ``all-pairs``: every untied pair. Either keeps a
pair only if its margin ``S_chosen - S_rejected`` is at least ``min_margin`` (None counts as 0
here; the pipeline resolves None to the judge's noise margin, `rlaif.dataset.noise.judge_noise`). When a rubric is
pairwise (the judge compared the two responses in both orders, Lee et al. 2023), a pair is kept
only if that comparison prefers the chosen response with probability >= ``pairwise_min_confidence``
and, unless disabled, both orders agreed (position-consistent). Every dropped pair or response is counted by reason.
People's verdicts (``--labels``, `rlaif.dataset.labels`) then override the judge's on the pairs they decided.

Truncation. A candidate whose generation stopped at ``max_tokens`` (finish_reason "length") is
cut off mid-answer. ``truncated`` decides what it may become: ``reject_only`` (default) never
chosen, but rejected where the judge ranked it lower (a complete answer over a cut-off one is a
useful pair); ``drop`` never paired; ``keep`` ranked like any other. With ``reject_only``,
best-vs-worst takes the best *complete* response as chosen and the worst of all as rejected.
Candidates whose finish reason is unknown (user-made candidates files) count as complete; they
are counted as ``responses_finish_unknown``.

Split. Prompts with pairs are shuffled with the seed and a ``test_fraction`` of them (at least
one when there are two or more) go to test, so no prompt is in both files.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable, Iterator, Mapping

from rlaif.dataset.labels import apply_verdicts
from rlaif.dataset.options import BuildOptions
from rlaif.rewards.base import normalise

TIE_EPS = 1e-9


def truncation_flags(cand: dict) -> list[bool | None]:
    """Per response: True if cut off at max_tokens (finish_reason "length"), False if it finished,
    None if unknown (user candidates carry "unknown"; a row without finish reasons gives None)."""
    reasons = cand.get("finish_reasons") or []
    out: list[bool | None] = []
    for index in range(len(cand["responses"])):
        reason = reasons[index] if index < len(reasons) else "unknown"
        out.append(None if reason == "unknown" else reason == "length")
    return out


def combined_scores(rows: dict[str, dict], weights: dict[str, float]) -> list[float | None]:
    """Weighted mean of normalised rubric scores per response; None if any rubric failed on it."""
    responses = len(next(iter(rows.values()))["scores"])
    total_weight = sum(weights.get(rubric, 1.0) for rubric in rows)
    out: list[float | None] = []
    for index in range(responses):
        parts = [(weights.get(rubric, 1.0),
                  normalise(row["scores"][index] if index < len(row["scores"]) else None, row["scale"]))
                 for rubric, row in rows.items()]
        if total_weight <= 0 or any(score is None for _, score in parts):
            out.append(None)
        else:
            out.append(sum(weight * score for weight, score in parts) / total_weight)  # type: ignore[operator]
    return out


def _comparison_p(row: dict, chosen: int, rejected: int) -> tuple[float | None, bool | None]:
    """P(chosen beats rejected) and position consistency from a pairwise judgement row."""
    for c in row.get("comparisons", []):
        if (c["i"], c["j"]) == (chosen, rejected):
            return c.get("p"), c.get("consistent")
        if (c["i"], c["j"]) == (rejected, chosen):
            p = c.get("p")
            return (None if p is None else 1.0 - p), c.get("consistent")
    return None, None


Scored = list[tuple[int, float]]  # (response index, combined score) of the responses that have one


def _best_vs_worst(scored: Scored, may_choose: Scored, options: BuildOptions, stats: Counter) -> list[tuple[int, int]]:
    """The best response allowed as chosen against the worst, unless tied or within ``min_margin``."""
    # First index wins among equals: deterministic, and a tie is detected by the margin below.
    top = max(scored, key=lambda entry: (entry[1], -entry[0]))
    worst = min(scored, key=lambda entry: (entry[1], entry[0]))
    if top[1] - worst[1] <= TIE_EPS:
        stats["prompts_all_tied"] += 1
        return []
    best = max(may_choose, key=lambda entry: (entry[1], -entry[0]), default=None)
    if best is None or top[1] - best[1] > TIE_EPS:
        stats["prompts_best_truncated"] += 1  # the pair, if any, takes the best complete response as chosen
    if best is None or best[1] - worst[1] <= TIE_EPS:
        stats["prompts_no_complete_chosen"] += 1  # no complete response scored above another one
        return []
    if best[1] - worst[1] < (options.min_margin or 0.0):
        stats["pairs_below_margin"] += 1
        return []
    return [(best[0], worst[0])]


def _all_pairs(scored: Scored, cut: list[bool], mode: str, options: BuildOptions,
               stats: Counter) -> list[tuple[int, int]]:
    """Every untied pair with at least ``min_margin``; with ``reject_only`` a cut-off response is never chosen."""
    pairs = []
    for first in range(len(scored)):
        for second in range(first + 1, len(scored)):
            (index_a, score_a), (index_b, score_b) = scored[first], scored[second]
            chosen, rejected = (index_a, index_b) if score_a > score_b else (index_b, index_a)
            margin = abs(score_a - score_b)
            if margin <= TIE_EPS:
                stats["pairs_tied"] += 1
            elif margin < (options.min_margin or 0.0):
                stats["pairs_below_margin"] += 1
            elif cut[chosen] and mode == "reject_only":
                stats["pairs_chosen_truncated"] += 1
            else:
                pairs.append((chosen, rejected))
    return pairs


def _candidate_pairs(scores: list[float | None], truncated: list[bool | None], options: BuildOptions,
                     stats: Counter) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs of one prompt by the strategy, the margin and the truncation rule."""
    mode = getattr(options, "truncated", "keep")
    cut = [bool(flag) for flag in truncated]
    scored = [(index, score) for index, score in enumerate(scores) if score is not None]
    stats["responses_failed"] += len(scores) - len(scored)
    if mode == "drop":
        stats["responses_truncated_dropped"] += sum(cut[index] for index, _ in scored)
        scored = [(index, score) for index, score in scored if not cut[index]]
    if len(scored) < 2:
        stats["prompts_too_few_scored"] += 1
        return []
    if options.strategy == "best-vs-worst":
        may_choose = [(index, score) for index, score in scored if mode == "keep" or not cut[index]]
        return _best_vs_worst(scored, may_choose, options, stats)
    return _all_pairs(scored, cut, mode, options, stats)


def _pairwise_reason(rows: dict[str, dict], chosen: int, rejected: int, options: BuildOptions) -> str | None:
    """Why a pairwise rubric vetoes the pair (its stats key), or None: the comparison failed, the two
    orders disagreed, or P(chosen better) is below ``pairwise_min_confidence``."""
    for row in rows.values():
        if row["method"] != "pairwise":
            continue
        p, consistent = _comparison_p(row, chosen, rejected)
        if p is None:
            return "pairs_pairwise_failed"
        if options.require_position_consistent and not consistent:
            return "pairs_position_inconsistent"
        if p < options.pairwise_min_confidence:
            return "pairs_low_confidence"
    return None


def _judge_pairs(cand: dict, rows: dict[str, dict], scores: list[float | None], truncated: list[bool | None],
                 options: BuildOptions, stats: Counter) -> list[tuple[int, int]]:
    """The judge's (chosen, rejected) pairs of one prompt that pass every filter."""
    kept = []
    for chosen, rejected in _candidate_pairs(scores, truncated, options, stats):
        if cand["responses"][chosen] == cand["responses"][rejected]:
            stats["pairs_identical_text"] += 1
            continue
        reason = _pairwise_reason(rows, chosen, rejected, options)
        if reason:
            stats[reason] += 1
            continue
        kept.append((chosen, rejected))
    return kept


def iter_pairs(candidates: Iterable[dict], judgement: Mapping[tuple[str, str], dict], rubrics: list[str],
               options: BuildOptions, stats: Counter,
               verdicts: dict[str, dict[tuple[int, int], int | str]] | None = None) -> Iterator[dict]:
    """Pairs, prompt by prompt in candidate order, from ``judgement[(id, rubric)]`` rows of ``rubrics``;
    counts what was dropped (and ``pairs``) into ``stats``. Holds one prompt's rows at a time.
    ``verdicts``: people's verdicts by prompt id (`rlaif.dataset.labels`), applied over the judge's."""
    rubric_label = "+".join(rubrics)
    stats["pairs"] += 0
    for cand in candidates:
        stats["prompts"] += 1
        truncated = truncation_flags(cand)
        stats["responses"] += len(truncated)
        stats["responses_truncated"] += sum(flag is True for flag in truncated)
        stats["responses_finish_unknown"] += sum(flag is None for flag in truncated)
        keys = [(cand["id"], rubric) for rubric in rubrics]
        person = (verdicts or {}).get(cand["id"], {})
        if not all(key in judgement for key in keys):
            stats["prompts_missing_judgement"] += 1
            if not person:
                continue
            scores: list[float | None] = [None] * len(cand["responses"])
            judge, judged = "", []
        else:
            rows = {rubric: judgement[key] for rubric, key in zip(rubrics, keys)}
            scores = combined_scores(rows, options.rubric_weights)
            judge = "+".join(dict.fromkeys(row["judge"] for row in rows.values()))
            judged = _judge_pairs(cand, rows, scores, truncated, options, stats)
        final = apply_verdicts(judged, person, scores, stats) if person else [(c, r, False) for c, r in judged]
        for chosen, rejected, by_person in final:
            score_chosen, score_rejected = scores[chosen], scores[rejected]
            known = score_chosen is not None and score_rejected is not None
            margin = score_chosen - score_rejected if known else 0.0  # type: ignore[operator]
            pair = {
                "prompt": cand["messages"],
                "chosen": [{"role": "assistant", "content": cand["responses"][chosen]}],
                "rejected": [{"role": "assistant", "content": cand["responses"][rejected]}],
                "id": cand["id"], "score_chosen": score_chosen, "score_rejected": score_rejected,
                "margin": max(0.0, margin) if by_person else margin,  # person: the judge's margin their way, >= 0
                "rubric": rubric_label, "judge": judge, "policy": cand["policy"],
            }
            if by_person:
                pair["label_source"] = "person"
            stats["pairs"] += 1
            stats["kept_chosen_truncated"] += truncated[chosen] is True
            stats["kept_rejected_truncated"] += truncated[rejected] is True
            yield pair
        stats["prompts_with_pairs"] += bool(final)


def build_pairs(candidates: list[dict], judgements: list[dict], rubrics: list[str], options: BuildOptions,
                verdicts: dict[str, dict[tuple[int, int], int | str]] | None = None) -> tuple[list[dict], Counter]:
    """Pairs (in candidate order) from judgements of ``rubrics``; and counts of what was dropped.
    ``verdicts``: people's verdicts by prompt id (`rlaif.dataset.labels`), applied over the judge's."""
    stats: Counter = Counter()
    judgement = {(row["id"], row["rubric"]): row for row in judgements if row["rubric"] in rubrics}
    pairs = list(iter_pairs(candidates, judgement, rubrics, options, stats, verdicts))
    return pairs, stats


def held_out_prompts(ids: Iterable[str], test_fraction: float, seed: int) -> set[str]:
    """The prompt ids (of those with pairs) that go to test: a seeded shuffle, ``test_fraction`` of them."""
    ids = sorted(set(ids))
    random.Random(seed).shuffle(ids)
    test_count = round(test_fraction * len(ids))
    if test_fraction > 0 and test_count == 0 and len(ids) >= 2:
        test_count = 1
    if test_count >= len(ids) and test_fraction < 1:
        test_count = len(ids) - 1
    return set(ids[:test_count])


def split_by_prompt(pairs: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split of pairs by prompt id (all pairs of a prompt land on the same side)."""
    test_ids = held_out_prompts((pair["id"] for pair in pairs), test_fraction, seed)
    return [pair for pair in pairs if pair["id"] not in test_ids], [pair for pair in pairs if pair["id"] in test_ids]
