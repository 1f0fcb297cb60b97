"""Online RL rewards: spec parsing, python functions, mixing, the judge (fake engine; one slow test
with the embedded model) and reward models (a tiny random RM checked against rlaif.train.score)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlaif.backends.base import BackendConfig
from rlaif.errors import UserError
from rlaif.rewards import load as rewards_load
from rlaif.rewards.combine import combine_rewards
from rlaif.rewards.judge import group_items
from rlaif.rewards.load import load_rewards
from rlaif.rewards.specs import parse_reward_specs

ASSETS = Path(__file__).parent / "assets"
GOOD = ASSETS / "rewards_good.py"
BAD = ASSETS / "rewards_bad.py"
FAKE = BackendConfig(engine="fake")

CHAT_A = [{"role": "user", "content": "Say hi."}]
CHAT_B = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def batch(k: int = 2) -> tuple[list[list[dict]], list[str], list[dict]]:
    """Two prompts x k completions, grouped by prompt, as the trainer passes them."""
    texts = ["hi there", "hello", "hey you all", "yo"][:k] + ["red", "deep blue sea", "green", "x y"][:k]
    prompts = [CHAT_A] * k + [CHAT_B] * k
    rows = [{"id": "p0", "target": "hello"}] * k + [{"id": "p1", "target": "red"}] * k
    return prompts, texts, rows


def load(*specs: str, **kw) -> list:
    return load_rewards(list(specs), judge=kw.pop("judge", FAKE), seed=0, verdict_retries=1, **kw)


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("spec, message", [
    ("bogus:x", "reward 'bogus:x': unknown kind 'bogus'"),
    ("helpfulness", "reward 'helpfulness': unknown kind 'helpfulness'"),
    ("judge:", "reward 'judge:': nothing after 'judge:'"),
    ("judge:no_such_rubric", "reward 'judge:no_such_rubric': unknown rubric 'no_such_rubric'"),
    (f"python:{GOOD}", f"reward 'python:{GOOD}': expected python:FILE.py:FUNC"),
    (f"python:{ASSETS / 'prompts.txt'}:f", "is not a .py file"),
    ("python:missing_file.py:f", "reward 'python:missing_file.py:f': missing_file.py: no such file"),
    (f"python:{GOOD}:nope", f"{GOOD}: no top-level function 'nope'"),
    ("rm:/no/such/dir", "reward 'rm:/no/such/dir': /no/such/dir: no such folder"),
    (f"rm:{ASSETS}", "not a model folder (no config.json)"),
])
def test_parse_errors_are_one_line_and_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(UserError) as e:
        parse_reward_specs([spec], [])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parse_refuses_a_causal_lm_as_reward_model(tiny_model_dir: str) -> None:
    with pytest.raises(UserError, match=r"is not a reward model \(architectures: LlamaForCausalLM\)"):
        parse_reward_specs([f"rm:{tiny_model_dir}"], [])


def test_parse_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "r.py"
    bad.write_text("def f(prompts, completions):\n    return [\n\ndef g(:\n")
    with pytest.raises(UserError, match=rf"reward 'python:{bad}:f': {bad}:\d+: syntax error"):
        parse_reward_specs([f"python:{bad}:f"], [])


def test_parse_weights_and_defaults() -> None:
    specs = [f"python:{GOOD}:length", "judge:helpfulness"]
    assert parse_reward_specs(specs, []) == [("python", f"{GOOD}:length", 1.0), ("judge", "helpfulness", 1.0)]
    assert [w for *_, w in parse_reward_specs(specs, [0.5, 2])] == [0.5, 2.0]
    with pytest.raises(UserError, match="'reward_weights': 1 weights for 2 reward specs"):
        parse_reward_specs(specs, [1.0])
    with pytest.raises(UserError, match="not a finite number"):
        parse_reward_specs(specs, [1.0, math.nan])
    with pytest.raises(UserError, match="given twice"):
        parse_reward_specs([specs[0], specs[0]], [])
    with pytest.raises(UserError, match="at least one reward spec"):
        parse_reward_specs([], [])


def test_parse_accepts_names_bound_by_assignment_import_or_under_if(tmp_path: Path) -> None:
    f = tmp_path / "r.py"
    f.write_text("from math import sqrt as root\nalias = len\nif True:\n    def inner(**kw):\n        return []\n")
    for name in ("root", "alias", "inner"):
        parse_reward_specs([f"python:{f}:{name}"], [])


# ----------------------------------------------------------------------------- python rewards

def test_python_reward_values_and_columns() -> None:
    (length, match, masked, count) = load(f"python:{GOOD}:length", f"python:{GOOD}:target_match",
                                          f"python:{GOOD}:none_for_empty", f"python:{GOOD}:echo_prompt_count")
    prompts, texts, rows = batch()
    assert length(prompts, texts, rows) == [2.0, 1.0, 1.0, 3.0]
    assert match(prompts, texts, rows) == [0.0, 1.0, 1.0, 0.0]
    assert all(type(v) is float for v in match(prompts, texts, rows))  # ints become floats
    assert masked(prompts, ["a", " ", "", "b"], rows) == [0.5, None, None, 0.5]
    assert count(prompts, texts, rows) == [1.0, 1.0, 2.0, 2.0]
    # the file was imported once for its four specs: the module holding CALLS is the one called
    module = length.fn.__globals__
    assert module is match.fn.__globals__ is masked.fn.__globals__
    assert module["CALLS"][-1] == ["id", "target"]


def test_python_reward_row_missing_a_column_gets_none() -> None:
    (length,) = load(f"python:{GOOD}:length")
    length([CHAT_A, CHAT_A], ["a", "b c"], [{"id": "p0", "lang": "en"}, {"id": "p0"}])
    assert length.fn.__globals__["CALLS"][-1] == ["id", "lang"]


@pytest.mark.parametrize("func, message", [
    ("raises", r"the function raised ZeroDivisionError: no reward today \(.*rewards_bad.py:7\)$"),
    ("wrong_length", "the function returned 5 rewards for 4 completions"),
    ("returns_string", r"reward 0 is 'high' \(str\); expected a number or None"),
    ("returns_bool", r"reward 0 is True \(bool\); expected a number or None"),
    ("returns_nan", "reward 0 is nan; rewards must be finite"),
    ("returns_scalar", "the function returned float; expected a list of 4 rewards"),
])
def test_python_reward_misbehaving_is_a_one_line_user_error(func: str, message: str) -> None:
    (source,) = load(f"python:{BAD}:{func}")
    with pytest.raises(UserError, match=message) as e:
        source(*batch())
    assert str(e.value).startswith(f"reward 'python:{BAD}:{func}': ") and "\n" not in str(e.value)


def test_python_import_error_and_non_callable() -> None:
    broken = ASSETS / "rewards_import_error.py"
    with pytest.raises(UserError, match=rf"importing {broken} failed: RuntimeError: missing dependency "
                                        rf"\({broken}:3\)"):
        load(f"python:{broken}:length")
    with pytest.raises(UserError, match="'NOT_A_FUNCTION' is not callable"):
        load(f"python:{GOOD}:NOT_A_FUNCTION")


def test_python_errors_come_before_the_judge_engine_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    monkeypatch.setattr(rewards_load, "SharedJudge", lambda config: built.append(config))
    with pytest.raises(UserError, match="importing"):
        load("judge:helpfulness", f"python:{ASSETS / 'rewards_import_error.py'}:length")
    assert built == []


# ----------------------------------------------------------------------------- mixing

def test_combine_rewards_weights_and_masking() -> None:
    per = {"a": [1.0, 2.0, None, 4.0], "b": [0.5, None, 1.0, 0.0]}
    assert combine_rewards(per, {"a": 2.0, "b": -1.0}) == [1.5, None, None, 8.0]
    assert combine_rewards({"a": [1.0, None]}, {"a": 0.5}) == [0.5, None]
    with pytest.raises(ValueError, match="disagree"):
        combine_rewards({"a": [1.0], "b": [1.0, 2.0]}, {"a": 1.0, "b": 1.0})


# ----------------------------------------------------------------------------- judge

def test_group_items_groups_consecutive_completions_of_a_prompt() -> None:
    prompts, texts, rows = batch(k=3)
    groups = group_items(prompts, texts, rows)
    assert [(item.id, item.responses, idx) for item, idx in groups] == [
        ("p0", texts[:3], [0, 1, 2]), ("p1", texts[3:], [3, 4, 5])]


@pytest.mark.parametrize("rubric", ["helpfulness", "overall_preference", "truthfulness"])  # logprob, pairwise, verdict
def test_judge_reward_on_fake_engine(rubric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import rlaif.judging.judge as judge_mod

    seen: list[list] = []
    real = judge_mod.judge_items
    monkeypatch.setattr(judge_mod, "judge_items",
                        lambda b, r, items, **kw: seen.append(items) or real(b, r, items, **kw))
    (source,) = load(f"judge:{rubric}")
    k = 3
    prompts, texts, rows = batch(k)
    rewards = source(prompts, texts, rows)
    assert len(seen) == 1 and [len(item.responses) for item in seen[0]] == [k, k]  # one item per prompt
    assert [item.id for item in seen[0]] == ["p0", "p1"]
    assert len(rewards) == 2 * k and all(r is not None and 0.0 <= r <= 1.0 for r in rewards)
    assert len(set(rewards)) > 1
    if rubric == "overall_preference":  # mean preference within a group of k sums to k/2
        assert sum(rewards[:k]) == pytest.approx(k / 2) and sum(rewards[k:]) == pytest.approx(k / 2)
    assert source(prompts, texts, rows) == rewards  # deterministic
    source.close()


def test_judge_failed_judgement_is_none_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlaif.backends.fake import FakeBackend

    def logprobs(conversation, choices, prefix):  # no mass on the scale for the reply "bad"
        return {c: (-math.inf if "bad" in conversation[-1]["content"] else -1.0) for c in choices}

    monkeypatch.setattr("rlaif.backends.load_backend", lambda config: FakeBackend(config, logprob_fn=logprobs))
    (source,) = load("judge:helpfulness")
    rewards = source([CHAT_A] * 2, ["good answer", "bad answer"], [{"id": "p0"}] * 2)
    assert rewards[0] == pytest.approx(0.5) and rewards[1] is None  # uniform over 1..5 -> 3 -> 0.5
    assert source.failures == 1


def test_judge_engine_built_once_and_closed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlaif.backends.fake import FakeBackend

    events: list[str] = []

    class Counting(FakeBackend):
        def close(self) -> None:
            events.append("close")

    monkeypatch.setattr("rlaif.backends.load_backend", lambda config: events.append("load") or Counting(config))
    sources = load("judge:helpfulness", "judge:overall_preference")
    assert events == ["load"] and sources[0].judge is sources[1].judge
    for s in sources:
        s.close()
    assert events == ["load", "close"]


# ----------------------------------------------------------------------------- reward model

@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: str) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_rm_reward_matches_score(tiny_rm_dir: str) -> None:
    from rlaif.train.score import score

    prompts, texts, rows = batch(k=3)
    (source,) = load(f"rm:{tiny_rm_dir}")
    rewards = source(prompts, texts, rows)
    assert len(rewards) == 6 and all(isinstance(r, float) and math.isfinite(r) for r in rewards)
    assert len(set(rewards)) == 6
    assert rewards == pytest.approx(score(prompts, texts, model=tiny_rm_dir, batch_size=1), abs=1e-5)
    source.close()


# ----------------------------------------------------------------------------- slow: a real judge

@pytest.mark.slow
def test_judge_helpfulness_with_embedded_model_on_hf(embedded_model_dir: str) -> None:
    judge = BackendConfig(engine="hf", model=embedded_model_dir, batch_size=8)
    (source,) = load("judge:helpfulness", judge=judge)
    prompts = [[{"role": "user", "content": "What is the capital of France?"}]] * 2 + \
              [[{"role": "user", "content": "Give me one tip for sleeping better."}]] * 2
    texts = ["The capital of France is Paris.", "Bananas are yellow, I think.",
             "Keep a regular bedtime and avoid screens for an hour before bed.", "no"]
    rewards = source(prompts, texts, [{"id": "fr"}] * 2 + [{"id": "sleep"}] * 2)
    source.close()
    assert all(r is not None and 0.0 <= r <= 1.0 for r in rewards)
    assert len(set(rewards)) == 4
