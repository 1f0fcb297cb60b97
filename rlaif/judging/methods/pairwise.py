"""pairwise (Lee et al. 2023, "RLAIF vs RLHF"): every pair i<j is shown in both orders.

With p_first = P(i better | i shown as A) and p_second = P(i better | i shown as B), read from the
judge's next-token probabilities of "A" and "B" after ``assistant_prefix``, the preference is
p = (p_first + p_second) / 2, which cancels the judge's position bias to first order;
``consistent`` records whether both orders prefer the same response. A response's score is its
mean p against the others, in [0, 1].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rlaif.backends.base import Backend
from rlaif.judging.items import JudgeItem, Request
from rlaif.judging.methods.base import JudgeMethod, Problem
from rlaif.judging.templates import fence
from rlaif.judging.verdicts import pairwise_probability

if TYPE_CHECKING:
    from rlaif.judging.rubrics import Rubric

COMPARISON_KEYS = ("i", "j", "p_i_first", "p_i_second", "p", "consistent", "raw", "error")


def _finite(logprobs: dict[str, float]) -> dict[str, float | None]:
    """Choice log-probs for JSON: labels stripped, -inf (not in the engine's top-k) as null."""
    return {label.strip(): (value if math.isfinite(value) else None) for label, value in logprobs.items()}


def _comparison(request: Request, first: dict[str, float], second: dict[str, float], choice_a: str,
                choice_b: str) -> dict[str, Any]:
    """One pair (i, j) judged in both orders (``first``: the choice log-probs with i shown as A); p is
    None where a reply prefers neither choice."""
    comparison: dict[str, Any] = {"i": request.i, "j": request.j, "raw": [_finite(first), _finite(second)]}
    try:
        p_first = pairwise_probability(first, choice_a, choice_b)  # i shown as A
        p_second = 1.0 - pairwise_probability(second, choice_a, choice_b)  # i shown as B
    except ValueError as e:
        comparison.update(p_i_first=None, p_i_second=None, p=None, consistent=False, error=str(e))
    else:
        comparison.update(p_i_first=p_first, p_i_second=p_second, p=(p_first + p_second) / 2,
                          consistent=(p_first - 0.5) * (p_second - 0.5) > 0)
    return {key: comparison[key] for key in COMPARISON_KEYS if key in comparison}


class PairwiseMethod(JudgeMethod):
    name = "pairwise"
    pairwise = True
    default_prefix = "Better response:"
    required_variables = ("response_a", "response_b")
    view = "comparisons"

    def semantic_errors(self, data: dict[str, Any], base: Path | None) -> list[Problem]:
        if "scale" in data:
            return [(("scale",), "pairwise rubrics have no scale (scores are probabilities in [0, 1])")]
        return []

    def choices(self, rubric: Rubric) -> list[str]:
        return ["A", "B"]

    def variables(self, rubric: Rubric, messages: list[dict[str, str]], *, response: str | None = None,
                  response_a: str | None = None, response_b: str | None = None,
                  principles: list[str] | None = None) -> dict[str, Any]:
        return {**super().variables(rubric, messages, principles=principles),
                "response_a": fence("RESPONSE A", response_a or ""), "response_b": fence("RESPONSE B", response_b or "")}

    def requests(self, rubric: Rubric, item: JudgeItem, item_index: int, seed: int) -> list[Request]:
        out = []
        for low in range(len(item.responses)):
            for high in range(low + 1, len(item.responses)):
                principles = rubric.select_principles(f"{item.id}:{low}-{high}", seed)  # same for both orders
                for first, second in ((low, high), (high, low)):
                    conversation = self.conversation(rubric, item.messages, response_a=item.responses[first],
                                                     response_b=item.responses[second], principles=principles)
                    out.append(Request(item_index, first, second, conversation))
        return out

    def dry_run(self, rubric: Rubric, messages: list[dict[str, str]], response_a: str, response_b: str) -> None:
        self.conversation(rubric, messages, response_a=response_a, response_b=response_b, principles=rubric.principles)

    def score(self, backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], requests: list[Request],
              rows: list[dict[str, Any]], *, seed: int, verdict_retries: int, progress: bool) -> None:
        assert backend is not None
        choice_a, choice_b = rubric.choices
        logprobs = backend.choice_logprobs([r.conversation for r in requests], rubric.choices,
                                           rubric.assistant_prefix, progress=progress)
        wins: dict[tuple[int, int], list[float]] = {}  # (item, response) -> p(response beats other)
        for index in range(0, len(requests), 2):  # requests come in (i, j), (j, i) couples
            request = requests[index]
            assert request.j is not None
            comparison = _comparison(request, logprobs[index], logprobs[index + 1], choice_a, choice_b)
            row = rows[request.item]
            row["comparisons"].append(comparison)
            if comparison["p"] is None:
                row["failures"] += 1
                continue
            wins.setdefault((request.item, request.i), []).append(comparison["p"])
            wins.setdefault((request.item, request.j), []).append(1.0 - comparison["p"])
        for (item, response), preferences in wins.items():
            rows[item]["scores"][response] = sum(preferences) / len(preferences)

    def preview_lines(self, row: dict[str, Any]) -> list[str]:
        out = []
        for comparison in row["comparisons"]:
            first, second, raw = comparison["i"], comparison["j"], comparison["raw"]
            if comparison["p"] is None:
                out.append(f"responses {first} vs {second}: failed ({comparison.get('error')})")
                continue
            out.append(f"responses {first} vs {second}:")
            out.append(f"  order 1 (A={first}, B={second}): P({first} better) = {comparison['p_i_first']:.3f}"
                       f"  raw {raw[0]}")
            out.append(f"  order 2 (A={second}, B={first}): P({first} better) = {comparison['p_i_second']:.3f}"
                       f"  raw {raw[1]}")
            out.append(f"  averaged: P({first} better) = {comparison['p']:.3f}; position-consistent: "
                       f"{'yes' if comparison['consistent'] else 'no (the orders disagree: position bias)'}")
        out.append("scores (mean preference vs the others): " +
                   ", ".join("failed" if score is None else f"{score:.3f}" for score in row["scores"]))
        return out
