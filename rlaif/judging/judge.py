"""Judge candidate responses against a rubric: four methods with a judge model, one without.

Each method is one class in `rlaif.judging.methods` (the maths and the paper are in its module):
logprob (G-Eval's expected score), verdict (rationale + JSON verdict, re-asked when invalid),
pairwise (both orders, averaged), likelihood (GPTScore, optionally PMI) and rules (declarative
checks, no model; ``judge`` in its rows is ``"rules"``). This module sends a batch of items
(`rlaif.judging.items`) through the rubric's method.

Every method sends all its items in one engine call (plus one per verdict retry round), so the
caller sets the batch size by how many items it passes. Bad judge replies never raise: they are
recorded (score null, error text) and counted in ``failures``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rlaif.backends.base import Backend
from rlaif.judging.items import JudgeItem, Request

if TYPE_CHECKING:
    from rlaif.judging.rubrics import Rubric


def requests_for(rubric: Rubric, item: JudgeItem, item_index: int = 0, seed: int = 0) -> list[Request]:
    """The judge conversations for one item, in the order `judge_items` sends them."""
    return rubric.judge_method.requests(rubric, item, item_index, seed)


def _row(item: JudgeItem, rubric: Rubric, backend: Backend | None) -> dict[str, Any]:
    count = len(item.responses)
    judge = backend.model_id if backend is not None and rubric.needs_judge else "rules"
    return {"id": item.id, "rubric": rubric.name, "method": rubric.method, "judge": judge,
            "scale": rubric.scale_range, "scores": [None] * count, "details": [{} for _ in range(count)],
            "comparisons": [], "failures": 0}


def judge_items(backend: Backend | None, rubric: Rubric, items: Sequence[JudgeItem], *, seed: int = 0,
                verdict_retries: int = 2, progress: bool = True) -> list[dict[str, Any]]:
    """One judgement row per item (same order); see the module docstring for the maths.

    ``backend`` may be None for a rubric that needs no judge (``rubric.needs_judge``: rules)."""
    if backend is None and rubric.needs_judge:
        raise ValueError(f"rubric {rubric.name!r} ({rubric.method}) needs a judge engine")
    rows = [_row(item, rubric, backend) for item in items]
    requests = [r for index, item in enumerate(items) for r in requests_for(rubric, item, index, seed)]
    if requests or not rubric.needs_judge:
        rubric.judge_method.score(backend, rubric, items, requests, rows, seed=seed,
                                  verdict_retries=verdict_retries, progress=progress)
    return rows
