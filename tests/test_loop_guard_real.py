"""The guard on a real loop: a tiny random model (hf engine) trained by real DPO rounds, scored every round by
the real benchmark code. The benchmark's answers are pi_0's own greedy replies (a byte-exact python: checker), so pi_0 scores
100% and every answer the training changes counts as wrong: a deterministic checker on a real policy.
Only the judge's win rate is scripted (rising), since a tiny random judge's verdicts are noise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.config import load_config
from rlaif.loop.config import LoopConfig
from rlaif.loop.guard import decide
from rlaif.loop.rounds import run_loop

pytestmark = pytest.mark.slow


def scripted_judge(cfg, a, b, out):  # type: ignore[no-untyped-def]
    """The judge says each round beats the start more: 0.5 + 0.2 K."""
    k = int(re.search(r"round-(\d+)", str(out)).group(1))  # type: ignore[union-attr]
    return {"win_rate": 0.5 + 0.2 * k, "win_rate_ci": [0.4, 1.0], "lc_win_rate": None, "mean_length_a": 8.0,
            "mean_length_b": 8.0, "length_unit": "tokens"}


def test_guard_fires_on_a_really_trained_policy_whose_answers_change(tmp_path, tiny_model_dir):
    bench_prompts = [f"Repeat after me: item {i}." for i in range(16)]
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps({"id": f"b{i}", "prompt": p, "answer": ".*", "check": "regex"}) + "\n"
                             for i, p in enumerate(bench_prompts)))
    common = ["policy.engine=hf", f"policy.model={tiny_model_dir}"]
    assert main(["eval", "--benchmark", str(first), "--a", tiny_model_dir, "--out", str(tmp_path / "pi0"),
                 "max_tokens=8", "progress=false", "policy.engine=hf"]) == 0
    replies = [json.loads(line)["response_a"] for line in (tmp_path / "pi0" / "benchmark.jsonl").read_text().splitlines()]
    # pi_0's own greedy replies are the "right" answers, compared byte for byte by a python: checker (the tiny
    # model's replies are runs of one symbol, e.g. newlines, which exact match's normalisation would erase)
    (tmp_path / "same.py").write_text("def same(response, answer, row):\n    return response == answer\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"b{i}", "prompt": p, "answer": r,
                                         "check": f"python:{tmp_path / 'same.py'}:same"}) + "\n"
                             for i, (p, r) in enumerate(zip(bench_prompts, replies))))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about the number {i}."}) + "\n"
                               for i in range(12)))
    cfg = load_config(LoopConfig, None, [
        *common, f"prompts={prompts}", f"out={tmp_path / 'loop'}", "rounds=2", "prompts_per_round=6", "eval_size=2",
        "n=3", "max_tokens=8", "truncated=keep", "progress=false", "measure_kl=false", "dpo.batch_size=2",
        "dpo.lr=5e-2", "dpo.epochs=2", "dpo.max_length=48", "dpo.max_prompt_length=24", "strategy=all-pairs",
        f"guard.benchmark={bench}", "guard.max_tokens=8", "guard.max_drop=0.05"], inherit={"judge": "policy"})
    manifest = run_loop(cfg, evaluate=scripted_judge)
    start, rounds = manifest["benchmark_start"], manifest["rounds"]
    assert start["accuracy"] == 1.0  # greedy decoding reproduces pi_0's replies
    assert rounds[0]["train"]["steps"] and rounds[0]["benchmark"]["accuracy"] < 0.75  # training changed the answers
    assert manifest["stopped"]["round"] == 1 and [r["round"] for r in rounds] == [1]
    assert manifest["stopped"]["reason"].startswith("reward hacking suspected at round 1: judge win rate rose 0.50 -> "
                                                    "0.70 while benchmark accuracy fell 1.00 -> ")
    assert not (tmp_path / "loop" / "round-2").exists()
    # the same real figures with a judge that did not rise: no stop
    assert decide(start, [{**rounds[0], "eval": {"vs-initial": {"win_rate": 0.5}}}], 0.05) is None
