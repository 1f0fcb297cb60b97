"""`rlaif loop` without models: config layering, prompt slices, the report, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.loop.config import LoopConfig, check_loop_config
from rlaif.loop.prompts import round_prompts, split_prompts
from rlaif.loop.report import length_warnings, win_rate_table, write_report


def prompts_file(path: Path, n: int) -> str:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?", "topic": i % 3}) + "\n"
                            for i in range(n)))
    return str(path)


# ----------------------------------------------------------------------------- config
def test_config_layers_nesting_and_judge_inheritance(tmp_path):
    yaml_file = tmp_path / "loop.yaml"
    yaml_file.write_text("rounds: 3\ntrainer: dpo\npolicy:\n  engine: hf\n  model: /m\ndpo:\n  beta: 0.2\n"
                         "eval:\n  temperature: 0.0\n")
    cfg = load_config(LoopConfig, yaml_file, ["dpo.lr=1e-4", "n=6", "judge.batch_size=3"],
                      inherit={"judge": "policy"})
    assert (cfg.rounds, cfg.n, cfg.dpo.beta, cfg.dpo.lr, cfg.eval.temperature) == (3, 6, 0.2, 1e-4, 0.0)
    assert (cfg.judge.engine, cfg.judge.model, cfg.judge.batch_size) == ("hf", "/m", 3)  # inherited + own key
    assert cfg.dpo.loss_type == "sigmoid" and cfg.grpo.k == 8  # the trainers' own defaults


def test_unknown_trainer_and_loop_set_keys_are_refused(tmp_path):
    with pytest.raises(UserError, match="trainer"):
        load_config(LoopConfig, None, ["trainer=ppo"])
    cfg = LoopConfig(prompts="p.jsonl")
    with pytest.raises(UserError, match="'dpo.model'"):
        check_loop_config(cfg, {"dpo.model"})
    with pytest.raises(UserError, match="'dpo.ref_model'"):  # set from `reference`
        check_loop_config(cfg, {"dpo.ref_model"})
    with pytest.raises(UserError, match="'eval.policy'"):
        check_loop_config(cfg, {"eval.policy.engine"})
    with pytest.raises(UserError, match="eval_prompts"):
        check_loop_config(LoopConfig(prompts="p.jsonl", eval_size=0))
    with pytest.raises(UserError, match="rewards"):
        check_loop_config(LoopConfig(prompts="p.jsonl", trainer="grpo"))
    check_loop_config(cfg, {"dpo.beta", "eval.temperature"})
    check_loop_config(load_config(LoopConfig, None, ["prompts=p.jsonl", "dpo.reference=model"]))  # ref_model: frozen


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    prompts = prompts_file(tmp_path / "p.jsonl", 10)
    out = tmp_path / "out"
    cases = [(["trainer=ppo"], "trainer"), (["eval_size=0", "eval_prompts="], "no eval prompts"),
             (["dpo.out=x"], "dpo.out"), (["prompts_per_round=9"], "more than the 8 training prompts"),
             (["rubrics=[no_such_rubric]"], "no_such_rubric")]
    for extra, needle in cases:
        assert main(["loop", "--prompts", prompts, "--out", str(out), "policy.engine=fake", "eval_size=2",
                     "prompts_per_round=4", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists() or not any(out.glob("round-*"))  # nothing written for bad input


# ----------------------------------------------------------------------------- prompts
def test_eval_split_is_never_trained_on_and_slices_are_fresh(tmp_path):
    prompts = prompts_file(tmp_path / "p.jsonl", 30)
    pool, evals = split_prompts(prompts, "", 6, seed=1)
    assert len(evals) == 6 and len(pool) == 24 and not {p.id for p in pool} & {p.id for p in evals}
    slices = [round_prompts(pool, 1, 8, k) for k in (1, 2, 3, 4)]
    first_epoch = [p.id for s in slices[:3] for p in s]
    assert sorted(first_epoch) == sorted(p.id for p in pool)  # every prompt once before any reuse
    assert len({p.id for p in slices[3]}) == 8  # the 2nd epoch starts with a new shuffle, no duplicates
    assert [p.id for p in slices[1]] == [p.id for p in round_prompts(pool, 1, 8, 2)]  # independent of rounds
    assert [p.id for p in round_prompts(pool, 2, 8, 1)] != [p.id for p in slices[0]]  # the seed matters
    # an eval file: training prompts equal to an eval prompt are dropped from the pool
    eval_file = tmp_path / "e.jsonl"
    eval_file.write_text(json.dumps({"id": "other-id", "prompt": "Question 3?"}) + "\n")
    pool, evals = split_prompts(prompts, str(eval_file), 6, seed=1)
    assert [p.id for p in evals] == ["other-id"] and "p3" not in {p.id for p in pool} and len(pool) == 29


def test_a_round_spanning_two_epochs_holds_no_prompt_twice(tmp_path):
    pool, _ = split_prompts(prompts_file(tmp_path / "p.jsonl", 11), "", 1, seed=0)
    for k in range(1, 8):
        ids = [p.id for p in round_prompts(pool, 0, 7, k)]
        assert len(ids) == len(set(ids)) == 7


# ----------------------------------------------------------------------------- report
def _record(k: int, wr: float, lc: float, la: float, lb: float, prev: bool = True) -> dict:
    ev = {"win_rate": wr, "win_rate_ci": [wr - 0.1, wr + 0.1], "lc_win_rate": lc, "mean_length_a": la,
          "mean_length_b": lb, "mean_score_a": 0.5, "length_unit": "tokens"}
    evals = {"vs-initial": ev, **({"vs-previous": ev} if prev else {})}
    return {"round": k, "data": {"train_pairs": 10}, "eval": evals, "kl": 0.1 * k}


def test_length_warning_only_when_length_grows_without_lc_gain():
    quiet = [_record(1, 0.7, 0.65, 50, 48, prev=False), _record(2, 0.6, 0.55, 80, 50)]  # longer, but LC > 0.5
    assert length_warnings(quiet) == []
    hacked = [_record(1, 0.6, 0.45, 70, 50, prev=False)]
    warnings = length_warnings(hacked)
    assert len(warnings) == 1 and "40% longer" in warnings[0] and "0.45" in warnings[0]
    assert length_warnings([_record(1, 0.6, 0.45, 52, 50, prev=False)]) == []  # +4% is not "longer"


def test_table_and_html_report(tmp_path):
    records = [_record(1, 0.62, 0.6, 40, 40, prev=False), _record(2, 0.55, 0.4, 60, 40)]
    table = win_rate_table(records)
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["round", "pairs"]
    assert lines[1].startswith("0 (start)") and "40.0" in lines[1]  # the starting policy's length (side B)
    assert "0.62 [0.52, 0.72]" in lines[2] and lines[2].count(" - ") >= 1  # round 1 has no vs-previous
    assert "0.55 [0.45, 0.65]" in lines[3] and "0.200" in lines[3]
    assert any(x.startswith("WARNING: round 2") for x in lines)
    write_report(tmp_path / "report.html", {"rounds": records, "config": {"trainer": "dpo"}})
    text = (tmp_path / "report.html").read_text()
    assert text.count("<svg") == 2 and "WARNING: round 2" in text and "<td>0.62 [0.52, 0.72]</td>" in text


@pytest.mark.parametrize("name", ["loop_demo.yaml", "loop_verifiable.yaml", "loop_rules.yaml"])
def test_shipped_loop_configs_load_and_pass_the_checks(name):
    root = Path(__file__).parents[1]
    cfg = load_config(LoopConfig, root / "configs" / name, inherit={"judge": "policy"})
    from rlaif.config import read_yaml
    from rlaif.loop.config import given_keys

    check_loop_config(cfg, given_keys(read_yaml(root / "configs" / name)))
    assert cfg.rounds == 2 and cfg.eval_size > 0 and cfg.judge.model == cfg.policy.model


def test_settings_fingerprint_ignores_rounds_and_plumbing_but_not_what_shapes_results(tmp_path):
    from rlaif.loop.rounds import loop_settings

    pool, evals = split_prompts(prompts_file(tmp_path / "p.jsonl", 10), "", 2, seed=0)

    def fp(*overrides: str) -> str:
        return loop_settings(load_config(LoopConfig, None, list(overrides)), pool, evals)["fingerprint"]

    base = fp()
    assert fp("rounds=5", "chunk_size=3", "dpo.save_steps=7", "policy.gpu_memory_utilization=0.1",
              "eval.judge_chunk_size=2", "progress=false") == base
    for changed in ("n=8", "dpo.beta=0.2", "eval.temperature=0", "reference=previous", "judge.model=other"):
        assert fp(changed) != base, changed
    assert loop_settings(LoopConfig(), pool[1:], evals)["fingerprint"] != base  # other prompts


def test_loop_brief_rules_rubric_prefers_finished_brief_answers():
    from rlaif.judging.judge import JudgeItem, judge_items
    from rlaif.judging.lint import lint_file
    from rlaif.judging.rubrics import load_rubric

    path = Path(__file__).parents[1] / "configs" / "loop_brief.yaml"
    assert [f for f in lint_file(path) if f.level == "error"] == []
    user = [{"role": "user", "content": "What is the capital of Australia?"}]
    long_cut = " ".join(["word"] * 70)
    item = JudgeItem("a", user, ["The capital is Canberra.", "Canberra is the capital, and " + " ".join(["x"] * 30),
                                 long_cut, "I'm sorry, but I cannot help with that."],
                     finish_reasons=["stop", "stop", "length", "stop"], num_tokens=[6, 40, 64, 11])
    scores = judge_items(None, load_rubric(str(path)), [item], progress=False)[0]["scores"]
    assert scores[0] == 1.0 and scores[0] > scores[1] > scores[2] and scores[3] < scores[0]
