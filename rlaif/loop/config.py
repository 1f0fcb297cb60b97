"""Options of ``rlaif loop`` (light: no torch import, so ``rlaif loop --help`` stays fast).

`LoopConfig` reuses the option groups of the verbs it drives instead of copying them: the
generate / judge / build options of ``rlaif run`` sit at the top level (``n=8``,
``rubrics=[...]``, ``policy.model=...``, ``judge.*`` defaulting to ``policy.*``), and each
trainer's own config is nested under its name (``dpo.beta=0.1``, ``grpo.k=4``, ``ppo.lr=...``,
``rm.epochs=...``), and so are the `rlaif eval` options (``eval.temperature=0``) and the guard's
`rlaif eval --benchmark` options (``guard.benchmark=basic``, ``guard.max_drop=0.05``; `rlaif.loop.guard`). The keys that the loop sets
itself in every round (data, model, out, prompts, overwrite, seed, reward, judge) are listed in
`KEYS_SET_BY_LOOP` and are refused when given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlaif.config import option
from rlaif.dataset.options import BuildOptions, CommonOptions, GenerateOptions, JudgeOptions
from rlaif.errors import UserError
from rlaif.eval.options import EvalConfig
from rlaif.loop.guard import GuardConfig, check_guard
from rlaif.train.config import DPOConfig, RMConfig, SFTConfig
from rlaif.train.online.config import GRPOConfig, PPOConfig

TRAINERS = ("dpo", "grpo", "rm+ppo", "sft")
# Nested keys the loop fills in each round; a user value would be silently replaced, so it is refused.
KEYS_SET_BY_LOOP = {"dpo": ("data", "model", "out", "overwrite", "seed", "ref_model"),
            "rm": ("data", "model", "out", "overwrite", "seed"),
            "sft": ("data", "model", "out", "overwrite", "seed"),
            "grpo": ("prompts", "model", "out", "overwrite", "seed", "reward", "reward_weights", "judge"),
            "ppo": ("prompts", "model", "out", "overwrite", "seed", "reward", "reward_weights", "judge"),
            "eval": ("a", "b", "prompts", "prompt_column", "out", "overwrite", "seed", "policy", "judge"),
            "guard": ("a", "b", "out", "overwrite", "seed", "policy")}


@dataclass
class LoopConfig(BuildOptions, JudgeOptions, GenerateOptions, CommonOptions):
    """``rlaif loop``: rounds of generate -> judge -> build -> train -> eval."""

    out: str = option("outputs/loop", "output folder: round-K/{prompts.jsonl,data,model,eval}, manifest.json, "
                                      "report.html (a rerun resumes it)")
    prompts: str = option("", "training prompt file (.jsonl/.txt/.json/.parquet); each round takes a fresh seeded "
                              "slice of it")
    eval_prompts: str = option("", "eval prompt file, never trained on (prompts that also appear in --prompts are "
                                   "dropped from training); empty = hold out eval_size prompts of --prompts")
    eval_size: int = option(16, "prompts held out of --prompts for eval when eval_prompts is empty")
    rounds: int = option(2, "rounds to run (raise it and rerun to add rounds to a finished loop)")
    prompts_per_round: int = option(32, "training prompts per round (a fresh seeded slice; a new shuffle starts "
                                        "when the pool runs out)")
    trainer: Literal["dpo", "grpo", "rm+ppo", "sft"] = option(
        "dpo", "dpo: DPO on each round's judged pairs; grpo: online GRPO on the round's prompts with `rewards` "
               "(no pair data); rm+ppo: a reward model on the round's pairs, then PPO with it; sft: expert "
               "iteration, SFT on each round's best candidates (best_min_score)")
    sft_first: bool = option(False, "dpo, rm+ppo: round 1 first fine-tunes the policy (SFT) on its best candidates, "
                                    "then trains from there; the SFT model is the DPO reference=initial")
    reference: Literal["initial", "previous"] = option(
        "initial", "DPO reference model: the starting policy in every round (RLHFlow) or the previous round's")
    rewards: list[str] = option(list, "grpo rewards: judge:RUBRIC, python:FILE.py:FUNC, rm:DIR (mixed by "
                                      "reward_weights)")
    reward_weights: list[float] = option(list, "grpo: one weight per reward spec (empty: 1 each)")
    dpo: DPOConfig = option(DPOConfig, "DPO trainer options (trainer=dpo), as in `rlaif train dpo`")
    grpo: GRPOConfig = option(GRPOConfig, "GRPO trainer options (trainer=grpo), as in `rlaif train grpo`")
    rm: RMConfig = option(RMConfig, "reward-model options (trainer=rm+ppo), as in `rlaif train rm`")
    sft: SFTConfig = option(SFTConfig, "SFT options (trainer=sft, sft_first), as in `rlaif train sft`")
    ppo: PPOConfig = option(PPOConfig, "PPO options (trainer=rm+ppo), as in `rlaif train ppo`")
    measure_kl: bool = option(True, "measure KL(pi_K || pi_0) on pi_K's eval responses each round (loads both "
                                    "models with transformers; see rlaif/eval/kl.py)")
    eval: EvalConfig = option(EvalConfig, "eval options, as in `rlaif eval` (its engines are the loop's policy.* and "
                                          "judge.*); no eval.rubrics/rewards = the loop's rubrics (dpo, rm+ppo) or "
                                          "its rewards (grpo: judge:R as rubric R)")
    guard: GuardConfig = option(GuardConfig, "reward-hacking guard: guard.benchmark=FILE scores pi_0 and every "
                                             "round's policy on it (as `rlaif eval --benchmark`) and stops the loop "
                                             "(exit 5) when the judge's win rate rises while accuracy falls by more "
                                             "than guard.max_drop beyond its interval (rlaif/loop/guard.py)")


def given_keys(data: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a nested override mapping."""
    keys: set[str] = set()
    for key, value in data.items():
        keys |= given_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + str(key)}
    return keys


def check_loop_config(cfg: LoopConfig, given: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """One-line UserErrors for what the types cannot say; ``given``: the dotted keys the user set."""
    for section, keys in KEYS_SET_BY_LOOP.items():
        for key in keys:
            if any(name == f"{section}.{key}" or name.startswith(f"{section}.{key}.") for name in given):
                raise UserError(f"option '{section}.{key}': the loop sets it in every round (from its own prompts, "
                                f"policy.*, judge.*, rewards, seed and out); set those instead")
    if not cfg.prompts:
        raise UserError("option 'prompts': give a training prompt file (--prompts FILE)")
    if cfg.rounds < 1:
        raise UserError(f"option 'rounds': must be >= 1, got {cfg.rounds}")
    if cfg.prompts_per_round < 1:
        raise UserError(f"option 'prompts_per_round': must be >= 1, got {cfg.prompts_per_round}")
    if not cfg.eval_prompts and cfg.eval_size < 1:
        raise UserError("option 'eval_prompts': no eval prompts; give an eval prompt file or eval_size >= 1 "
                        "(eval prompts are held out and never trained on)")
    if cfg.trainer == "grpo" and not cfg.rewards:
        raise UserError("option 'rewards': trainer=grpo needs at least one reward (judge:RUBRIC, "
                        "python:FILE.py:FUNC or rm:DIR)")
    if cfg.trainer != "grpo" and not cfg.rubrics:
        raise UserError(f"option 'rubrics': trainer={cfg.trainer} needs at least one rubric to judge the round's "
                        f"candidates")
    if cfg.sft_first and cfg.trainer not in ("dpo", "rm+ppo"):
        raise UserError(f"option 'sft_first': only with trainer=dpo or rm+ppo (trainer={cfg.trainer} "
                        f"{'is SFT already' if cfg.trainer == 'sft' else 'judges no candidates to take the best of'})")
    if cfg.guard.benchmark:
        check_guard(cfg.guard)
    if cfg.trainer != "grpo" and (cfg.rewards or cfg.reward_weights):
        raise UserError(f"option 'rewards': only used with trainer=grpo (trainer={cfg.trainer} learns from the "
                        f"judged pairs of `rubrics`)")
