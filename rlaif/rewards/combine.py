"""Mix the rewards of several sources by weight: reward = sum_s w_s * r_s.

A sample with None from any source has no reward (it is masked out and counted by the trainer,
never a crash).
"""

from __future__ import annotations

from rlaif.rewards.base import Reward


def combine_rewards(per_source: dict[str, list[Reward]], weights: dict[str, float]) -> list[Reward]:
    """``sum_s weights[s] * r_s`` per completion; None where any source gave None (masked out)."""
    if not per_source:
        raise ValueError("no reward sources")
    lengths = {name: len(rewards) for name, rewards in per_source.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"reward sources disagree on the number of completions: {lengths}")
    out: list[Reward] = []
    for values in zip(*per_source.values()):
        if any(value is None for value in values):
            out.append(None)
        else:
            out.append(sum(weights[name] * value for name, value in zip(per_source, values)))  # type: ignore[operator]
    return out
