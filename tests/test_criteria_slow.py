"""Per-prompt rubrics as the GRPO reward on the embedded model (policy and judge: the 135M via hf,
``yes_no`` scoring): the rubric score of held-out prompts after a few GRPO steps against that of the
base model, by the same judge.

The 135M judge cannot write the ``lines`` format (BENCHMARKS.md, "Per-prompt rubrics") but reads a
Yes/No probability per criterion; its agreement with hand labels is weak, so this test shows that the
policy learns what the judge rewards on prompts it did not train on, not that the judge is right."""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path

import pytest

RUBRIC = [{"criterion": "The answer is polite", "weight": 2},
          {"criterion": "The answer is rude", "weight": -1}]
NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines"]
HELD_OUT, SAMPLES = 3, 12


def rows(names: list[str]) -> list[dict]:
    return [{"id": name, "prompt": f"Say hello to {name}.", "rubric": RUBRIC} for name in names]


def held_out_rewards(model: str, judge, prompts: list[dict]) -> list[float]:
    """Rubric rewards of SAMPLES samples per prompt from ``model`` (temperature 1, seeded); masked ones left out."""
    from rlaif.backends import load_backend
    from rlaif.backends.base import BackendConfig, SamplingParams
    from rlaif.judging.criteria import parse_criteria, score_criteria

    policy = load_backend(BackendConfig(engine="hf", model=model))
    chats = [[{"role": "user", "content": row["prompt"]}] for row in prompts]
    generations = policy.chat(chats, SamplingParams(n=SAMPLES, temperature=1.0, max_tokens=16, seed=7),
                              progress=False)
    policy.close()
    jobs = [(chat, completion.text, parse_criteria(row["rubric"], row["id"], "rubric"))
            for chat, row, generation in zip(chats, prompts, generations) for completion in generation.completions]
    return [s.reward for s in score_criteria(judge, jobs, seed=0) if s.reward is not None]


@pytest.mark.slow
def test_grpo_on_per_prompt_rubrics_raises_the_held_out_rubric_score(tmp_path, embedded_model_dir):
    from rlaif.backends import load_backend
    from rlaif.backends.base import BackendConfig
    from rlaif.train.online.config import GRPOConfig
    from rlaif.train.online.trainer import train_online

    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    train, held = rows(NAMES[:-HELD_OUT]), rows(NAMES[-HELD_OUT:])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in train))
    judge_cfg = BackendConfig(engine="hf", model=embedded_model_dir)
    cfg = GRPOConfig(prompts=str(prompts), model=embedded_model_dir, out=str(tmp_path / "out"),
                     reward=["rubrics:rubric"], judge=judge_cfg, engine="hf", steps=6, k=4, prompts_per_step=2,
                     max_tokens=16, micro_batch_size=8, lr=5e-5, temperature=1.0, seed=1, progress=False,
                     log_rollouts_every=1, save_steps=0)
    train_online(cfg)
    judge = load_backend(judge_cfg)
    before = held_out_rewards(embedded_model_dir, judge, held)
    after = held_out_rewards(cfg.out, judge, held)
    judge.close()
    by_step: dict[int, list[float]] = {}
    for line in (Path(cfg.out) / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["rewards"]["rubrics:rubric"] is not None:
            by_step.setdefault(row["step"], []).append(row["rewards"]["rubrics:rubric"])
    trained = [statistics.fmean(rewards) for _, rewards in sorted(by_step.items())]
    se = (statistics.pvariance(before) / len(before) + statistics.pvariance(after) / len(after)) ** 0.5 or 1e-9
    margin = (statistics.fmean(after) - statistics.fmean(before)) / se
    message = (f"held-out rubric reward base {statistics.fmean(before):.3f} (n={len(before)}), trained "
               f"{statistics.fmean(after):.3f} (n={len(after)}): {margin:+.1f} SE; training reward by step "
               f"{[round(r, 3) for r in trained]}; {time.perf_counter() - start:.0f} s wall, "
               f"{resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu:.0f} s CPU (user)")
    print(message)
    assert margin > 2.0, message
