"""Per-prompt rubrics (`rlaif.judging.criteria`): parsing and its errors, the judge's answer format,
RaR's normalised reward, the ``rubrics:FIELD`` reward and ``rlaif run --rubric criteria:FIELD``, all on
the fake engine with scripted judge answers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rlaif.backends.base import BackendConfig
from rlaif.backends.fake import FakeBackend
from rlaif.cli import main
from rlaif.dataset.options import RunConfig
from rlaif.dataset.pipeline import run_all
from rlaif.errors import UserError
from rlaif.io.records import JUDGEMENT_SCHEMA, PAIR_SCHEMA, read_jsonl
from rlaif.judging.criteria import criteria_reward, parse_answer, parse_criteria, score_criteria
from rlaif.judging.criteria_lint import lint_criteria
from rlaif.rewards.load import load_rewards

CAPITAL = [{"criterion": "Names Paris", "weight": 2}, {"criterion": "Mentions a wrong date", "weight": -1}]
COLOUR = [{"criterion": "Names a colour", "weight": 1}]


def judge_reply(conversation, index, params) -> str:
    """A scripted judge: item 1 met when the response says 'Paris' (or 'red' for the colour), item 2 when
    it says '1700'; the policy's replies cycle through four answers."""
    text = conversation[-1]["content"]
    if "Rate the answer" not in text:  # the policy's reply
        return ["Paris", "Paris in 1700", "Lyon", "red"][index % 4]
    response = text.split("\nAnswer: ")[1].split("\n\nRate the answer")[0]
    first = 2 if ("Paris" in response if "1. Names Paris" in text else "red" in response) else 0
    if "2. " not in text:
        return f"1: {first}"
    return f"Sure.\n1: {first}\n2: {2 if '1700' in response else 0}"


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("value, message", [
    (None, "field 'rubric': missing"),
    ([], "field 'rubric': the list of criteria is empty"),
    ("be nice", "field 'rubric': expected a list of criteria, got str"),
    ([{"criterion": "x", "weight": 1}] * 21, "field 'rubric': 21 criteria; at most 20"),
    ([{"weight": 1}], "field 'rubric'[0]: 'criterion' is missing"),
    ([{"criterion": "ok", "weight": 1}, {"criterion": "x", "weight": 0}],
     "field 'rubric'[1]: weight 0: a criterion must count"),
    ([{"criterion": "x", "weight": "high"}], "field 'rubric'[0]: weight 'high' is not a number"),
    ([{"criterion": "x", "weight": True}], "weight True is not a number"),
    ([{"criterion": "x"}], "weight None is not a number"),
])
def test_parse_criteria_errors_name_file_line_and_field(value, message: str) -> None:
    with pytest.raises(UserError) as e:
        parse_criteria(value, "p.jsonl:3", "rubric")
    assert str(e.value).startswith("p.jsonl:3: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("weight", [0, -0.0, float("nan"), float("inf"), "2", True, None, [1]])
def test_parse_criteria_and_the_lint_give_one_reason_for_a_bad_weight(weight) -> None:
    """A weight is checked in one place: the prompt-file error and the criteria-file lint say the same."""
    (finding,) = lint_criteria([{"criterion": "Names Paris", "weight": weight}])
    with pytest.raises(UserError) as e:
        parse_criteria([{"criterion": "Names Paris", "weight": weight}], "p.jsonl:3", "rubric")
    assert str(e.value) == f"p.jsonl:3: field 'rubric'[0]: {finding.message}"


def test_parse_criteria_keeps_text_and_weights() -> None:
    assert parse_criteria(CAPITAL, "p:1", "rubric") == [{"criterion": "Names Paris", "weight": 2.0},
                                                        {"criterion": "Mentions a wrong date", "weight": -1.0}]


@pytest.mark.parametrize("text, count, scores", [
    ("1: 2\n2: 0", 2, [2, 0]),
    ("Here are the scores:\n1. 1\n2) 2\n3 - 0", 3, [1, 2, 0]),
    ("Item 1: 2\nItem 2: score: 1", 2, [2, 1]),
    ('{"1": 2, "2": 1}', 2, [2, 1]),
    ("scores: [0, 2]", 2, [0, 2]),
    ("2\n0\n", 2, [2, 0]),
    ("1: 2\n1: 0\n2: 1", 2, [2, 1]),  # the first line of a number wins
    ("1: 2", 2, None),  # item 2 unscored
    ("1: 5\n2: 1", 2, None),  # out of range
    ("1: 1.5\n2: 1", 2, None),
    ("The response is good.", 1, None),
    ("", 1, None),
])
def test_parse_answer(text: str, count: int, scores) -> None:
    assert parse_answer(text, count) == scores


@pytest.mark.parametrize("scores, reward", [
    ([2, 0], 1.0),  # all wanted, no pitfall: the top of the range
    ([0, 2], 0.0),  # nothing wanted, the pitfall: the bottom
    ([2, 2], 2 / 3),  # (2 - 1 + 1) / 3
    ([1, 1], 0.5),  # (1 - 0.5 + 1) / 3
    (None, None),
])
def test_criteria_reward_is_rar_normalised(scores, reward) -> None:
    criteria = parse_criteria(CAPITAL, "p:1", "rubric")
    assert criteria_reward(criteria, scores) == (None if reward is None else pytest.approx(reward))


def test_criteria_reward_all_positive_weights() -> None:
    criteria = [{"criterion": "a", "weight": 3.0}, {"criterion": "b", "weight": 1.0}]
    assert criteria_reward(criteria, [2, 1]) == pytest.approx((3 + 0.5) / 4)


# ----------------------------------------------------------------------------- rubrics:FIELD reward

def test_rubrics_reward_scores_each_prompt_by_its_own_criteria(monkeypatch: pytest.MonkeyPatch) -> None:
    engines: list[FakeBackend] = []
    monkeypatch.setattr("rlaif.backends.load_backend",
                        lambda config: engines.append(FakeBackend(config, reply_fn=judge_reply)) or engines[-1])
    (source,) = load_rewards(["rubrics:rubric:lines"], judge=BackendConfig(engine="fake"), seed=0, verdict_retries=1)
    chat = [{"role": "user", "content": "Capital of France?"}]
    rows = [{"id": "p0", "rubric": CAPITAL}] * 3 + [{"id": "p1", "rubric": COLOUR}] * 2
    rewards = source([chat] * 5, ["Paris", "Paris in 1700", "Lyon", "red", "blue"], rows)
    assert rewards == [pytest.approx(1.0), pytest.approx(2 / 3), pytest.approx(1 / 3), 1.0, 0.0]
    assert engines[0].calls == 1  # one engine call for the batch
    source.close()


def test_rubrics_reward_unparsable_answer_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rlaif.backends.load_backend",
                        lambda config: FakeBackend(config, reply_fn=lambda c, i, p: "I like it."))
    (source,) = load_rewards(["rubrics:rubric:lines"], judge=BackendConfig(engine="fake"), seed=0, verdict_retries=1)
    assert source([[{"role": "user", "content": "x"}]], ["y"], [{"id": "p", "rubric": COLOUR}]) == [None]
    assert source.failures == 1


# ----------------------------------------------------------------------------- yes_no scoring (the default)

def yes_no_logprobs(conversation, choices, prefix) -> dict[str, float]:
    """A scripted judge's next-token log-probs: P(Yes) = 0.9 when the response meets the criterion (says
    'Paris' for 'Names Paris', '1700' for the date, 'red' for the colour), else 0.2, with 0.1 of the mass
    elsewhere; a question about 'unsure' gets neither token."""
    assert tuple(choices) == ("Yes", "No") and prefix == ""
    text = conversation[-1]["content"]
    response = text.split("\nAnswer: ")[1].split("\n\nDoes the answer")[0]
    criterion = text.split("criterion: ")[1]
    if "unsure" in criterion:
        return {"Yes": float("-inf"), "No": float("-inf")}
    met = {"Names Paris": "Paris", "Mentions a wrong date": "1700", "Names a colour": "red"}
    yes = 0.9 * 0.9 if any(criterion.startswith(c) and w in response for c, w in met.items()) else 0.9 * 0.2
    return {"Yes": math.log(yes), "No": math.log(0.9 - yes)}


def test_yes_no_scores_are_twice_p_yes_and_rar_normalised() -> None:
    engine = FakeBackend(logprob_fn=yes_no_logprobs)
    chat = [{"role": "user", "content": "Capital of France?"}]
    criteria = parse_criteria(CAPITAL, "p:1", "rubric")
    paris, dated, lyon = score_criteria(engine, [(chat, "Paris", criteria), (chat, "Paris in 1700", criteria),
                                                 (chat, "Lyon", criteria)], seed=0)
    assert paris.scores == [pytest.approx(1.8), pytest.approx(0.4)]  # 2 * 0.9, 2 * 0.2 (renormalised over Yes/No)
    # R = 2 * 0.9 - 1 * 0.2 = 1.6 on [-1, 2]: (1.6 + 1) / 3
    assert paris.reward == pytest.approx(2.6 / 3) and dated.reward == pytest.approx((1.8 - 0.9 + 1) / 3)
    assert lyon.reward == pytest.approx((0.4 - 0.2 + 1) / 3) and paris.raw == "P(yes): 0.900 0.200"


def test_yes_no_asks_every_question_of_a_batch_in_one_call() -> None:
    asked: list[str] = []
    engine = FakeBackend(logprob_fn=lambda c, ch, p: asked.append(c[-1]["content"]) or yes_no_logprobs(c, ch, p))
    chat = [{"role": "user", "content": "Capital of France?"}]
    jobs = [(chat, "Paris", parse_criteria(CAPITAL, "p:1", "rubric")),
            (chat, "red", parse_criteria(COLOUR, "p:2", "rubric"))]
    rewards = [s.reward for s in score_criteria(engine, jobs, seed=0)]
    assert engine.calls == 1 and len(asked) == 3
    assert asked[2].endswith("Does the answer meet this criterion: Names a colour? Answer Yes or No.")
    assert rewards == [pytest.approx(2.6 / 3), pytest.approx(0.9)]


def test_yes_no_without_either_token_masks_the_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rlaif.backends.load_backend", lambda config: FakeBackend(config, logprob_fn=yes_no_logprobs))
    (source,) = load_rewards(["rubrics:rubric"], judge=BackendConfig(engine="fake"), seed=0, verdict_retries=1)
    rubric = COLOUR + [{"criterion": "unsure", "weight": 1}]
    chat = [[{"role": "user", "content": "A colour?"}]]
    assert source(chat * 2, ["red", "red"], [{"id": "a", "rubric": rubric}, {"id": "b", "rubric": COLOUR}]) == [
        None, pytest.approx(0.9)]
    assert source.failures == 1


def test_run_scores_candidates_yes_no_by_default(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "col", "prompt": "A colour?", "rubric": COLOUR}])
    factory = lambda c: FakeBackend(c, reply_fn=judge_reply, logprob_fn=yes_no_logprobs)
    run_all(run_cfg(tmp_path, prompts, rubrics=["criteria:rubric"]), factory=factory)
    (row,) = read_jsonl(tmp_path / "out" / "judgements.jsonl", JUDGEMENT_SCHEMA)
    assert row["scores"] == pytest.approx([0.2, 0.2, 0.2, 0.9])  # replies Paris, Paris in 1700, Lyon, red


@pytest.mark.parametrize("spec, message", [("rubrics:", "nothing after 'rubrics:'"),
                                           ("rubrics:a b", "'a b' is not a field name"),
                                           ("rubrics:rubric:maybe", "unknown criteria scoring 'maybe'")])
def test_rubrics_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        load_rewards([spec], judge=BackendConfig(engine="fake"), seed=0, verdict_retries=1)


def test_train_refuses_a_prompt_without_criteria_before_any_model_loads(tmp_path: Path, capsys,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a", "rubric": COLOUR}, {"prompt": "b"}])
    monkeypatch.setattr("rlaif.backends.load_backend", lambda config: pytest.fail("a model was loaded"))
    code = main(["train", "grpo", "--prompts", str(prompts), "--reward", "rubrics:rubric",
                 "--out", str(tmp_path / "out"), "--model", "smollm2-135m"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert f"{prompts}:2: field 'rubric': missing" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- rlaif run

def run_cfg(tmp_path: Path, prompts: Path, **kw) -> RunConfig:
    options = dict(rubrics=["criteria:rubric:lines"], n=4, progress=False, test_fraction=0.0,
                   policy=BackendConfig(engine="fake"), judge=BackendConfig(engine="fake"))
    return RunConfig(prompts=str(prompts), out=str(tmp_path / "out"), **{**options, **kw})


def test_run_scores_candidates_against_their_prompts_criteria(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "cap", "prompt": "Capital of France?", "rubric": CAPITAL},
                                                   {"id": "col", "prompt": "A colour?", "rubric": COLOUR}])
    run_all(run_cfg(tmp_path, prompts), factory=lambda c: FakeBackend(c, reply_fn=judge_reply))
    out = tmp_path / "out"
    judged = {row["id"]: row for row in read_jsonl(out / "judgements.jsonl", JUDGEMENT_SCHEMA)}
    assert judged["cap"]["rubric"] == "criteria:rubric:lines" and judged["cap"]["method"] == "criteria"
    # replies: Paris, Paris in 1700, Lyon, red -> capital: 1, 2/3, 1/3, 1/3; colour: 0, 0, 0, 1
    assert judged["cap"]["scores"] == pytest.approx([1.0, 2 / 3, 1 / 3, 1 / 3])
    assert judged["col"]["scores"] == [0.0, 0.0, 0.0, 1.0]
    assert judged["cap"]["details"][1]["criteria_scores"] == [2, 2]
    pairs = read_jsonl(out / "preferences" / "train.jsonl", PAIR_SCHEMA)
    (cap,) = [pair for pair in pairs if pair["id"] == "cap"]
    assert cap["chosen"][-1]["content"] == "Paris" and cap["rejected"][-1]["content"] in ("Lyon", "red")


def test_run_counts_an_unparsable_answer_as_a_failed_score(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "col", "prompt": "A colour?", "rubric": COLOUR}])
    reply = lambda conversation, index, params: ("Nice." if "Rate the answer" in conversation[-1]["content"]
                                                 else f"colour {index}")
    run_all(run_cfg(tmp_path, prompts, n=2), factory=lambda c: FakeBackend(c, reply_fn=reply))
    (row,) = read_jsonl(tmp_path / "out" / "judgements.jsonl", JUDGEMENT_SCHEMA)
    assert row["scores"] == [None, None] and row["failures"] == 2
    assert row["details"][0]["raw"] == "Nice." and "does not score every criterion" in row["details"][0]["error"]


def test_run_refuses_a_bad_criteria_row_before_generating(tmp_path: Path, capsys) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a", "rubric": COLOUR},
                                                   {"prompt": "b", "rubric": [{"criterion": "c", "weight": 0}]}])
    code = main(["run", "--prompts", str(prompts), "--rubric", "criteria:rubric", "--out", str(tmp_path / "out"),
                 "policy.engine=fake", "progress=false"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert f"{prompts}:2: field 'rubric'[0]: weight 0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "candidates.jsonl").exists()
