"""Per-prompt rubrics as the GRPO reward on the embedded model (policy: the 135M via hf): the rubric
score of held-out prompts after training against that of the base model.

The judge must be able to score criteria. The embedded 135M cannot (BENCHMARKS.md, "Per-prompt
rubrics"): it copies the answer format's example ("1: 2\n2: 0") whatever the answer, or writes
too few lines, so every reward is equal or masked and nothing can be learnt. The test therefore
runs only with ``RLAIF_CRITERIA_JUDGE`` naming a judge model (a name or folder, hf engine)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest

ONE_WORD = [{"criterion": "The answer is a single word", "weight": 2},
            {"criterion": "The answer is longer than one sentence", "weight": -1}]
TOPICS = ["fruit", "colour", "animal", "country", "city", "flower", "tree", "planet", "metal", "drink"]
K, HELD_OUT = 4, 3


def rows(topics: list[str]) -> list[dict]:
    return [{"id": topic, "prompt": f"Name a {topic}. Answer in one word.",
             "rubric": ONE_WORD + [{"criterion": f"The answer names a {topic}", "weight": 1}]} for topic in topics]


def held_out_rewards(model: str, judge, prompts: list[dict]) -> list[float]:
    """Rubric rewards of K samples per prompt from ``model`` (temperature 1, seeded); masked ones left out."""
    from rlaif.backends import load_backend
    from rlaif.backends.base import BackendConfig, SamplingParams
    from rlaif.judging.criteria import parse_criteria, score_criteria

    policy = load_backend(BackendConfig(engine="hf", model=model))
    chats = [[{"role": "user", "content": row["prompt"]}] for row in prompts]
    generations = policy.chat(chats, SamplingParams(n=K, temperature=1.0, max_tokens=16, seed=7), progress=False)
    policy.close()
    jobs = [(chat, completion.text, parse_criteria(row["rubric"], row["id"], "rubric"))
            for chat, row, generation in zip(chats, prompts, generations) for completion in generation.completions]
    return [s.reward for s in score_criteria(judge, jobs, seed=0) if s.reward is not None]


JUDGE = os.environ.get("RLAIF_CRITERIA_JUDGE", "")


@pytest.mark.slow
@pytest.mark.skipif(not JUDGE, reason="needs RLAIF_CRITERIA_JUDGE: the embedded 135M judge cannot score criteria "
                                      "(BENCHMARKS.md, 'Per-prompt rubrics')")
def test_grpo_on_per_prompt_rubrics_raises_the_held_out_rubric_score(tmp_path, embedded_model_dir):
    from rlaif.backends import load_backend
    from rlaif.backends.base import BackendConfig
    from rlaif.models import resolve_model
    from rlaif.train.online.config import GRPOConfig
    from rlaif.train.online.trainer import train_online

    train, held = rows(TOPICS[:-HELD_OUT]), rows(TOPICS[-HELD_OUT:])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in train))
    judge_cfg = BackendConfig(engine="hf", model=resolve_model(JUDGE))
    cfg = GRPOConfig(prompts=str(prompts), model=embedded_model_dir, out=str(tmp_path / "out"),
                     reward=["rubrics:rubric"], judge=judge_cfg, engine="hf", steps=4, k=K, prompts_per_step=2,
                     max_tokens=16, micro_batch_size=8, lr=3e-5, temperature=1.0, seed=1, progress=False,
                     log_rollouts_every=1, save_steps=0)
    train_online(cfg)
    judge = load_backend(judge_cfg)
    before = held_out_rewards(embedded_model_dir, judge, held)
    after = held_out_rewards(cfg.out, judge, held)
    judge.close()
    lines = (Path(cfg.out) / "rollouts.jsonl").read_text().splitlines()
    trained = [json.loads(line)["rewards"]["rubrics:rubric"] for line in lines]
    se = (statistics.pvariance(before) / len(before) + statistics.pvariance(after) / len(after)) ** 0.5 or 1e-9
    margin = (statistics.fmean(after) - statistics.fmean(before)) / se
    message = (f"held-out rubric reward base {statistics.fmean(before):.3f} (n={len(before)}), trained "
               f"{statistics.fmean(after):.3f} (n={len(after)}): {margin:+.1f} SE; training rewards "
               f"{sorted(set(r for r in trained if r is not None))}")
    print(message)
    assert margin > 2.0, message
