"""The likelihood and rules methods on the fake engine (no model): maths, conditioning, checks,
failures; their lint errors name file and line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlaif.backends.fake import FakeBackend
from rlaif.judging.judge import JudgeItem, judge_items, requests_for
from rlaif.judging.lint import lint_file
from rlaif.judging.rubrics import rubric_from_file
from rlaif.judging.rules import REFUSAL_PHRASES, Check, run_check, score_response
from rlaif.judging.templates import DATA_NOTE, RubricError

USER = [{"role": "user", "content": "What is the capital of Australia?"}]

LIKELIHOOD = """\
name: {name}
description: answers that a careful assistant would give
method: likelihood
system: You are a careful, factual assistant.
template: |
  {{{{ prompt }}}}
"""

RULES = """\
name: {name}
description: format rules
method: rules
checks:
  - kind: regex
    pattern: "(?i)canberra"
    weight: 3
  - kind: not_regex
    pattern: "(?i)sydney"
  - kind: words
    min: 2
    max: 12
  - kind: no_refusal
  - kind: ends_with_eos
    name: finished
"""


def write(tmp_path: Path, text: str, name: str = "mine", suffix: str = ".yaml") -> Path:
    path = tmp_path / f"{name}{suffix}"
    path.write_text(text.format(name=name) if suffix == ".yaml" else text)
    return path


# ------------------------------------------------------------------------------ likelihood
def test_likelihood_scores_exp_mean_logprob_after_the_rendered_instruction(tmp_path: Path) -> None:
    seen: list[tuple[list[dict], str]] = []
    per_token = {"Canberra.": [-0.1, -0.3], "Sydney, in Austria.": [-2.0, -1.0, -3.0], "": [-6.0]}

    def response_fn(conv, reply):
        seen.append((conv, reply))
        return per_token[reply]

    rubric = rubric_from_file(write(tmp_path, LIKELIHOOD))
    backend = FakeBackend(response_fn=response_fn)
    items = [JudgeItem("a", USER, ["Canberra.", "Sydney, in Austria.", ""])]
    row = judge_items(backend, rubric, items, progress=False)[0]
    assert backend.calls == 1  # one engine call for every candidate
    assert row["scores"] == [pytest.approx(math.exp(-0.2)), pytest.approx(math.exp(-2.0)),
                             pytest.approx(math.exp(-6.0))]
    assert row["details"][0] == {"mean_logprob": pytest.approx(-0.2), "tokens": 2}
    assert row["scale"] == [0, 1] and row["method"] == "likelihood" and row["failures"] == 0
    # the instruction: the rubric's system text and the prompt as plain text; no data note, no fences
    conv = seen[0][0]
    assert conv == [{"role": "system", "content": "You are a careful, factual assistant."},
                    {"role": "user", "content": USER[0]["content"]}]
    assert all(c == conv for c, _ in seen)  # every candidate of the item after the same instruction
    assert DATA_NOTE not in json.dumps(seen)
    json.dumps(row, allow_nan=False)


def test_likelihood_contrast_is_a_logistic_of_the_mean_pmi(tmp_path: Path) -> None:
    text = LIKELIHOOD + "contrast: true\ncontrast_template: 'Say something.'\n"
    rubric = rubric_from_file(write(tmp_path, text))

    def response_fn(conv, reply):  # a generic reply is as likely without the question
        conditioned = conv[-1]["content"] != "Say something."
        return {"Canberra.": [-0.5] if conditioned else [-3.0], "I like turtles.": [-1.0]}[reply]

    backend = FakeBackend(response_fn=response_fn)
    row = judge_items(backend, rubric, [JudgeItem("a", USER, ["Canberra.", "I like turtles."])], progress=False)[0]
    assert backend.calls == 1  # conditioned and neutral prefills in one call
    assert row["scores"][0] == pytest.approx(1 / (1 + math.exp(-2.5)))
    assert row["scores"][1] == pytest.approx(0.5)
    assert row["details"][0] == {"mean_logprob": -0.5, "tokens": 1, "mean_logprob_neutral": -3.0,
                                 "pmi": pytest.approx(2.5)}
    neutral = requests_for(rubric, JudgeItem("a", USER, ["x"]))[0].neutral
    assert neutral == [{"role": "user", "content": "Say something."}]
    default = rubric_from_file(write(tmp_path, LIKELIHOOD + "contrast: true\n", "plain"))
    assert requests_for(default, JudgeItem("a", USER, ["x"]))[0].neutral == [{"role": "user", "content": ""}]


def test_likelihood_bad_engine_output_is_a_counted_failure(tmp_path: Path) -> None:
    rubric = rubric_from_file(write(tmp_path, LIKELIHOOD))
    backend = FakeBackend(response_fn=lambda conv, reply: {"a": [], "b": [float("nan")], "c": [-1.0]}[reply])
    row = judge_items(backend, rubric, [JudgeItem("x", USER, ["a", "b", "c"])], progress=False)[0]
    assert row["scores"][:2] == [None, None] and row["scores"][2] == pytest.approx(math.exp(-1))
    assert row["failures"] == 2 and "no tokens" in row["details"][0]["error"]
    assert "non-finite" in row["details"][1]["error"]


# ------------------------------------------------------------------------------ rules
@pytest.mark.parametrize("check, response, finish, ntok, passed", [
    (Check("regex", pattern=r"\d+"), "it is 42", "stop", 3, True),
    (Check("regex", pattern=r"^\d+$"), "it is 42", "stop", 3, False),
    (Check("not_regex", pattern="(?i)as an ai"), "As an AI, I think", "stop", 5, False),
    (Check("words", min=2, max=3), "one two three", "stop", 3, True),
    (Check("words", max=2), "one two three", "stop", 3, False),
    (Check("words", min=1), "", "stop", 0, False),
    (Check("tokens", max=10), "x", "stop", 11, False),
    (Check("tokens", max=10), "x", "length", 10, True),
    (Check("tokens", max=10), "x", "unknown", 1, None),  # a user candidates file: no engine count
    (Check("json"), ' {"a": [1, 2]} \n', "stop", 5, True),
    (Check("json"), "```json\n{}\n```", "stop", 5, False),
    (Check("json_schema", schema={"type": "object", "required": ["a"]}), '{"a": 1}', "stop", 5, True),
    (Check("json_schema", schema={"type": "object", "required": ["a"]}), '{"b": 1}', "stop", 5, False),
    (Check("json_schema", schema={"type": "object"}), "not json", "stop", 5, False),
    (Check("no_refusal", phrases=list(REFUSAL_PHRASES)), "i'm sorry, but I can't.", "stop", 5, False),
    (Check("no_refusal", phrases=["nope"]), "I'm sorry, but no.", "stop", 5, True),
    (Check("ends_with_eos"), "done.", "stop", 2, True),
    (Check("ends_with_eos"), "cut off mid", "length", 3, False),
    (Check("ends_with_eos"), "who knows", "unknown", 2, None),
    (Check("ends_with_eos"), "who knows", None, None, None),
])
def test_each_check_kind(check: Check, response: str, finish: str | None, ntok: int | None,
                         passed: bool | None) -> None:
    out = run_check(check, response, finish, ntok)
    assert out.passed is passed, out.why
    assert out.kind == check.kind and out.why


def test_rules_score_is_the_weighted_share_of_passed_checks_and_needs_no_engine(tmp_path: Path) -> None:
    rubric = rubric_from_file(write(tmp_path, RULES))
    assert not rubric.needs_judge and [c.label for c in rubric.checks][-1] == "finished"
    items = [JudgeItem("a", USER, ["It is Canberra.", "Sydney is the capital of Australia, I believe.",
                                   "I'm sorry, but I cannot help with that request today."],
                       finish_reasons=["stop", "stop", "length"], num_tokens=[4, 9, 12]),
             JudgeItem("b", USER, ["Canberra"])]  # a user candidates file: no finish reasons
    rows = judge_items(None, rubric, items, progress=False)
    weights = [3, 1, 1, 1, 1]
    assert rows[0]["scores"][0] == pytest.approx(1.0)
    assert rows[0]["scores"][1] == pytest.approx((1 + 1 + 1) / sum(weights))  # words, no_refusal, finished
    assert rows[0]["scores"][2] == pytest.approx(2 / sum(weights))  # not_regex and words pass
    # the eos check is skipped, the rest are scored: regex, not_regex and no_refusal pass, words fails
    assert rows[1]["scores"][0] == pytest.approx((3 + 1 + 1) / 6)
    assert rows[1]["details"][0]["skipped"] == 1 and rows[1]["details"][0]["checks"][-1]["passed"] is None
    assert rows[0]["judge"] == "rules" and rows[0]["scale"] == [0, 1] and rows[0]["failures"] == 0
    detail = rows[0]["details"][2]["checks"][3]
    assert detail["check"] == "no_refusal" and detail["passed"] is False and "sorry" in detail["why"]
    json.dumps(rows, allow_nan=False)


def test_rules_all_checks_skipped_is_a_counted_failure(tmp_path: Path) -> None:
    text = "name: {name}\ndescription: d\nmethod: rules\nchecks:\n  - kind: ends_with_eos\n"
    rows = judge_items(None, rubric_from_file(write(tmp_path, text)), [JudgeItem("a", USER, ["x"])], progress=False)
    assert rows[0]["scores"] == [None] and rows[0]["failures"] == 1 and "skipped" in rows[0]["details"][0]["error"]


def test_rules_schema_file_beside_the_rubric(tmp_path: Path) -> None:
    write(tmp_path, json.dumps({"type": "object", "required": ["answer"]}), "answer.schema", ".json")
    text = "name: {name}\ndescription: d\nmethod: rules\nchecks:\n  - kind: json_schema\n    schema_file: answer.schema.json\n"
    rubric = rubric_from_file(write(tmp_path, text))
    assert score_response(rubric.checks, '{"answer": 4}')[0] == 1.0
    assert score_response(rubric.checks, '{"reply": 4}')[0] == 0.0
    assert [f for f in lint_file(tmp_path / "mine.yaml") if f.level == "error"] == []


def test_a_judge_rubric_without_an_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a judge engine"):
        judge_items(None, rubric_from_file(write(tmp_path, LIKELIHOOD)), [JudgeItem("a", USER, ["x"])])


# ------------------------------------------------------------------------------ lint
CHECKS_HEAD = "name: {name}\ndescription: d\nmethod: rules\nchecks:\n  - kind: words\n    max: 9\n"


@pytest.mark.parametrize("tail, line, needle", [
    ("  - kind: regexp\n    pattern: x\n", 7, "'regexp' is not one of"),
    ("  - kind: regex\n    pattern: 'a(b'\n", 8, "invalid regex: missing ), unterminated subpattern"),
    ("  - kind: not_regex\n", 7, "'pattern' is a required property"),
    ("  - kind: json_schema\n    schema: {{type: objekt}}\n", 8, "not a valid JSON Schema"),
    ("  - kind: json_schema\n    schema: {{properties: {{a: {{minLength: -1}}}}}}\n", 8, "not a valid JSON Schema"),
    ("  - kind: json_schema\n    schema_file: missing.json\n", 8, "not found"),
    ("  - kind: json_schema\n", 7, "give exactly one of 'schema' or 'schema_file'"),
    ("  - kind: json\n    weight: 0\n", 8, "less than or equal to the minimum of 0"),
    ("  - kind: json\n    weight: -2\n", 8, "less than or equal to the minimum of 0"),
    ("  - kind: json\n    weight: heavy\n", 8, "is not of type 'number'"),
    ("  - kind: words\n    min: 5\n    max: 2\n", 9, "min 5 > max 2"),
    ("  - kind: tokens\n", 7, "give 'min', 'max' or both"),
    ("  - kind: json\n    pattern: x\n", 8, "does not apply to a json check"),
    ("template: hi\n", 7, "rules rubrics have no template"),
    ("scale: {{1: a, 2: b}}\n", 7, "rules rubrics have no scale"),
])
def test_rules_lint_errors_name_file_and_line(tmp_path: Path, tail: str, line: int, needle: str) -> None:
    path = write(tmp_path, CHECKS_HEAD + tail)
    findings = [f for f in lint_file(path) if f.level == "error"]
    assert findings, "expected an error"
    assert findings[0].path == path and findings[0].line == line, str(findings[0])
    assert needle in findings[0].message, str(findings[0])
    with pytest.raises(RubricError, match=rf"mine\.yaml:{line}: "):
        rubric_from_file(path)


def test_schema_file_that_is_not_a_json_schema(tmp_path: Path) -> None:
    write(tmp_path, '{"type": 12}', "bad", ".json")
    path = write(tmp_path, CHECKS_HEAD + "  - kind: json_schema\n    schema_file: bad.json\n")
    (finding,) = lint_file(path)
    assert finding.line == 8 and "not a valid JSON Schema" in finding.message


@pytest.mark.parametrize("tail, needle", [
    ("assistant_prefix: 'Score: '\n", "assistant_prefix applies to logprob and pairwise"),
    ("checks:\n  - kind: json\n", "'checks' apply to the rules method only"),
    ("contrast_template: neutral\n", "contrast_template without contrast: true"),
    ("scale: {{1: a, 2: b}}\n", "likelihood rubrics have no scale"),
    ("contrast: true\ncontrast_template: '{{{{ respons }}}}'\n", "unknown template variable 'respons'"),
])
def test_likelihood_lint_errors(tmp_path: Path, tail: str, needle: str) -> None:
    findings = [f for f in lint_file(write(tmp_path, LIKELIHOOD + tail)) if f.level == "error"]
    assert findings and needle in findings[0].message and findings[0].line, [str(f) for f in findings]


def test_likelihood_and_rules_lint_clean(tmp_path: Path) -> None:
    for text, name in ((LIKELIHOOD + "contrast: true\n", "lik"), (LIKELIHOOD, "lik2"), (RULES, "rul")):
        findings = lint_file(write(tmp_path, text, name))
        assert [f.message.split(":")[0] for f in findings] == ["no calibration examples"], [str(f) for f in findings]


def test_rules_preview_shows_each_check_without_loading_a_model(tmp_path: Path, capsys, monkeypatch) -> None:
    import rlaif.backends

    from rlaif.cli import main

    monkeypatch.setattr(rlaif.backends, "load_backend", lambda cfg: pytest.fail("a rules preview loaded a model"))
    path = write(tmp_path, RULES)
    assert main(["rubric", "preview", str(path), "--prompt", "Capital of Australia?", "--response",
                 "I'm sorry, but it is Sydney.", "--response-b", "Canberra."]) == 0
    out = capsys.readouterr().out
    assert "response 0: score 0.167" in out and "response 1: score 0.833" in out  # eos skipped: 1/6, (3+1+1)/6
    assert "FAIL  no_refusal" in out and "skip  finished" in out and "pass  regex" in out
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"id": "x", "messages": USER, "responses": ["Canberra is it."],
                                 "finish_reasons": ["length"], "num_tokens": [4]}) + "\n")
    assert main(["rubric", "preview", str(path), "--from", str(cands)]) == 0
    assert "FAIL  finished" in capsys.readouterr().out  # the row's finish reason reached the check


@pytest.mark.parametrize("kind", ["regex", "not_regex"])
def test_catastrophic_regexes_finish_fast_and_a_timeout_is_a_failed_check(kind: str) -> None:
    """Backtracking regexes on untrusted text never stall a judge (issue 20, item 5): the issue's
    '^(\\w+\\s?)*\\.$' gets its true answer at once, and one that still backtracks gives up after the
    time limit and counts as failed, naming the check and the limit."""
    import time

    t0 = time.perf_counter()
    text = "an answer that goes on and on without end" + " x" * 4
    _, (outcome,) = score_response([Check(kind, name="dot", pattern=r"^(\w+\s?)*\.$")], text)
    assert outcome.passed is (kind == "not_regex") and outcome.why == "no match"
    score, (outcome,) = score_response([Check(kind, name="pairs", pattern=r"(a|aa)+$")], "a" * 40 + "b")
    assert time.perf_counter() - t0 < 10
    assert score == 0.0 and outcome.passed is False
    assert "'pairs'" in outcome.why and "timed out after 1s" in outcome.why
