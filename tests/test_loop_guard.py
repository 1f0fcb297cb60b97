"""The loop's reward-hacking guard: its decision on recorded per-round figures, its options, and whole loops
on the fake engine (training stubbed) whose policy learns to pad: the judge (a length reward) climbs while
short exact answers break, and the loop stops with exit 5 and one line; and loops where it must not stop."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import rlaif.backends.fake as fake
import rlaif.loop.rounds as rounds
from rlaif.cli import main
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.eval.benchmark_stats import wilson
from rlaif.loop.config import LoopConfig, check_loop_config
from rlaif.loop.guard import EXIT_GUARD, decide

N_ITEMS = 20


def figures(right: int, n: int = N_ITEMS, wrong_first: bool = False) -> dict:
    correct = [1] * right + [0] * (n - right)
    if wrong_first:
        correct.reverse()
    return {"accuracy": right / n, "accuracy_ci": list(wilson(right, n)), "n": n, "mean_length": 3.0,  # type: ignore
            "length_unit": "tokens", "correct": correct}


def record(k: int, win_rate: float, bench: dict) -> dict:
    return {"round": k, "eval": {"vs-initial": {"win_rate": win_rate, "win_rate_ci": [0, 1]}}, "benchmark": bench}


# ----------------------------------------------------------------------------- the decision, on recorded figures
def test_fires_when_the_judge_rises_while_accuracy_falls_beyond_max_drop_and_its_interval():
    start = figures(18)
    reason = decide(start, [record(1, 0.8, figures(10))], 0.05)
    assert reason is not None and reason.startswith("reward hacking suspected at round 1: judge win rate rose "
                                                    "0.50 -> 0.80 while benchmark accuracy fell 0.90 -> 0.50")
    # round 2 against round 1: the judge rose again, accuracy fell again
    reason = decide(start, [record(1, 0.6, figures(18)), record(2, 0.7, figures(12))], 0.05)
    assert reason and "round 2" in reason and "0.60 -> 0.70" in reason and "0.90 -> 0.60" in reason


@pytest.mark.parametrize("rounds_, why", [
    ([record(1, 0.8, figures(17))], "a drop of 0.05 is not more than max_drop"),
    ([record(1, 0.5, figures(10))], "the judge did not rise (0.5 -> 0.5)"),
    ([record(1, 0.4, figures(10))], "the judge fell too: both signals agree"),
    ([record(1, 0.9, figures(20))], "accuracy rose"),
    ([record(1, 0.9, {**figures(16), "correct": [1] * 14 + [0] * 2 + [1] * 2 + [0] * 2})],
     "dropped 0.10 but the paired interval holds 0 (4 items lost, 2 gained)"),
    ([record(1, None, figures(5))], "no judge figure"),  # type: ignore[arg-type]
])
def test_does_not_fire(rounds_, why):
    assert decide(figures(18), rounds_, 0.05) is None, why


def test_a_drop_of_exactly_max_drop_does_not_fire_even_beyond_its_interval():
    start, now = figures(100, n=100), figures(95, n=100)  # 1.0 - 0.95 = 0.050000000000000044 in floats
    assert decide(start, [record(1, 0.9, now)], 0.05) is None
    assert decide(start, [record(1, 0.9, now)], 0.04) is not None  # the interval alone would fire


def test_slow_drift_is_caught_against_the_start():
    """Two rounds that each lose 3 of 20 items (each drop within its interval of the round before) but
    together lose 6: beyond the interval against the start."""
    start, one, two = figures(20), figures(17), figures(14)  # each keeps the items the one before got right
    assert decide(start, [record(1, 0.55, one)], 0.1) is None  # 1.00 -> 0.85: the interval holds 0
    reason = decide(start, [record(1, 0.55, one), record(2, 0.6, two)], 0.1)
    assert reason and "0.50 -> 0.60" in reason and "1.00 -> 0.70" in reason  # against the start, not round 1


# ----------------------------------------------------------------------------- options
def test_guard_options_are_checked_and_max_drop_is_not_a_setting(tmp_path):
    with pytest.raises(UserError, match="guard.max_drop"):
        check_loop_config(LoopConfig(prompts="p.jsonl", rubrics=["helpfulness"],
                                     guard=load_config(LoopConfig, None, ["guard.benchmark=basic",
                                                                          "guard.max_drop=2"]).guard))
    with pytest.raises(UserError, match="'guard.out'"):
        check_loop_config(LoopConfig(prompts="p.jsonl"), {"guard.out"})
    prompts = [fake_prompt(i) for i in range(3)]
    off = rounds.loop_settings(LoopConfig(prompts="p"), prompts, prompts)
    assert not [key for key in off if key.startswith("guard.")]  # loops made before the guard still resume
    on = rounds.loop_settings(load_config(LoopConfig, None, ["guard.benchmark=basic"]), prompts, prompts)
    looser = rounds.loop_settings(load_config(LoopConfig, None, ["guard.benchmark=basic", "guard.max_drop=1"]),
                                  prompts, prompts)
    greedier = rounds.loop_settings(load_config(LoopConfig, None, ["guard.benchmark=basic", "guard.max_tokens=9"]),
                                    prompts, prompts)
    assert on["fingerprint"] == looser["fingerprint"] != greedier["fingerprint"] != off["fingerprint"]


def fake_prompt(i: int):  # type: ignore[no-untyped-def]
    from rlaif.io.records import Prompt

    return Prompt(f"p{i}", [{"role": "user", "content": f"q{i}"}])


# ----------------------------------------------------------------------------- whole loops, fake engine
ANSWERS = {f"What is {i} plus {i}? Answer with only the number.": str(2 * i) for i in range(N_ITEMS)}


class PaddingPolicy(fake.FakeBackend):
    """pi_K of a policy that learns to pad: round K's model (…/round-K/model) adds K filler words to a
    share of its answers (``pad_benchmark``) and K words to every other reply; pi_0 answers short and right."""

    pad_benchmark = True

    def __init__(self, config=None, **kw):  # type: ignore[no-untyped-def]
        match = re.search(r"round-(\d+)", (config.model if config else "") or "")
        self.k = int(match.group(1)) if match else 0
        super().__init__(config, reply_fn=self.reply)

    def reply(self, conversation, index, params):  # type: ignore[no-untyped-def]
        text = conversation[-1]["content"]
        if text in ANSWERS:
            item = int(text.split()[2])
            pad = self.pad_benchmark and item % 4 < self.k  # a quarter more of the items each round
            return ANSWERS[text] + (" and that is the final answer" if pad else "")
        return "ok " + "indeed " * (3 * self.k)


def setup_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pad_benchmark: bool) -> list[str]:
    monkeypatch.setattr(fake, "FakeBackend", type("Policy", (PaddingPolicy,), {"pad_benchmark": pad_benchmark}))
    monkeypatch.setattr(rounds, "stage_data", lambda cfg, k: {"train_pairs": 8, "test_pairs": 0})
    monkeypatch.setattr(rounds, "stage_train", lambda cfg, k: {"trainer": "dpo", "stubbed": True})
    (tmp_path / "length.py").write_text("def words(completions, **kw):\n"
                                        "    return [float(len(c.split())) for c in completions]\n")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {i}."})
                                                    + "\n" for i in range(12)))
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps({"id": f"b{i}", "prompt": p, "answer": a})
                                                  + "\n" for i, (p, a) in enumerate(ANSWERS.items())))
    return ["loop", "--prompts", str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "loop"),
            "policy.engine=fake", "policy.model=base", "rubrics=[answer_checks]", "rounds=3", "prompts_per_round=4",
            "eval_size=6", "measure_kl=false", "progress=false", f"eval.rewards=[python:{tmp_path / 'length.py'}:words]",
            f"guard.benchmark={tmp_path / 'bench.jsonl'}", "guard.max_tokens=16", "guard.max_drop=0.05"]


def test_guard_stops_a_loop_whose_length_reward_climbs_while_short_answers_break(tmp_path, monkeypatch, capsys):
    argv = setup_loop(tmp_path, monkeypatch, pad_benchmark=True)
    assert main(argv) == EXIT_GUARD == 5
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("reward hacking suspected at round 1: judge win rate rose 0.50 -> 1.00 while benchmark "
                              "accuracy fell 1.00 -> 0.75 (beyond its interval")
    assert sum("reward hacking suspected" in line for line in out) == 1
    loop = tmp_path / "loop"
    manifest = json.loads((loop / "manifest.json").read_text())
    assert manifest["stopped"]["round"] == 1 and [r["round"] for r in manifest["rounds"]] == [1]
    assert manifest["benchmark_start"]["accuracy"] == 1.0 and manifest["rounds"][0]["benchmark"]["accuracy"] == 0.75
    assert (loop / "round-0" / "benchmark" / "benchmark.json").is_file()
    assert (loop / "round-1" / "round.json").is_file() and not (loop / "round-2").exists()  # kept; no more rounds
    table = next(i for i, line in enumerate(out) if line.startswith("round"))
    assert "benchmark acc [95% CI]" in out[table] and "1.00 [0.84, 1.00]" in out[table + 1]  # pi_0's row
    assert "STOPPED: reward hacking suspected at round 1" in (loop / "report.html").read_text()
    # a rerun stops at the same round; max_drop=1 (not a setting of the rounds) lets the loop go on
    assert main(argv) == EXIT_GUARD and "round 1: already done" in capsys.readouterr().err
    assert main([*argv, "guard.max_drop=1"]) == 0
    manifest = json.loads((loop / "manifest.json").read_text())
    accuracy = [r["benchmark"]["accuracy"] for r in manifest["rounds"]]
    judge = [r["eval"]["vs-initial"]["win_rate"] for r in manifest["rounds"]]
    assert accuracy == [0.75, 0.5, 0.25] and judge == [1.0, 1.0, 1.0] and "stopped" not in manifest


def test_guard_does_not_stop_a_loop_whose_answers_stay_right(tmp_path, monkeypatch, capsys):
    argv = setup_loop(tmp_path, monkeypatch, pad_benchmark=False)  # the judge climbs, the benchmark holds
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "loop" / "manifest.json").read_text())
    assert [r["benchmark"]["accuracy"] for r in manifest["rounds"]] == [1.0, 1.0, 1.0] and "stopped" not in manifest
    assert "reward hacking suspected" not in capsys.readouterr().out
