"""INTERIM scorer of completions against per-prompt criteria, for ``judge:auto`` until the lead merges
``rlaif.judging.criteria`` (branch ``criteria``), whose scorer replaces this one: swap
`InterimCriteriaScorer` in `rlaif.rewards.auto_judge.load_auto_judge` for it.

Each (criterion, completion) is one G-Eval call: the judge's next-token probabilities over "0", "1",
"2" after ``Score: `` give the expected score ``s_c = sum_s s p(s) / sum_s p(s)`` in [0, 2]. A
completion's reward is the weighted sum rescaled to [0, 1] between its worst and best value:

    r = (sum_c w_c s_c / 2 - sum_{w_c<0} w_c) / (sum_{w_c>0} w_c - sum_{w_c<0} w_c)

(a pitfall, w < 0, costs most when fully present, s = 2).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from rlaif.backends.base import Backend
from rlaif.judging.templates import DATA_NOTE, fence, last_user_message
from rlaif.judging.verdicts import expected_score

SCALE = (0, 1, 2)
PREFIX = "Score: "


def criterion_conversation(criterion: str, messages: list[dict[str, str]], completion: str) -> list[dict[str, str]]:
    text = (f"{fence('PROMPT', last_user_message(messages))}\n\n{fence('RESPONSE', completion)}\n\n"
            f"Criterion: {criterion}\n\nScore the response on this criterion only: 0 = not met, 1 = partly met, "
            f"2 = fully met. Answer with the digit.")
    return [{"role": "system", "content": DATA_NOTE}, {"role": "user", "content": text}]


def weighted_reward(criteria: Sequence[dict[str, Any]], scores: Sequence[float | None]) -> float | None:
    """The [0, 1] reward of one completion from its per-criterion scores (module docstring); None if any is None."""
    if any(s is None for s in scores):
        return None
    weights = [float(c["weight"]) for c in criteria]
    low, high = sum(w for w in weights if w < 0), sum(w for w in weights if w > 0)
    total = sum(w * float(s) / 2 for w, s in zip(weights, scores))  # type: ignore[arg-type]
    return (total - low) / (high - low)


class InterimCriteriaScorer:
    """``score(criteria, messages, completions) -> [reward in [0, 1] or None]`` on a judge engine;
    ``per_criterion`` gives the raw 0-2 scores ``[c][j]`` too."""

    def __init__(self, backend: Callable[[], Backend]) -> None:
        self.backend = backend
        self._last: tuple[str, list[list[float | None]]] | None = None  # the spread check's matrix, reused once

    def per_criterion(self, criteria: Sequence[dict[str, Any]], messages: list[dict[str, str]],
                      completions: Sequence[str]) -> list[list[float | None]]:
        key = json.dumps([list(criteria), messages, list(completions)], sort_keys=True)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = (key, self._score(criteria, messages, completions))
        return self._last[1]

    def _score(self, criteria: Sequence[dict[str, Any]], messages: list[dict[str, str]],
               completions: Sequence[str]) -> list[list[float | None]]:
        conversations = [criterion_conversation(c["criterion"], messages, text) for c in criteria for text in completions]
        logprobs = self.backend().choice_logprobs(conversations, [str(s) for s in SCALE], PREFIX, progress=False)
        flat = []
        for lp in logprobs:
            score, _, mass = expected_score(lp, SCALE)
            flat.append(score if mass > 0 else None)
        n = len(completions)
        return [flat[k * n:(k + 1) * n] for k in range(len(criteria))]

    def __call__(self, criteria: Sequence[dict[str, Any]], messages: list[dict[str, str]],
                 completions: Sequence[str]) -> list[float | None]:
        matrix = self.per_criterion(criteria, messages, completions)
        return [weighted_reward(criteria, [row[j] for row in matrix]) for j in range(len(completions))]
