"""``judge:auto``: the judge writes per-prompt criteria (scripted fake judge), they are parsed, linted,
cached, refreshed, saved beside the rollouts, reused on resume, and a person's edit (studio) wins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlaif.backends.base import BackendConfig, SamplingParams
from rlaif.backends.fake import FakeBackend
from rlaif.errors import UserError
from rlaif.judging.criteria_lint import lint_criteria, lint_criteria_text, spread_warnings
from rlaif.judging.criteria_writer import CriteriaParseError, WriterTemplate, parse_criteria_answer, write_criteria
from rlaif.rewards.auto_judge import AutoJudgeReward, file_name

GOOD = '[{"criterion": "Names Paris as the capital", "weight": 2}, {"criterion": "Invents a source", "weight": -1}]'
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def c(text: str, weight: float = 1.0) -> dict[str, Any]:
    return {"criterion": text, "weight": weight}


# ---------------------------------------------------------------------------------------------
# parsing

@pytest.mark.parametrize("answer", [
    GOOD,
    f"Here are the criteria:\n```json\n{GOOD}\n```\nThese separate the responses.",
    f"{GOOD} I hope this helps! [1]",
    json.dumps({"criteria": json.loads(GOOD)}),
    'Sure. {"note": 1} then ' + GOOD,
])
def test_the_criteria_list_is_found_amid_fences_and_text(answer: str) -> None:
    assert parse_criteria_answer(answer) == [c("Names Paris as the capital", 2), c("Invents a source", -1)]


def test_bare_strings_and_string_weights_are_accepted() -> None:
    assert parse_criteria_answer('["Is short", {"criterion": "Names Paris", "weight": "2"}]') == [
        c("Is short"), c("Names Paris", 2.0)]


@pytest.mark.parametrize("answer, why", [("The best answer is the first one.", "no JSON list"),
                                         ('[{"score": 2}]', "criterion"), ("[]", "criterion"),
                                         ('[{"criterion": "x", "weight": "heavy"}]', "criterion")])
def test_unusable_answers_say_why(answer: str, why: str) -> None:
    with pytest.raises(CriteriaParseError, match=why):
        parse_criteria_answer(answer)


# ---------------------------------------------------------------------------------------------
# lint

def test_a_criterion_and_its_negation_are_a_mirrored_pair() -> None:
    for a, b in [(c("Provides clear explanations"), c("Lacks clear explanations", -1)),
                 (c("The response is concise"), c("The response is not concise")),
                 (c("Cites a source"), c("Cites a source", -1)),
                 (c("Doesn't repeat itself", 1), c("Repeats itself", 1))]:
        found = lint_criteria([a, b])
        assert [(f.index, "mirrors criterion 1" in f.message) for f in found] == [(1, True)], (a, b, found)
    assert lint_criteria([c("Names Paris"), c("Gives the population of Paris")]) == []


def test_duplicates_zero_weights_text_and_count_are_errors() -> None:
    found = lint_criteria([c("Names Paris"), c("names  Paris."), c("Is polite", 0), c(""), c("x" * 301),
                           c("Is short", float("nan"))])
    messages = {f.index: f.message for f in found}
    assert "6 criteria" in messages[None]
    assert "duplicates criterion 1" in messages[1] and "weight 0" in messages[2] and "empty" in messages[3]
    assert "301 characters" in messages[4] and "not finite" in messages[5]
    assert "0 criteria" in lint_criteria([])[0].message


def test_a_criterion_that_scores_the_whole_group_alike_is_a_warning() -> None:
    found = spread_warnings([c("a"), c("b")], [[2.0, 2.0, None, 2.0], [0.0, 1.0, 2.0, 2.0]])
    assert [(f.index, f.level) for f in found] == [(0, "warning")] and "does not discriminate" in found[0].message


def test_a_criteria_file_is_linted_with_lines() -> None:
    text = json.dumps({"prompt_id": "p", "criteria": [c("Is concise"), c("Is not concise")]}, indent=2)
    _, found = lint_criteria_text(text)
    line = text.splitlines().index('      "criterion": "Is not concise",') + 1
    assert [(n, f.index) for n, f in found] == [(line, 1)]
    assert lint_criteria_text("{\n  oops")[1][0][0] == 2
    assert "edited_by" in str(lint_criteria_text('{"criteria": [], "edited_by": "robot"}')[1][0][1])


# ---------------------------------------------------------------------------------------------
# the writer, with scripted judge answers

class Script:
    """A fake judge that answers the criteria writer from a list (the last answer repeats)."""

    def __init__(self, *answers: str) -> None:
        self.answers, self.asked = list(answers), []

    def __call__(self, conversation: list[dict[str, str]], index: int, params: SamplingParams) -> str:
        self.asked.append(conversation)
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


def test_an_unusable_answer_is_reasked_with_the_reason() -> None:
    script = Script("I think response 1 is better.", GOOD)
    [written] = write_criteria(FakeBackend(reply_fn=script), WriterTemplate.load(), [("p", CHAT, ["Paris.", "Lyon."])],
                               seed=0, retries=2)
    assert written.criteria == parse_criteria_answer(GOOD) and written.attempts == 2
    assert "Paris." in script.asked[0][1]["content"] and "<<<RESPONSE>>>" in script.asked[0][1]["content"]
    assert "no JSON list found" in script.asked[1][-1]["content"]  # the re-ask names the reason


def test_after_the_retries_lint_flags_are_dropped_or_there_is_no_rubric() -> None:
    mirrored = '[{"criterion": "Is concise", "weight": 1}, {"criterion": "Is not concise", "weight": 1}]'
    script = Script(mirrored)
    [written] = write_criteria(FakeBackend(reply_fn=script), WriterTemplate.load(), [("p", CHAT, ["a", "b"])],
                               seed=0, retries=1)
    assert written.attempts == 2 and written.criteria == [c("Is concise", 1)]
    assert "mirrors" in script.asked[1][-1]["content"]
    [written] = write_criteria(FakeBackend(reply_fn=Script("no idea")), WriterTemplate.load(), [("p", CHAT, ["a"])],
                               seed=0, retries=2)
    assert written.criteria is None and written.attempts == 3 and "no JSON list" in (written.error or "")


# ---------------------------------------------------------------------------------------------
# the reward: cache, refresh, files, resume, a person's edit

class Scorer:
    """Scores each completion by its length (fewer words is better), recording its calls."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def __call__(self, criteria: Any, messages: Any, completions: Any) -> list[float | None]:
        self.calls.append(list(criteria))
        return [1.0 / (1 + len(text.split())) for text in completions]


def batch(ids: list[str], k: int = 2) -> tuple[list, list, list]:
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in ids for _ in range(k)]
    completions = [f"answer {'word ' * j}" for _ in ids for j in range(k)]
    return prompts, completions, [{"id": i} for i in ids for _ in range(k)]


def reward(out: Path | None, script: Script, refresh: int = 10) -> tuple[AutoJudgeReward, Scorer]:
    scorer = Scorer()
    source = AutoJudgeReward("judge:auto", lambda: FakeBackend(reply_fn=script), scorer, seed=0, out=out,
                             refresh=refresh, retries=1)
    return source, scorer


def writes(script: Script) -> int:
    return len(script.asked)


def test_criteria_are_cached_per_prompt_and_refreshed_every_n_steps(tmp_path: Path) -> None:
    script = Script(GOOD)
    source, scorer = reward(tmp_path / "out", script, refresh=3)
    for step, ids, wrote in [(0, ["a", "b"], 2), (1, ["a"], 2), (2, ["b", "c"], 3), (3, ["a"], 4), (4, ["b"], 5),
                             (5, ["b"], 5)]:
        source.at_step(step)
        rewards = source(*batch(ids))
        assert writes(script) == wrote, step
        assert rewards[0] is not None and rewards[0] > rewards[1]  # the scorer's rewards, in completion order
    saved = json.loads((tmp_path / "out" / "rubrics" / "a.criteria.json").read_text())
    assert saved["step"] == 4 and saved["edited_by"] == "judge" and saved["criteria"] == parse_criteria_answer(GOOD)
    assert saved["raw"] == GOOD and saved["prompt"] == "question a" and isinstance(saved["lint"], list)
    assert json.loads((tmp_path / "out" / ".rlaif" / "outputs.json").read_text())["outputs"] == ["rubrics"]


def test_a_saved_rubric_is_reused_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first, _ = reward(out, Script(GOOD))
    first.at_step(0)
    first(*batch(["a", "b"]))
    resumed_script = Script("[]")
    resumed, scorer = reward(out, resumed_script)  # a new process: only the files remain
    resumed.at_step(5)
    assert all(r is not None for r in resumed(*batch(["a", "b"])))
    assert writes(resumed_script) == 0 and scorer.calls == [parse_criteria_answer(GOOD)] * 2


def test_no_usable_criteria_masks_the_group_and_counts_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, scorer = reward(tmp_path / "out", Script("no idea", "no idea", GOOD))
    source.at_step(0)
    assert source(*batch(["a"], k=3)) == [None, None, None]  # retries=1: both attempts said "no idea"
    assert source.failures == 3 and scorer.calls == []
    assert "no usable criteria for prompt 'a'" in capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "rubrics" / "a.criteria.json").read_text())
    assert saved["criteria"] is None and "no JSON list" in saved["error"]
    source.at_step(1)
    assert None not in source(*batch(["a"]))  # tried again the next time the prompt comes


def test_a_person_edited_file_wins_and_is_never_rewritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "rubrics").mkdir(parents=True)
    mine = [c("Answers in one word", 3)]
    path = out / "rubrics" / file_name("a")
    path.write_text(json.dumps({"prompt_id": "a", "step": 1, "edited_by": "person", "criteria": mine}))
    script = Script(GOOD)
    source, scorer = reward(out, script, refresh=1)
    for step in range(5):
        source.at_step(step)
        source(*batch(["a"]))
    assert writes(script) == 0 and scorer.calls == [mine] * 5
    assert json.loads(path.read_text())["criteria"] == mine
    path.write_text(json.dumps({"prompt_id": "a", "edited_by": "person", "criteria": [c("Is short", 0)]}))
    with pytest.raises(UserError, match=rf"{path.name}:1: criterion 1: weight 0"):
        source(*batch(["a"]))


def test_odd_prompt_ids_get_distinct_safe_file_names() -> None:
    names = {file_name(i) for i in ["a/b", "a_b", "../x", "a b", "a"]}
    assert len(names) == 5 and all("/" not in n and not n.startswith(".") for n in names)
    assert file_name("p-1.x") == "p-1.x.criteria.json"


def test_a_non_discriminating_criterion_is_saved_with_a_warning(tmp_path: Path) -> None:
    source, _ = reward(tmp_path / "out", Script(GOOD))
    source.score = lambda criteria, messages, completions: [0.5 if len(criteria) == 1 and "source" in
                                                            criteria[0]["criterion"] else len(t) for t in completions]
    source.at_step(0)
    source(*batch(["a"]))
    lint = json.loads((tmp_path / "out" / "rubrics" / "a.criteria.json").read_text())["lint"]
    assert lint == ["criterion 2: warning: does not discriminate: every rollout of the group scored 0.5"]


# ---------------------------------------------------------------------------------------------
# the spec, the loader, the scorer and the trainer

def test_judge_auto_loads_on_the_judge_engine_with_the_yes_no_scorer(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import rlaif.backends.fake as fake
    from rlaif.rewards.load import load_rewards
    from rlaif.rewards.specs import parse_reward_specs

    assert parse_reward_specs(["judge:auto"], []) == [("judge", "auto", 1.0)]
    monkeypatch.setattr(fake, "_default_reply", lambda conversation, index, params: GOOD)
    [source] = load_rewards(["judge:auto"], judge=BackendConfig(engine="fake"), seed=0, verdict_retries=2,
                            out=str(tmp_path / "out"), auto={"refresh": 5})
    assert isinstance(source, AutoJudgeReward) and source.cache.refresh == 5
    from rlaif.judging.criteria import GroupScorer

    assert isinstance(source.score, GroupScorer)
    rewards = source(*batch(["a", "b"], k=3))
    assert len(rewards) == 6 and all(r is not None and 0.0 <= r <= 1.0 for r in rewards)
    assert (tmp_path / "out" / "rubrics" / "b.criteria.json").is_file()
    source.close()


def test_grpo_with_judge_auto_saves_criteria_in_the_out_folder(tmp_path: Path, tiny_model_dir: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import rlaif.backends.fake as fake
    from tests.test_online_trainer import GRPOConfig, small
    from rlaif.train.online.trainer import train_online

    monkeypatch.setattr(fake, "_default_reply", lambda conversation, index, params: GOOD)
    cfg = small(GRPOConfig, tmp_path, tiny_model_dir, steps=2, reward=["judge:auto"], judge=BackendConfig(engine="fake"),
                auto_rubric_refresh=1)
    train_online(cfg)
    out = Path(cfg.out)
    saved = sorted((out / "rubrics").glob("*.criteria.json"))
    assert saved and {json.loads(p.read_text())["step"] for p in saved} <= {1, 2}
    assert any(json.loads(p.read_text())["step"] == 2 for p in saved)  # refresh 1: rewritten at step 2
    assert "rubrics" in json.loads((out / ".rlaif" / "outputs.json").read_text())["outputs"]
    rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert all(r["rewards"]["judge:auto"] is not None for r in rows)


# ---------------------------------------------------------------------------------------------
# the studio on a run's OUT/rubrics

def test_the_studio_lists_lints_and_saves_criteria_files_as_a_persons(tmp_path: Path) -> None:
    from tests.test_studio import make, snapshot

    out = tmp_path / "out"
    source, _ = reward(out, Script(GOOD), refresh=1)
    source.at_step(0)
    source(*batch(["a", "b"]))
    folder = out / "rubrics"
    studio, client, loader = make(folder)
    assert client.get("/api/state").json()["files"] == ["a.criteria.json", "b.criteria.json"]
    text = client.get("/api/file", params={"name": "a.criteria.json"}).json()["text"]
    data = json.loads(text)
    assert data["edited_by"] == "judge"

    data["criteria"].append(c("Does not name Paris as the capital", -2))  # the mirror of criterion 1
    bad = json.dumps(data, indent=2)
    before = snapshot(folder)
    lint = client.post("/api/lint", json={"name": "a.criteria.json", "text": bad}).json()
    assert lint["method"] == "criteria" and lint["errors"] == 1 and lint["previewable"] is False
    [finding] = lint["findings"]
    assert "criterion 3: mirrors criterion 1" in finding["message"]
    assert bad.splitlines()[finding["line"] - 1].strip().startswith('"criterion": "Does not name Paris')
    assert client.post("/api/save", json={"name": "a.criteria.json", "text": bad}).status_code == 422
    assert snapshot(folder) == before
    assert client.post("/api/preview", json={"name": "a.criteria.json", "text": text, "example": 0}).status_code == 422

    data["criteria"] = [c("Answers in one word", 3)]
    r = client.post("/api/save", json={"name": "a.criteria.json", "text": json.dumps(data)})
    assert r.status_code == 200 and json.loads(r.json()["text"])["edited_by"] == "person"
    saved = json.loads((folder / "a.criteria.json").read_text())
    assert saved["edited_by"] == "person" and saved["criteria"] == [c("Answers in one word", 3)]
    assert loader.loads == 0  # criteria files need no judge in the studio

    source.at_step(5)  # refresh 1: b is rewritten, a (the person's) is not
    before_writes = writes(source.backend().reply_fn)  # type: ignore[attr-defined]
    source(*batch(["a", "b"]))
    assert json.loads((folder / "a.criteria.json").read_text())["criteria"] == [c("Answers in one word", 3)]
    assert json.loads((folder / "b.criteria.json").read_text())["step"] == 6
    assert writes(source.backend().reply_fn) == before_writes + 1  # type: ignore[attr-defined]


def test_the_scorer_judges_each_criterion_and_completion_once_per_write(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import rlaif.backends.fake as fake
    from rlaif.rewards.load import load_rewards

    monkeypatch.setattr(fake, "_default_reply", lambda conversation, index, params: GOOD)
    [source] = load_rewards(["judge:auto"], judge=BackendConfig(engine="fake"), seed=0, verdict_retries=2,
                            out=str(tmp_path / "out"))
    backend = source.backend()
    asked: list[int] = []
    inner = backend.choice_logprobs
    monkeypatch.setattr(backend, "choice_logprobs", lambda convs, *a, **k: asked.append(len(convs)) or inner(convs, *a, **k))
    source(*batch(["a"], k=3))
    assert asked == [2 * 3]  # the spread check's scores are the reward's too: 2 criteria x 3 completions, once
    source.close()

