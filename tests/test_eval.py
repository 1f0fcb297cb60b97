"""`rlaif eval` / `run_eval`: candidates files, model sides on the fake and hf engines, votes, resume, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlaif.backends.base import BackendConfig
from rlaif.backends.fake import FakeBackend
from rlaif.cli import main
from rlaif.config import load_config
from rlaif.errors import UserError
from rlaif.io.records import CANDIDATE_SCHEMA, read_jsonl
from rlaif.eval.evaluate import run_eval
from rlaif.eval.options import EvalConfig
from rlaif.eval.summary import combine
from tests.conftest import build_tiny_model

DEMO = Path(__file__).resolve().parents[1] / "prompts" / "demo.jsonl"
KEYS = {"n", "wins", "losses", "ties", "win_rate", "win_rate_ci", "lc_win_rate", "position_consistency",
        "mean_length_a", "mean_length_b", "length_unit", "eos_rate_a", "eos_rate_b", "mean_score_a", "mean_score_b",
        "judge", "rubrics", "rewards"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompts_file(tmp_path: Path, n: int = 8) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:n]))
    return f


@pytest.fixture()
def length_reward(tmp_path: Path) -> str:
    f = tmp_path / "reward.py"
    f.write_text("def words(prompts, completions, **kw):\n    return [len(c.split()) for c in completions]\n\n"
                 "def fewer_words(prompts, completions, **kw):\n    return [-len(c.split()) for c in completions]\n")
    return f"python:{f}:words"


def _between(text: str, name: str) -> str:
    start = text.index(f"<<<{name}>>>\n") + len(f"<<<{name}>>>\n")
    return text[start:text.index(f"\n<<<END {name}>>>")]


def longer_judge(conversation, choices, prefix):  # noqa: ANN001, ANN201
    """A position-consistent fake judge: prefers the response with more words; scores 1 + words // 4."""
    text = conversation[-1]["content"]
    if list(choices) == ["A", "B"]:
        a, b = len(_between(text, "RESPONSE A").split()), len(_between(text, "RESPONSE B").split())
        p = 0.9 if a > b else 0.1 if a < b else 0.5
        return {"A": math.log(p), "B": math.log(1 - p)}
    score = min(5, 1 + len(_between(text, "RESPONSE").split()) // 4)
    return {c: 0.0 if int(c) == score else -40.0 for c in choices}


def first_slot_judge(conversation, choices, prefix):  # noqa: ANN001, ANN201
    """Position bias only: always says A."""
    return {c: math.log(0.8) if c == "A" else math.log(0.2) for c in choices}


class Engines:
    """A factory of scripted fake engines: model "long-*" writes 8-12 words, "short-*" 2-3, seeded by the
    per-prompt seed; records seeds, and how many engines are alive at once."""

    def __init__(self, judge=longer_judge, fail_judge_after: int | None = None,  # noqa: ANN001
                 fail_b_after: int | None = None) -> None:
        self.judge, self.fail_judge_after, self.fail_b_after = judge, fail_judge_after, fail_b_after
        self.alive, self.max_alive, self.made = 0, 0, []
        self.seeds: dict[str, dict[str, int]] = {}

    def __call__(self, config: BackendConfig) -> FakeBackend:
        factory = self

        def reply(conv, k, params):  # noqa: ANN001, ANN202
            factory.seeds.setdefault(config.model, {})[conv[-1]["content"]] = params.seed
            n = (8 + params.seed % 5) if config.model.startswith("long") else 2 + params.seed % 2
            return " ".join(f"w{(params.seed + i + k) % 7}" for i in range(n))

        class Tracked(FakeBackend):
            calls_left = self.fail_judge_after
            chats_left = self.fail_b_after if config.model == "short-model" else None

            def chat(self, conversations, params, seeds=None, progress=True):  # noqa
                if Tracked.chats_left is not None:
                    if Tracked.chats_left == 0:
                        raise RuntimeError("policy killed")
                    Tracked.chats_left -= 1
                return super().chat(conversations, params, seeds, progress)

            def choice_logprobs(self, conversations, choices, assistant_prefix="", progress=True):  # noqa
                if Tracked.calls_left is not None:
                    if Tracked.calls_left == 0:
                        raise RuntimeError("judge killed")
                    Tracked.calls_left -= 1
                return super().choice_logprobs(conversations, choices, assistant_prefix, progress)

            def close(self) -> None:
                factory.alive -= 1

        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        self.made.append(config.model)
        return Tracked(config, reply_fn=reply, logprob_fn=self.judge)


def config(tmp_path: Path, **kw) -> EvalConfig:  # noqa: ANN003
    base = {"a": "long-model", "b": "short-model", "prompts": str(prompts_file(tmp_path)), "out": str(tmp_path / "out"),
            "rubrics": ["overall_preference"], "progress": False, "policy": {"engine": "fake"},
            "judge": {"engine": "fake", "model": "judge"}, "chunk_size": 3, "judge_chunk_size": 3}
    return load_config(EvalConfig, None, None, flags=base | kw)


def test_combine_is_the_majority_of_votes():
    assert [combine([1.0, 0.0]), combine([0.5, 0.0]), combine([1.0, 1.0, 0.0]), combine([])] == [0.5, 0.0, 1.0, None]


def test_two_candidates_files_with_a_python_reward(tmp_path, length_reward):
    a = write_jsonl(tmp_path / "a.jsonl", [
        {"id": "p1", "prompt": "Say hi", "responses": ["hello there friend", "x"]},
        {"id": "p2", "prompt": "Count", "responses": ["one two"]},
        {"id": "p3", "prompt": "Name a colour", "responses": ["red"]},
        {"id": "only-a", "prompt": "?", "responses": ["y"]}])
    b = write_jsonl(tmp_path / "b.jsonl", [
        {"id": "p3", "prompt": "Name a colour", "responses": ["a red one"]},
        {"id": "p1", "prompt": "Say hi", "responses": ["hi"]},
        {"id": "p2", "prompt": "Count", "responses": ["one two"]}])
    out = tmp_path / "out"
    s = run_eval(config(tmp_path, a=str(a), b=str(b), prompts=None, rubrics=[], rewards=[length_reward]))
    assert KEYS <= set(s)
    assert (s["n"], s["wins"], s["losses"], s["ties"]) == (3, 1, 1, 1)
    assert s["win_rate"] == 0.5 and s["win_rate_ci"][0] < 0.5 < s["win_rate_ci"][1]
    assert s["position_consistency"] is None and s["judge"] is None and s["rewards"] == [length_reward]
    assert (s["length_unit"], s["mean_length_a"], s["mean_length_b"]) == ("words", 2.0, 2.0)
    assert s["eos_rate_a"] is None  # a user's file does not say how a response ended
    assert (s["mean_score_a"], s["mean_score_b"]) == (2.0, 2.0)
    assert json.loads((out / "eval.json").read_text()) == s
    rows = read_jsonl(out / "eval.jsonl")
    assert [(r["id"], r["winner"]) for r in rows] == [("p1", "A"), ("p2", "tie"), ("p3", "B")]  # A's order
    assert rows[0]["votes"][length_reward]["score_a"] == 3.0
    assert "Not distinguishable" in (out / "report.html").read_text()
    assert not (out / "candidates_a.jsonl").exists()


def test_model_sides_same_seeds_one_engine_at_a_time_and_pairwise_both_orders(tmp_path):
    engines = Engines()
    s = run_eval(config(tmp_path), factory=engines)
    out = tmp_path / "out"
    assert engines.made == ["long-model", "short-model", "judge"] and engines.max_alive == 1 and engines.alive == 0
    assert engines.seeds["long-model"] == engines.seeds["short-model"] and len(engines.seeds["long-model"]) == 8
    assert (s["n"], s["wins"], s["position_consistency"]) == (8, 8, 1.0)
    assert s["win_rate_ci"][0] > 0.5 and s["judge"] == "fake:judge"
    assert s["length_unit"] == "tokens" and s["mean_length_a"] > s["mean_length_b"]
    assert s["eos_rate_a"] == 1.0 and s["models"] == {"a": "fake:long-model", "b": "fake:short-model"}
    for side in "ab":
        rows = read_jsonl(out / f"candidates_{side}.jsonl", CANDIDATE_SCHEMA)
        assert len(rows) == 8
    vote = read_jsonl(out / "eval.jsonl")[0]["votes"]["overall_preference"]
    assert vote["consistent"] and vote["p_a_first"] == pytest.approx(0.9) and vote["p_a_second"] == pytest.approx(0.9)

    biased = run_eval(config(tmp_path, out=str(tmp_path / "biased")), factory=Engines(judge=first_slot_judge))
    assert (biased["ties"], biased["win_rate"], biased["position_consistency"]) == (8, 0.5, 0.0)


def test_pointwise_rubric_and_reward_vote_and_n_per_prompt(tmp_path, length_reward):
    fewer = length_reward.replace(":words", ":fewer_words")
    s = run_eval(config(tmp_path, rubrics=["helpfulness"], rewards=[fewer], n_per_prompt=2), factory=Engines())
    assert s["n"] == 16 and s["prompts"] == 8 and s["score_source"] == fewer
    by = s["by_source"]
    assert by[fewer]["losses"] == 16  # the reward prefers the shorter B
    assert by["helpfulness"]["kind"] == "logprob" and by["helpfulness"]["wins"] > 0
    rows = read_jsonl(tmp_path / "out" / "eval.jsonl")
    assert [(r["id"], r["k"]) for r in rows[:2]] == [(rows[0]["id"], 0), (rows[0]["id"], 1)]
    for r in rows:  # helpfulness win + reward loss = tie; helpfulness tie + reward loss = loss
        expected = combine([v["outcome"] for v in r["votes"].values()])
        assert r["outcome"] == expected and r["outcome"] in (0.0, 0.5)
    assert s["ties"] == by["helpfulness"]["wins"] and s["losses"] == 16 - s["ties"]


def test_resume_after_a_crash_while_judging_gives_the_same_files(tmp_path):
    clean = run_eval(config(tmp_path, out=str(tmp_path / "clean")), factory=Engines())
    with pytest.raises(RuntimeError, match="judge killed"):
        run_eval(config(tmp_path), factory=Engines(fail_judge_after=1))
    out = tmp_path / "out"
    assert not (out / "eval.json").exists() and (out / "candidates_a.jsonl").exists()
    engines = Engines()
    resumed = run_eval(config(tmp_path), factory=engines)
    assert engines.made == ["judge"]  # the candidates were reused
    assert resumed == clean
    for name in ("candidates_a.jsonl", "candidates_b.jsonl", "votes.jsonl", "eval.jsonl", "eval.json", "report.html"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
    again = Engines()
    assert run_eval(config(tmp_path), factory=again) == clean and again.made == []


def test_resume_after_a_crash_while_generating_b(tmp_path):
    clean = run_eval(config(tmp_path, out=str(tmp_path / "clean")), factory=Engines())
    with pytest.raises(RuntimeError, match="policy killed"):
        run_eval(config(tmp_path), factory=Engines(fail_b_after=1))  # chunk_size=3: one chunk of B saved
    partial = read_jsonl(tmp_path / "out" / ".rlaif" / "candidates_b.jsonl")
    assert len(partial) == 3 and not (tmp_path / "out" / "candidates_b.jsonl").exists()
    engines = Engines()
    assert run_eval(config(tmp_path), factory=engines) == clean
    assert engines.made == ["short-model", "judge"]
    for name in ("candidates_a.jsonl", "candidates_b.jsonl", "eval.jsonl", "votes.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_changed_settings_are_refused_unless_overwrite(tmp_path):
    run_eval(config(tmp_path), factory=Engines())
    with pytest.raises(UserError, match="overwrite=true"):
        run_eval(config(tmp_path, temperature=0.3), factory=Engines())
    engines = Engines()
    s = run_eval(config(tmp_path, temperature=0.3, overwrite=True), factory=engines)
    assert s["n"] == 8 and len(engines.made) == 3


def _cli_error(capsys, argv: list[str]) -> str:  # noqa: ANN001
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlaif: error:")
    return err


def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys, length_reward):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "p1", "prompt": "hi", "responses": ["x"]}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "q1", "prompt": "hi", "responses": ["y"]}])
    c = write_jsonl(tmp_path / "c.jsonl", [{"id": "p1", "prompt": "hello", "responses": ["y"]}])
    out = ["--out", str(tmp_path / "out"), "progress=false"]
    assert "--prompts" in _cli_error(capsys, ["eval", "--a", "some-model", "--b", str(a), "--reward", length_reward,
                                              *out])
    assert "no prompt id in common" in _cli_error(capsys, ["eval", "--a", str(a), "--b", str(b), "--reward",
                                                           length_reward, *out])
    assert "c.jsonl:1" in _cli_error(capsys, ["eval", "--a", str(a), "--b", str(c), "--reward", length_reward, *out])
    assert "unknown rubric 'nope'" in _cli_error(capsys, ["eval", "--a", str(a), "--b", str(a), "--rubric", "nope",
                                                          *out])
    assert "no such file" in _cli_error(capsys, ["eval", "--a", str(a), "--b", str(a), "--reward",
                                                 f"python:{tmp_path}/missing.py:f", *out])
    assert "--rubric helpfulness" in _cli_error(capsys, ["eval", "--a", str(a), "--b", str(a), "--reward",
                                                         "judge:helpfulness", *out])
    assert "--rubric" in _cli_error(capsys, ["eval", "--a", str(a), "--b", str(a), *out])
    assert "n_per_prompt=2" in _cli_error(capsys, ["eval", "--a", str(a), "--b", str(a), "--reward", length_reward,
                                                   "n_per_prompt=2", *out])
    assert "missing.jsonl" in _cli_error(capsys, ["eval", "--a", str(tmp_path / "missing.jsonl"), "--b", str(a),
                                                  "--reward", length_reward, *out])
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_cli_prints_a_table(tmp_path, capsys, length_reward):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"p{i}", "prompt": "q", "responses": ["a b c"]} for i in range(6)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"p{i}", "prompt": "q", "responses": ["a"]} for i in range(6)])
    assert main(["eval", "--a", str(a), "--b", str(b), "--reward", length_reward, "--out", str(tmp_path / "o"),
                 "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "6/0/0" in printed and "100.0%" in printed and "A beats B" in printed


def test_hf_engine_tiny_models_same_model_ties_other_model_differs(tmp_path, tiny_model_dir, tiny_tokenizer_dir,
                                                                   length_reward):
    other = build_tiny_model(tmp_path / "other", tiny_tokenizer_dir, seed=1)
    engine = {"engine": "hf", "max_model_len": 256}
    (tmp_path / "four").mkdir()
    common = dict(prompts=str(prompts_file(tmp_path / "four", 4)), rubrics=[], rewards=[length_reward], policy=engine,
                  max_tokens=6, temperature=1.0)
    same = run_eval(config(tmp_path, a=tiny_model_dir, b=tiny_model_dir, out=str(tmp_path / "same"), **common))
    assert same["ties"] == same["n"] == 4  # same model, same per-prompt seeds: the same responses
    assert same["length_unit"] == "tokens" and same["eos_rate_a"] is not None
    cands = read_jsonl(tmp_path / "same" / "candidates_a.jsonl", CANDIDATE_SCHEMA)
    assert all(r["num_tokens"][0] <= 6 for r in cands)
    diff = run_eval(config(tmp_path, a=tiny_model_dir, b=other, out=str(tmp_path / "diff"), **common))
    rows = read_jsonl(tmp_path / "diff" / "eval.jsonl")
    assert any(r["response_a"] != r["response_b"] for r in rows) and diff["n"] == 4


def test_report_notes_and_table_names():
    from rlaif.eval.report import short_name
    from rlaif.eval.report import notes

    weak = notes({"judge": "hf:smollm2-135m", "win_rate": 0.9, "lc_win_rate": 0.5, "position_consistency": 0.2,
                  "mean_length_a": 90, "mean_length_b": 30, "length_unit": "tokens"})
    assert len(weak) == 3 and "weak judge" in weak[0] and "40 points" in weak[1] and "20.0%" in weak[2]
    assert notes({"judge": "openai:gpt-x", "win_rate": 0.9, "lc_win_rate": 0.85, "position_consistency": 0.9}) == []
    assert short_name("python:/a/b/reward.py:fn") == "python:reward.py:fn" and short_name("rm:/x/rm-dir") == "rm:rm-dir"
    assert short_name("overall_preference") == "overall_preference"


def test_rules_rubric_needs_no_engine_and_sees_finish_reasons(tmp_path):
    rubric = tmp_path / "finished.yaml"
    rubric.write_text("name: finished\ndescription: d\nmethod: rules\nchecks:\n  - kind: words\n    min: 5\n"
                      "  - kind: ends_with_eos\n")
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"p{i}", "prompt": "q", "responses": ["one two three four five"]}
                                          for i in range(4)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"p{i}", "prompt": "q", "responses": ["one"]} for i in range(4)])

    def no_engine(config):  # noqa: ANN001, ANN202
        raise AssertionError("a rules rubric loaded an engine")

    s = run_eval(config(tmp_path, a=str(a), b=str(b), prompts=None, rubrics=[str(rubric)]), factory=no_engine)
    assert (s["wins"], s["judge"], s["by_source"]["finished"]["kind"]) == (4, None, "rules")
    engines = Engines()
    s = run_eval(config(tmp_path, rubrics=[str(rubric)], out=str(tmp_path / "models"), max_tokens=9), factory=engines)
    assert engines.made == ["long-model", "short-model"]  # no judge engine
    rows = read_jsonl(tmp_path / "models" / "eval.jsonl")
    assert all(r["finish_b"] == "stop" and r["finish_a"] in ("stop", "length") for r in rows)
    cut = [r for r in rows if r["finish_a"] == "length"]  # long replies cut at 9 tokens fail ends_with_eos
    assert cut and all(r["votes"]["finished"]["score_a"] == 0.5 for r in cut)
