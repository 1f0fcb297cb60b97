"""What every reward source shares: the reward type, the source protocol, the spec error, score scaling."""

from __future__ import annotations

from typing import Protocol

from rlaif.errors import UserError

Reward = float | None


class RewardSource(Protocol):
    """One reward spec, loaded; ``name`` is the spec as given (``judge:helpfulness``)."""

    name: str

    def __call__(self, prompts: list[list[dict]], completions: list[str], rows: list[dict]) -> list[Reward]:
        """One reward per completion. ``prompts[i]``: the chat of completion i (a prompt's k
        completions are consecutive); ``rows[i]``: its prompt's metadata fields plus ``id``."""
        ...

    def close(self) -> None:
        """Release what the source holds (the judge engine, the reward model)."""
        ...


def spec_error(spec: str, why: str) -> UserError:
    """The one-line error of a bad reward spec, naming it."""
    return UserError(f"reward '{spec}': {why}")


def normalise(score: float | None, scale: list[float]) -> float | None:
    """Map a score on ``scale = [lo, hi]`` to [0, 1]: ``(s - lo) / (hi - lo)`` (None stays None)."""
    if score is None:
        return None
    lo, hi = float(scale[0]), float(scale[1])
    return (float(score) - lo) / (hi - lo) if hi != lo else 0.0
