"""Best-of-n for SFT: per prompt, the judge's best complete candidate, kept above a score threshold.

Rejection-sampling fine-tuning: sample n responses, keep the one the reward ranks highest, and
fine-tune on the kept ones (RAFT, Dong et al. 2023: "reward ranked fine-tuning"; ReST-EM, Singh et
al. 2023: keep samples whose reward clears a threshold, fine-tune, repeat = expectation-maximisation).
Here the reward is the judge's combined score ``S`` in [0, 1] (`rlaif.dataset.pairs.combined_scores`):

    best(x) = argmax_i S(y_i)  over candidates that finished (not cut off at max_tokens) and were scored
    kept    iff S(best(x)) >= best_min_score

A candidate cut off at max_tokens would teach unfinished answers, so it is never kept (an unknown
finish reason counts as complete, as for pairs); a failed score never ranks; equal scores go to
the first candidate. People's verdicts (``--labels``) decide pairs, not these rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator, Mapping, Sequence

from rlaif.dataset.pairs import combined_scores, truncation_flags


def best_response(cand: dict, rows: dict[str, dict], weights: dict[str, float], min_score: float
                  ) -> tuple[dict | None, str]:
    """One prompt's SFT row (messages = prompt + best response) or None, and why: ``kept``,
    ``missing_judgement`` (a rubric did not judge it), ``no_complete_scored`` or ``below_min_score``.
    ``rows``: the prompt's judgement rows by rubric (every rubric being combined)."""
    if not rows:
        return None, "missing_judgement"
    scores = combined_scores(rows, weights)
    ranked = [(score, -i) for i, (score, cut) in enumerate(zip(scores, truncation_flags(cand)))
              if score is not None and cut is not True]
    if not ranked:
        return None, "no_complete_scored"
    score, negated = max(ranked)  # -i: of equal scores, the first candidate
    if score < min_score:
        return None, "below_min_score"
    row = {"messages": [*cand["messages"], {"role": "assistant", "content": cand["responses"][-negated]}],
           "id": cand["id"], "score": score, "candidate": -negated, "policy": cand["policy"],
           "judge": "+".join(dict.fromkeys(r["judge"] for r in rows.values()))}
    return row, "kept"


def best_rows(candidates: Iterable[dict], judgement: Mapping[tuple[str, str], dict], rubrics: Sequence[str],
              weights: dict[str, float], min_score: float, test_ids: set[str], test: bool,
              stats: Counter | None = None) -> Iterator[dict]:
    """One side's SFT rows (``test``: the prompts in ``test_ids``, the held-out prompts of the pairs'
    split; a prompt without pairs goes to train), streamed in candidate order; ``judgement``:
    ``(id, rubric) -> row``. With ``stats``, counts ``sft_<reason>`` of every prompt, either side (so
    pass it in one side's call only)."""
    for cand in candidates:
        if (cand["id"] in test_ids) != test and stats is None:
            continue
        rows = {rubric: judgement[(cand["id"], rubric)] for rubric in rubrics if (cand["id"], rubric) in judgement}
        best, reason = best_response(cand, rows if len(rows) == len(rubrics) else {}, weights, min_score)
        if stats is not None:
            stats[f"sft_{reason}"] += 1
        if best is not None and (cand["id"] in test_ids) == test:
            yield best
