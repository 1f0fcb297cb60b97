"""Load parsed reward specs into sources, cheapest first, closing what was loaded on an error."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from rlaif.backends.base import BackendConfig
from rlaif.rewards.auto_judge import load_auto_judge
from rlaif.rewards.base import RewardSource
from rlaif.rewards.criteria import CriteriaReward
from rlaif.rewards.judge import JudgeReward, SharedJudge
from rlaif.rewards.python_function import PythonReward
from rlaif.rewards.rm import RMReward
from rlaif.rewards.specs import AUTO, parse_reward_specs

LOAD_ORDER = ("python", "rm", "judge", "rubrics")  # cheapest first: a bad file fails before any model loads


def load_rewards(specs: list[str], *, judge: BackendConfig, seed: int, verdict_retries: int,
                 weights: list[float] | None = None, out: str | None = None,
                 auto: dict[str, Any] | None = None) -> list[RewardSource]:
    """Parse, then load every source: python files first (cheap, so their errors come before any
    model loads), then reward models, then the judge engine (once, only if a ``judge:`` spec is
    given or a ``rubrics:`` spec is). Sources come back in the order of ``specs``; on an error the loaded ones are closed.
    ``judge:auto`` saves its criteria under ``out`` and takes ``auto`` (refresh, retries, template:
    `rlaif.rewards.auto_judge.load_auto_judge`)."""
    parsed = parse_reward_specs(specs, list(weights or []))
    order = sorted(range(len(parsed)), key=lambda index: LOAD_ORDER.index(parsed[index][0]))
    loaded: dict[int, RewardSource] = {}
    shared: SharedJudge | None = None
    modules: dict[str, ModuleType] = {}
    try:
        for index in order:
            scheme, target, _ = parsed[index]
            name = f"{scheme}:{target}"
            if scheme == "python":
                loaded[index] = PythonReward(name, target, modules)
            elif scheme == "rm":
                loaded[index] = RMReward(name, target)
            elif scheme == "rubrics":  # per-prompt criteria, scored by the judge engine
                shared = shared or SharedJudge(judge)
                loaded[index] = CriteriaReward(name, target, shared, seed=seed)
            elif target == AUTO:
                shared = shared or SharedJudge(judge)
                loaded[index] = load_auto_judge(name, shared, seed=seed, out=out, **(auto or {}))
            else:  # a rules rubric needs no judge engine (verifiable rewards)
                from rlaif.judging.rubrics import load_rubric

                needs = load_rubric(target).needs_judge
                shared = shared or (SharedJudge(judge) if needs else None)
                loaded[index] = JudgeReward(name, target, shared if needs else None, seed=seed,
                                            verdict_retries=verdict_retries)
    except BaseException:
        for source in loaded.values():
            source.close()
        if shared is not None:
            shared.close()
        raise
    return [loaded[index] for index in range(len(parsed))]
