"""``rm:DIR``: an ``rlaif train rm`` output folder as a reward.

The reward is the model's raw score r(x, y) read at the last real token, exactly as
`rlaif.train.score` computes it (same chat template and truncation), scored in length-sorted batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.rewards.base import Reward

RM_BATCH_SIZE = 16


class RMReward:
    """``rm:DIR``: raw scores of a reward model trained by ``rlaif train rm`` (`rlaif.train.score`)."""

    def __init__(self, spec: str, target: str, batch_size: int = RM_BATCH_SIZE) -> None:
        from rlaif.train.score import RewardModel

        self.name, self.batch_size = spec, batch_size
        self.model: Any = RewardModel(str(Path(target).expanduser()))

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        return list(self.model(prompts, completions, batch_size=self.batch_size))

    def close(self) -> None:
        self.model = None
