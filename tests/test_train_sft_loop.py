"""`rlaif loop` with SFT: trainer=sft (expert iteration: generate -> judge -> keep the best -> SFT) and
sft_first (round 1 fine-tunes on its best candidates, then DPO starts from, and refers to, that model);
on tiny random models with the hf engine, as tests/test_loop_run.py."""

from __future__ import annotations

import json

import pytest

from rlaif.cli import main
from tests.test_loop_run import loop_args, prompts_file

def sft_loop_args(tmp_path, model: str, *extra: str) -> list[str]:
    """The fake engine writes and judges (its candidates finish, as best-of-n needs); the tiny model trains."""
    argv = loop_args(prompts_file(tmp_path / "prompts.jsonl", 12), model, "--out", str(tmp_path / "loop"), *extra)
    return [("policy.engine=fake" if a == "policy.engine=hf" else a) for a in argv]


SFT = ["sft.max_length=64", "sft.max_tokens_per_batch=128", "sft.lr=1e-3", "sft.max_steps=2", "sft.save_steps=0",
       "best_min_score=0", "measure_kl=false"]


def test_expert_iteration_fine_tunes_each_round_on_its_best_candidates(tmp_path, tiny_model_dir):
    out = tmp_path / "loop"
    argv = sft_loop_args(tmp_path, tiny_model_dir, "rounds=2", "trainer=sft", *SFT)
    assert main(argv) == 0
    for k in (1, 2):
        record = json.loads((out / f"round-{k}" / "round.json").read_text())
        assert record["train"]["trainer"] == "sft" and record["train"]["steps"] == 2
        summary = json.loads((out / f"round-{k}" / "model" / "summary.json").read_text())
        assert summary["config"]["data"] == str(out / f"round-{k}" / "data")
        assert summary["config"]["model"] == (tiny_model_dir if k == 1 else str(out / "round-1" / "model"))
        rows = [json.loads(x) for x in (out / f"round-{k}" / "data" / "sft" / "train.jsonl").read_text().splitlines()]
        assert summary["data"]["train"]["rows"] == len(rows) > 0
    assert "vs-previous" in json.loads((out / "round-2" / "round.json").read_text())["eval"]


def test_sft_first_trains_round_one_from_the_sft_model_and_refers_to_it(tmp_path, tiny_model_dir):
    out = tmp_path / "loop"
    argv = sft_loop_args(tmp_path, tiny_model_dir, "rounds=2", "sft_first=true", "dpo.max_steps=1", "dpo.save_steps=0",
                         *SFT)
    assert main(argv) == 0
    sft = out / "round-1" / "sft"
    assert json.loads((sft / "summary.json").read_text())["config"]["model"] == tiny_model_dir
    first = json.loads((out / "round-1" / "model" / "summary.json").read_text())
    second = json.loads((out / "round-2" / "model" / "summary.json").read_text())
    assert first["config"]["model"] == str(sft) and first["settings"]["ref_model"] == ""  # its start is the reference
    assert second["config"]["model"] == str(out / "round-1" / "model") and second["reference"] == str(sft)
    assert not (out / "round-2" / "sft").exists(), "only round 1 has an SFT stage"
    record = json.loads((out / "round-1" / "round.json").read_text())
    assert record["train"]["trainer"] == "dpo" and record["train"]["sft_first"]["steps"] == 2


@pytest.mark.parametrize("extra, message", [
    (["trainer=grpo", "rewards=[python:x.py:f]", "sft_first=true"], "option 'sft_first': only with trainer=dpo"),
    (["trainer=sft", "sft_first=true"], "is SFT already"),
    (["trainer=sft", "sft.data=x"], "option 'sft.data': the loop sets it"),
])
def test_bad_sft_loop_options_are_one_line(tmp_path, capsys, extra, message):
    code = main(["loop", "--prompts", prompts_file(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"),
                 "policy.engine=fake", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
