"""Pure reply parsers on recorded judge replies (tests/assets/judge_replies), good and malformed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlaif.judging.rubrics import load_rubric
from rlaif.judging.verdicts import expected_score, json_objects, pairwise_probability, parse_verdict, softmax_over

REPLIES = Path(__file__).parent / "assets" / "judge_replies"
CASES = json.loads((REPLIES / "cases.json").read_text())
SCHEMA = load_rubric("truthfulness").verdict_schema


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_recorded_replies(case: dict) -> None:
    text = (REPLIES / case["file"]).read_text()
    parsed = parse_verdict(text, SCHEMA, "score", [1, 2, 3, 4, 5], case.get("finish_reason", "stop"))
    if "score" in case:
        assert parsed.error is None, parsed.error
        assert parsed.score == case["score"]
        assert parsed.verdict is not None and parsed.verdict["score"] == case["score"]
        assert case.get("rationale", "") in parsed.rationale
        assert parsed.rationale  # from the verdict field or the prose before it
    else:
        assert parsed.score is None and parsed.verdict is None
        assert case["error"] in parsed.error
        assert parsed.rationale == text.strip()  # the raw reply is kept for the row


# What the embedded 135M judge really wrote: prose loops and an echoed schema, never a verdict.
REAL_ERRORS = {
    "real_truthfulness_0.txt": "no JSON object in the reply",
    "real_truthfulness_1.txt": "no JSON object in the reply",
    "real_truthfulness_2.txt": "no JSON object in the reply",
    "real_truthfulness_3.txt": "verdict does not match the schema: 'rationale' is a required property",
}


def test_recorded_real_replies_fail_cleanly() -> None:
    """Replies recorded from the embedded judge: each yields its one-line error, raw text kept."""
    assert sorted(p.name for p in REPLIES.glob("real_*.txt")) == sorted(REAL_ERRORS)
    for name, error in REAL_ERRORS.items():
        text = (REPLIES / name).read_text()
        parsed = parse_verdict(text, SCHEMA, "score", [1, 2, 3, 4, 5])
        assert parsed.score is None and parsed.verdict is None
        assert parsed.error == error
        assert parsed.rationale == text.strip()


def test_out_of_scale_without_schema_bounds() -> None:
    schema = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}
    assert "outside the scale [1, 5]" in parse_verdict('{"score": 7}', schema, "score", [1, 2, 3, 4, 5]).error
    assert parse_verdict('{"score": 3.5}', schema, "score", [1, 2, 3, 4, 5]).score == 3.5
    assert "not of type 'number'" in parse_verdict('{"score": true}', schema, "score", [1, 2, 3, 4, 5]).error
    no_type = {"type": "object", "required": ["score"]}
    assert "not a number" in parse_verdict('{"score": "4"}', no_type, "score", [1, 2, 3, 4, 5]).error
    prose = parse_verdict('Every claim is right.\n{"score": 5}', schema, "score", [1, 2, 3, 4, 5])
    assert prose.score == 5 and prose.rationale == "Every claim is right."


def test_json_objects_finds_nested_and_skips_broken() -> None:
    text = 'x {bad json} then {"a": {"b": 1}} and ```json\n{"c": 2}\n```'
    assert json_objects(text) == [{"c": 2}, {"a": {"b": 1}}]


def test_expected_score_is_geval_weighted_mean() -> None:
    probs = {"1": 0.1, "2": 0.1, "3": 0.2, "4": 0.3, "5": 0.1}  # mass 0.8, rest on other tokens
    score, dist, mass = expected_score({k: math.log(p) for k, p in probs.items()}, [1, 2, 3, 4, 5])
    assert mass == pytest.approx(0.8)
    assert dist["4"] == pytest.approx(0.3 / 0.8)
    assert score == pytest.approx(sum(int(k) * p for k, p in probs.items()) / 0.8)


def test_expected_score_missing_tokens_and_all_missing() -> None:
    score, dist, _ = expected_score({"5": math.log(0.5), "1": -math.inf}, [1, 2, 3, 4, 5])
    assert score == 5 and dist["1"] == 0 and dist["3"] == 0
    with pytest.raises(ValueError, match="no probability"):
        expected_score({"1": -math.inf}, [1, 2])


def test_softmax_is_stable_for_tiny_logprobs() -> None:
    dist, mass = softmax_over({"A": -1000.0, "B": -1001.0}, ["A", "B"])
    assert dist["A"] == pytest.approx(1 / (1 + math.exp(-1)))
    assert mass == pytest.approx(0.0)


def test_pairwise_probability() -> None:
    assert pairwise_probability({"A": math.log(0.6), "B": math.log(0.2)}, "A", "B") == pytest.approx(0.75)


def test_verdict_schema_caps_string_fields_to_fit_max_tokens(tiny_tokenizer_dir: str) -> None:
    """The loaded schema caps the rationale so a verdict written to the cap closes within
    max_tokens, counted with a small-vocabulary tokenizer (many tokens per character)."""
    from transformers import AutoTokenizer

    from rlaif.judging.methods.verdict import capped_verdict_schema, verdict_char_budget

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    raw = {"type": "object", "required": ["rationale", "score"], "additionalProperties": False,
           "properties": {"rationale": {"type": "string", "maxLength": 800},
                          "score": {"type": "integer", "minimum": 1, "maximum": 5}}}
    sentence = "The response names Sydney, but the capital of Australia is Canberra (since 1913). "
    for max_tokens in (48, 128, 256, 1024):
        capped = capped_verdict_schema(raw, max_tokens)
        cap = capped["properties"]["rationale"]["maxLength"]
        assert cap == min(800, verdict_char_budget(raw, max_tokens)) and raw["properties"]["rationale"]["maxLength"] == 800
        verdict = json.dumps({"rationale": (sentence * 40)[:cap], "score": 5}, separators=(",", ":"))
        assert len(tok.encode(verdict, add_special_tokens=False)) <= max_tokens, (max_tokens, cap)
    assert capped_verdict_schema(raw, 1024)["properties"]["rationale"]["maxLength"] == 800  # a smaller cap stays
    assert SCHEMA["properties"]["rationale"]["maxLength"] < 800  # the shipped verdict rubric is capped on load
    text = (REPLIES / "malformed_rationale_too_long.txt").read_text()
    assert parse_verdict(text, raw, "score", [1, 2, 3, 4, 5]).error is None  # fitted the uncapped schema
