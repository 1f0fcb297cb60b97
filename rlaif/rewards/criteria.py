"""``rubrics:FIELD[:SCORING]``: each prompt's own weighted criteria (its ``FIELD`` in the prompt file) as reward.

Every completion is judged against its prompt's criteria in one ``judge.*`` engine call per batch
(`rlaif.judging.criteria`: scores s_i in [0, 2] per criterion, by default ``2 P(Yes) / (P(Yes) +
P(No))`` from one Yes/No question each, or ``:lines``, the judge writing ``N: s``; reward ``(sum_i
w_i s_i/2 - R_min) / (R_max - R_min)`` in [0, 1], Gunjal et al. 2025). A completion some criterion of
which is not scored is None (masked, counted in ``failures``). `check_prompt_criteria` checks every prompt's criteria
before any model loads.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlaif.judging.criteria import check_criteria, parse_criteria, score_criteria, split_target
from rlaif.rewards.base import Reward
from rlaif.rewards.judge import SharedJudge

SCHEME = "rubrics"


def check_prompt_criteria(specs: Sequence[tuple[str, str, float]], prompts: Sequence[Any]) -> None:
    """A one-line UserError ``file:line: field 'FIELD': why`` for the first prompt whose criteria are
    missing or bad, for every ``rubrics:FIELD`` spec (``specs`` as `parse_reward_specs` returns them)."""
    fields = [split_target(target)[0] for scheme, target, _ in specs if scheme == SCHEME]
    if fields:
        check_criteria(fields, ((p.id, p.metadata, p.source) for p in prompts))


class CriteriaReward:
    """``rubrics:FIELD``: per-prompt criteria scored by the judge (see the module docstring)."""

    def __init__(self, spec: str, target: str, judge: SharedJudge, *, seed: int) -> None:
        self.name, self.judge, self.seed = spec, judge, seed
        self.field, self.scoring = split_target(target)
        self.failures = 0  # unparsable judge answers so far (their rewards were None)
        self.calls = 0

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        jobs = [(chat, completion, parse_criteria(row.get(self.field), f"prompt '{row.get('id')}'", self.field))
                for chat, completion, row in zip(prompts, completions, rows)]
        keys = [f"{self.calls}:{row.get('id')}:{index}" for index, row in enumerate(rows)]
        self.calls += 1
        rewards = [scored.reward for scored in score_criteria(self.judge.get(), jobs, seed=self.seed, keys=keys,
                                                                    scoring=self.scoring)]
        self.failures += sum(reward is None for reward in rewards)
        return rewards

    def close(self) -> None:
        self.judge.close()
