"""logprob (G-Eval, Liu et al. 2023): the expected score under the judge's next-token distribution.

One forward pass per candidate; the judge's next-token probabilities p(s) of the scale tokens
after ``assistant_prefix`` ("Score: ") give the expected score sum_s s * p(s) / sum_s p(s). No
sampling; the distribution is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rlaif.backends.base import Backend
from rlaif.judging.items import JudgeItem, Request
from rlaif.judging.methods.base import Problem, ScaleMethod, probability_bar, scale_points
from rlaif.judging.verdicts import expected_score

if TYPE_CHECKING:
    from rlaif.judging.rubrics import Rubric


class LogprobMethod(ScaleMethod):
    name = "logprob"
    default_prefix = "Score: "
    choices_key = ("scale",)
    view = "distribution"

    def semantic_errors(self, data: dict[str, Any], base: Path | None) -> list[Problem]:
        points = scale_points(data.get("scale"))
        if points and (min(points) < 0 or max(points) > 9):
            return [(("scale",), "logprob scales must be single digits 0-9 (a multi-digit score like 10 shares "
                                 "its first token with 1)")]
        return []

    def choices(self, rubric: Rubric) -> list[str]:
        """The scale points as text; the engines spell a choice with and without a leading space and
        sum both (`rlaif.backends.choices`), whatever the tokenizer does with the space."""
        return [str(point) for point in rubric.scale]

    def score(self, backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], requests: list[Request],
              rows: list[dict[str, Any]], *, seed: int, verdict_retries: int, progress: bool) -> None:
        assert backend is not None
        logprobs = backend.choice_logprobs([r.conversation for r in requests], rubric.choices,
                                           rubric.assistant_prefix, progress=progress)
        for request, choice_logprobs in zip(requests, logprobs):
            row = rows[request.item]
            try:
                score, distribution, mass = expected_score(choice_logprobs, list(rubric.scale))
                row["scores"][request.i] = score
                row["details"][request.i] = {"distribution": distribution, "mass": mass}
            except ValueError as e:
                row["details"][request.i] = {"distribution": None, "error": str(e)}
                row["failures"] += 1

    def preview_lines(self, row: dict[str, Any]) -> list[str]:
        out = []
        for index, (score, details) in enumerate(zip(row["scores"], row["details"])):
            if score is None:
                out.append(f"response {index}: failed: {details.get('error')}")
                continue
            out.append(f"response {index}: expected score {score:.2f} on [{row['scale'][0]}, {row['scale'][1]}]"
                       f"  (probability mass on the scale tokens: {details['mass']:.2f})")
            for point, probability in (details.get("distribution") or {}).items():
                out.append(f"  {point}: {probability:.3f} {probability_bar(probability)}")
        return out

