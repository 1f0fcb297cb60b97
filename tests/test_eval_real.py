"""`rlaif eval` with the embedded SmolLM2-135M writing side A (slow): an obvious, verifiable difference
(a Python reward counting distinct words against one-line refusals) must give a win rate whose 95%
interval lies above 1/2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.io.records import read_jsonl

DEMO = Path(__file__).resolve().parents[1] / "prompts" / "demo.jsonl"


@pytest.mark.slow
def test_embedded_model_beats_refusals_on_a_verifiable_reward(tmp_path, embedded_model_dir, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:8]))
    refusals = tmp_path / "refusals.jsonl"
    refusals.write_text("".join(json.dumps({"id": json.loads(line)["id"], "prompt": json.loads(line)["prompt"],
                                            "responses": ["I don't know."]}) + "\n"
                                for line in prompts.read_text().splitlines()))
    reward = tmp_path / "reward.py"
    reward.write_text("def distinct_words(prompts, completions, **kw):\n"
                      "    return [len(set(c.lower().split())) for c in completions]\n")
    out = tmp_path / "eval"
    rc = main(["eval", "--a", embedded_model_dir, "--b", str(refusals), "--prompts", str(prompts),
               "--reward", f"python:{reward}:distinct_words", "--out", str(out), "policy.engine=hf",
               "policy.max_model_len=1024", "max_tokens=32", "temperature=0.7", "progress=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "eval.json").read_text())
    assert s["n"] == 8 and s["win_rate_ci"][0] > 0.5, printed
    assert s["length_unit"] == "words"  # B is a user's file: words on both sides
    assert s["mean_length_a"] > s["mean_length_b"] and 0 <= s["eos_rate_a"] <= 1
    assert len(read_jsonl(out / "candidates_a.jsonl")) == 8 and not (out / "candidates_b.jsonl").exists()
    assert "A beats B" in printed
