"""rules (no model): declarative checks, score = weighted share of passed checks.

The checks and their maths are in `rlaif.judging.rules`; ``judge`` in a rules row is ``"rules"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rlaif.backends.base import Backend, Conversation
from rlaif.judging.items import JudgeItem, Request
from rlaif.judging.methods.base import JudgeMethod, Problem
from rlaif.judging.rules import check_errors, score_response

if TYPE_CHECKING:
    from rlaif.judging.rubrics import Rubric

JUDGE_MODEL_KEYS = ("system", "assistant_prefix", "principles")


def _at(values: list[Any] | None, index: int) -> Any:
    return values[index] if values and index < len(values) else None


class RulesMethod(JudgeMethod):
    name = "rules"
    needs_judge = False
    templated = False
    view = "checks"

    def semantic_errors(self, data: dict[str, Any], base: Path | None) -> list[Problem]:
        out: list[Problem] = []
        if "scale" in data:
            out.append((("scale",), "rules rubrics have no scale (scores are in [0, 1])"))
        out += check_errors(data.get("checks"), base)
        return out + [((key,), f"'{key}' does not apply to rules rubrics (no judge model)")
                      for key in JUDGE_MODEL_KEYS if key in data]

    def foreign_key_errors(self, data: dict[str, Any], method: str) -> list[Problem]:
        return [(("checks",), f"'checks' apply to the rules method only (method is {method})")] if "checks" in data else []

    def conversation(self, rubric: Rubric, messages: list[dict[str, str]], **kwargs: Any) -> Conversation:
        raise ValueError("rules rubrics have no judge conversation")

    def requests(self, rubric: Rubric, item: JudgeItem, item_index: int, seed: int) -> list[Request]:
        return []

    def dry_run(self, rubric: Rubric, messages: list[dict[str, str]], response_a: str, response_b: str) -> None:
        """Run the checks on both responses (an exception: a check that cannot run)."""
        for response in (response_a, response_b):
            score_response(rubric.checks, response, "stop", len(response.split()))

    def score(self, backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], requests: list[Request],
              rows: list[dict[str, Any]], *, seed: int, verdict_retries: int, progress: bool) -> None:
        for item, row in zip(items, rows):
            for index, response in enumerate(item.responses):
                score, outcomes = score_response(rubric.checks, response, _at(item.finish_reasons, index),
                                                 _at(item.num_tokens, index))
                row["scores"][index] = score
                row["details"][index] = {
                    "checks": [{"check": outcome.check, "kind": outcome.kind, "weight": outcome.weight,
                                "passed": outcome.passed, "why": outcome.why} for outcome in outcomes],
                    "passed": sum(outcome.passed is True for outcome in outcomes),
                    "skipped": sum(outcome.passed is None for outcome in outcomes)}
                if score is None:
                    row["details"][index]["error"] = "every check was skipped (no finish reason or token count)"
                    row["failures"] += 1

    def judge_inputs(self, backend: Any, rubric: Rubric, requests: list[Request]) -> list[tuple[str, str]]:
        return []

    def preview_lines(self, row: dict[str, Any]) -> list[str]:
        out = []
        for index, (score, details) in enumerate(zip(row["scores"], row["details"])):
            checks = details["checks"]
            total = sum(check["weight"] for check in checks if check["passed"] is not None)
            out.append(f"response {index}: score " + ("FAILED: " + details["error"] if score is None else
                                                      f"{score:.3f} (passed weight / evaluated weight {total:g})"))
            width = max(len(check["check"]) for check in checks)
            for check in checks:
                mark = {True: "pass", False: "FAIL", None: "skip"}[check["passed"]]
                out.append(f"  {mark}  {check['check']:<{width}}  w={check['weight']:g}  {check['why']}")
        return out
