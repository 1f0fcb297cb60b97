"""Dynamic sampling (DAPO, Yu et al. 2025, section 3.2) for the group-baseline trainers.

A group of k completions whose rewards are all equal (masked samples left out; fewer than two
unmasked counts as equal) has advantage r_i - mean(r) = 0 for every sample under GRPO's and RLOO's
baselines, so it adds no policy gradient and only dilutes the batch. With ``dynamic_sampling`` such
groups are dropped and more prompts are sampled, ``prompts_per_step - kept`` at a time, until the
step holds ``prompts_per_step`` informative groups or ``max_refill_rounds`` extra rounds are spent;
then the step trains on the groups it has (said once on stderr). The prompts come from the run's
`state.PromptSampler`, so a step consumes a variable number of them.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from rlaif.io.records import Prompt

# sample(prompt indices, round) -> (rollouts, rewards per source, their mix, generation seconds)
SampleFn = Callable[[list[int], int], tuple[list[Any], dict[str, list], list, float]]


@dataclass
class Groups:
    """A step's batch: ``prompts[i]``'s k completions are ``rollouts[i*k:(i+1)*k]`` (prompt_index i)."""

    prompts: list[Prompt] = field(default_factory=list)
    rollouts: list[Any] = field(default_factory=list)
    per_source: dict[str, list] = field(default_factory=dict)
    total: list = field(default_factory=list)
    gen_s: float = 0.0

    def extend(self, prompts: list[Prompt], rollouts: list[Any], per_source: dict[str, list], total: list,
               keep: list[bool], k: int) -> None:
        """Append the groups of one round whose ``keep`` is True, prompt indices shifted after ours."""
        for g, kept in enumerate(keep):
            if not kept:
                continue
            rows = range(g * k, (g + 1) * k)
            index = len(self.prompts)
            self.prompts.append(prompts[g])
            self.rollouts += [dataclasses.replace(rollouts[i], prompt_index=index) for i in rows]
            for name, values in per_source.items():
                self.per_source.setdefault(name, []).extend(values[i] for i in rows)
            self.total += [total[i] for i in rows]


def informative(total: list, k: int) -> list[bool]:
    """Per group of k consecutive rewards (None = masked): whether its unmasked rewards differ."""
    out = []
    for g in range(len(total) // k):
        values = [float(r) for r in total[g * k:(g + 1) * k] if r is not None]
        out.append(len(values) >= 2 and statistics.pvariance(values) > 0.0)
    return out


def sample_groups(prompts: list[Prompt], take: Callable[[int], list[int]], sample: SampleFn, per_step: int, k: int,
                  dynamic: bool, max_rounds: int, warned: set[str] | None = None) -> tuple[Groups, dict[str, float]]:
    """The step's groups and, with ``dynamic``, its counts (dynamic/groups_dropped, refill_rounds,
    prompts_consumed, groups_kept). Without ``dynamic``: one round, every group kept, no counts.
    ``warned``: the run's one-time warnings (None: say nothing, as on ranks other than the main one)."""
    batch = Groups()
    order = take(per_step)
    rollouts, per_source, total, gen_s = sample(order, 0)
    batch.gen_s += gen_s
    round_prompts = [prompts[i] for i in order]
    if not dynamic:
        batch.extend(round_prompts, rollouts, per_source, total, [True] * len(order), k)
        return batch, {}
    first = (round_prompts, rollouts, per_source, total)
    consumed, dropped, rounds = len(order), 0, 0
    while True:
        keep = informative(total, k)
        dropped += keep.count(False)
        batch.extend(round_prompts, rollouts, per_source, total, keep, k)
        short = per_step - len(batch.prompts)
        if short <= 0 or rounds >= max_rounds:
            break
        rounds += 1
        order = take(short)
        consumed += short
        rollouts, per_source, total, gen_s = sample(order, rounds)
        batch.gen_s += gen_s
        round_prompts = [prompts[i] for i in order]
    kept = len(batch.prompts)
    if kept < per_step and warned is not None:
        _warn_short(kept, per_step, rounds, warned)
    if kept == 0:  # nothing informative: train on the first round (zero advantages; only a KL term acts)
        batch = Groups(gen_s=batch.gen_s)
        batch.extend(*first, [True] * (len(first[1]) // k), k)
    return batch, {"dynamic/groups_dropped": float(dropped), "dynamic/refill_rounds": float(rounds),
                   "dynamic/prompts_consumed": float(consumed), "dynamic/groups_kept": float(kept)}


def _warn_short(kept: int, per_step: int, rounds: int, warned: set[str]) -> None:
    """Once per run, on stderr: a step ends with fewer informative groups than prompts_per_step."""
    if "dynamic_short" in warned:
        return
    warned.add("dynamic_short")
    what = f"training on those {kept}" if kept else "training on the first round's groups (zero advantages)"
    print(f"warning: dynamic sampling: {kept} of {per_step} groups have rewards that differ after {rounds} refill "
          f"rounds; {what} (said once; raise max_refill_rounds, or the task is too easy or too hard for the "
          f"policy)", file=sys.stderr, flush=True)
