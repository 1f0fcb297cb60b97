"""Options of ``rlaif eval`` and their checks (light: no engine or torch import, so `--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlaif.backends.base import BackendConfig
from rlaif.config import option
from rlaif.errors import UserError

SIDES = ("a", "b")
REWARD_KINDS = ("python", "rm")


@dataclass
class EvalConfig:
    a: str = option("", "side A: a model (alias, local folder, `rlaif train` output folder) or a candidates "
                        ".jsonl (or a folder holding candidates.jsonl, e.g. an `rlaif run` output)")
    b: str = option("", "side B (the baseline), same forms as a")
    prompts: str | None = option(None, "prompt file; needed when a side is a model (with two candidates files "
                                       "it limits the prompts compared)")
    prompt_column: str = option("prompt", "column/field holding the prompt in prompt and candidates files")
    rubrics: list[str] = option(list, "rubrics judging A against B (pairwise: both orders; logprob/verdict: "
                                      "scores compared)")
    rewards: list[str] = option(list, "reward specs scoring each response, python:FILE.py:FUNC or rm:DIR; "
                                      "the higher reward wins")
    out: str = option("outputs/eval", "output folder (created; a rerun resumes it)")
    n_per_prompt: int = option(1, "pairs per prompt: A's k-th response against B's k-th (candidates files: "
                                  "their first n_per_prompt)")
    max_tokens: int = option(256, "model sides: maximum new tokens per response")
    temperature: float = option(0.7, "model sides: sampling temperature (0: greedy)")
    top_p: float = option(1.0, "model sides: nucleus sampling p")
    seed: int = option(0, "per-prompt sampling seeds (the same on both sides) and the judge's seed")
    policy: BackendConfig = option(BackendConfig, "engine settings for the model sides (policy.model is set "
                                                  "from a / b)")
    judge: BackendConfig = option(BackendConfig, "the judge model of the rubrics")
    verdict_retries: int = option(2, "verdict rubrics: re-asks of an invalid verdict before it counts as failed")
    chunk_size: int = option(64, "prompts per generation call (resume granularity)")
    chunk_tokens: int = option(32768, "max prompt tokens x n per generation call")
    judge_chunk_size: int = option(64, "pairs per judge call (resume granularity)")
    overwrite: bool = option(False, "start over: delete this command's outputs in --out first")
    progress: bool = option(True, "show progress bars")


def check_generation_options(cfg: Any, positive: tuple[str, ...]) -> None:
    """The sampling options shared by `rlaif eval` and `rlaif eval --benchmark`: ``positive`` keys >= 1,
    temperature >= 0, top_p in (0, 1]."""
    for key in positive:
        if getattr(cfg, key) < 1:
            raise UserError(f"option '{key}': must be >= 1, got {getattr(cfg, key)}")
    if cfg.temperature < 0:
        raise UserError(f"option 'temperature': must be >= 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise UserError(f"option 'top_p': must be in (0, 1], got {cfg.top_p}")


def check_eval_options(cfg: EvalConfig) -> None:
    """One-line UserErrors for what the types cannot say (nothing is read or written)."""
    for name in SIDES:
        if not getattr(cfg, name):
            raise UserError(f"option '{name}': give side {name.upper()} (--{name} MODEL or --{name} CANDIDATES.jsonl)")
    if not cfg.rubrics and not cfg.rewards:
        raise UserError("option 'rubrics': give at least one --rubric R or --reward SPEC to judge A against B")
    check_generation_options(cfg, ("n_per_prompt", "max_tokens", "chunk_size", "chunk_tokens", "judge_chunk_size"))
    if cfg.verdict_retries < 0:
        raise UserError(f"option 'verdict_retries': must be >= 0, got {cfg.verdict_retries}")
