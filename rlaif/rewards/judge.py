"""``judge:RUBRIC``: a shipped or user rubric (name or .yaml path), any method, as a reward.

The rubric is judged by the ``judge.*`` engine (built once, kept for the run). The k completions of
one prompt (consecutive rows with the same ``id``) form one judge item. Scores are normalised to
[0, 1] by the rubric's scale, ``(s - lo) / (hi - lo)`` (`rlaif.rewards.base.normalise`); for a
pairwise rubric a completion's reward is its mean preference against the other k - 1 of its group,
each pair judged in both orders (a group of one has no pair: None). A failed judgement is None.
"""

from __future__ import annotations

from typing import Any

from rlaif.backends.base import Backend, BackendConfig
from rlaif.rewards.base import Reward, normalise


class SharedJudge:
    """The judge engine, built once and shared by every ``judge:`` source; closed once."""

    def __init__(self, config: BackendConfig) -> None:
        from rlaif.backends import load_backend

        self.backend: Backend | None = load_backend(config)

    def get(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("the judge engine is closed")
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def group_items(prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[tuple[Any, list[int]]]:
    """Judge items: consecutive completions of the same prompt (same ``id`` and chat) form one item;
    returns ``[(JudgeItem, completion indices)]``."""
    from rlaif.judging.items import JudgeItem

    out: list[tuple[Any, list[int]]] = []
    for index, (messages, completion, row) in enumerate(zip(prompts, completions, rows)):
        prompt_id = str(row.get("id", index))
        if out and out[-1][0].id == prompt_id and out[-1][0].messages == messages:
            out[-1][0].responses.append(completion)
            out[-1][1].append(index)
        else:
            out.append((JudgeItem(id=prompt_id, messages=messages, responses=[completion]), [index]))
    return out


class JudgeReward:
    """``judge:RUBRIC``: rubric scores from the judge, normalised to [0, 1] (see the module docstring)."""

    def __init__(self, spec: str, target: str, judge: SharedJudge | None, *, seed: int, verdict_retries: int) -> None:
        from rlaif.judging.rubrics import load_rubric

        self.name, self.judge, self.seed, self.verdict_retries = spec, judge, seed, verdict_retries
        self.rubric = load_rubric(target)
        self.failures = 0  # failed judgements so far (their rewards were None)

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        from rlaif.judging.judge import judge_items

        groups = group_items(prompts, completions, rows)
        backend = self.judge.get() if self.judge is not None else None  # rules: no judge engine
        judged = judge_items(backend, self.rubric, [item for item, _ in groups], seed=self.seed,
                             verdict_retries=self.verdict_retries, progress=False)
        rewards: list[Reward] = [None] * len(completions)
        for (_, indices), row in zip(groups, judged):
            for index, score in zip(indices, row["scores"]):
                rewards[index] = normalise(score, row["scale"])
        self.failures += sum(reward is None for reward in rewards)
        return rewards

    def close(self) -> None:
        if self.judge is not None:
            self.judge.close()
