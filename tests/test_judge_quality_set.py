"""The labelled judge set (bench/data/judge_pairs.jsonl) and calibration per fault kind (fake judge)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from rlaif.backends.fake import FakeBackend
from rlaif.judging.calibrate import calibrate, fault_kinds, format_report, read_examples
from rlaif.judging.rubrics import SHIPPED_RUBRICS, CalibrationExample, load_rubric

SET = Path(__file__).resolve().parents[1] / "bench" / "data" / "judge_pairs.jsonl"


def rows() -> list[dict]:
    return [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines() if line.strip()]


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_set_is_well_formed_and_balanced() -> None:
    data = rows()
    assert len(data) >= 80
    assert all(set(r) == {"id", "prompt", "better", "worse", "fault"} for r in data)
    assert len({r["id"] for r in data}) == len(data)
    assert all(r["prompt"].strip() and r["better"].strip() and r["better"] != r["worse"] for r in data)
    kinds = Counter(r["fault"] for r in data)
    assert len(kinds) >= 8
    assert min(kinds.values()) >= 8 and max(kinds.values()) <= 12, kinds  # balanced, ~10 each
    assert len({norm(r["prompt"]) for r in data}) == len(data)  # no prompt twice


def test_set_shares_nothing_with_rubric_examples() -> None:
    shipped: set[str] = set()
    for path in SHIPPED_RUBRICS.glob("*.yaml"):
        for ex in load_rubric(path).examples:
            shipped |= {norm(ex.prompt), norm(ex.response_a), norm(ex.response_b)}
    shipped.discard("")
    used = {norm(r[k]) for r in rows() for k in ("prompt", "better", "worse")}
    assert not used & shipped


def test_read_examples_alternates_positions_and_keeps_fault() -> None:
    exs = read_examples(SET)
    assert [e.better for e in exs[:4]] == ["a", "b", "a", "b"]
    first = rows()[1]
    assert (exs[1].response_b, exs[1].response_a, exs[1].fault) == (first["better"], first["worse"], first["fault"])
    assert fault_kinds(exs) == [r["fault"] for r in rows()]


def test_fault_kinds_from_repeated_notes_only() -> None:
    ex = lambda note: CalibrationExample("p", "a", "b", "a", note=note)  # noqa: E731
    assert fault_kinds([ex("x"), ex("x"), ex("y"), ex("y")]) == ["x", "x", "y", "y"]
    assert fault_kinds([ex("x"), ex("y"), ex("z"), ex("x")]) is None  # free-text notes: no table
    assert fault_kinds([ex(""), ex("")]) is None


def scripted_judge(wrong_kind: str) -> FakeBackend:
    """Scores the set's better responses 5 and worse 1, except on ``wrong_kind`` where it is reversed."""
    quality = {}
    for r in rows():
        flip = r["fault"] == wrong_kind
        quality[r["better"].strip()], quality[r["worse"].strip()] = (not flip), flip

    def logprob_fn(conv, choices, prefix):
        text = conv[-1]["content"].split("<<<RESPONSE>>>\n", 1)[1].split("\n<<<END RESPONSE>>>", 1)[0]
        top = "5" if quality[text.strip()] else "1"
        return {c: math.log(0.9 if c == top else 0.025) for c in choices}

    return FakeBackend(logprob_fn=logprob_fn)


def test_calibrate_reports_per_fault_kind() -> None:
    report = calibrate(scripted_judge("gibberish"), load_rubric("helpfulness"), read_examples(SET), progress=False)
    faults = report.by_fault()
    n_gib = sum(r["fault"] == "gibberish" for r in rows())
    assert faults["gibberish"].agreement == 0.0 and faults["gibberish"].n == n_gib
    assert all(sub.agreement == 1.0 for kind, sub in faults.items() if kind != "gibberish")
    assert report.agreement == pytest.approx(1 - n_gib / len(rows()))
    text = format_report(report)
    assert "per fault kind:" in text
    line = next(t for t in text.splitlines() if t.strip().startswith("gibberish"))
    assert f"0/{n_gib}" in line and "0%" in line
    assert report.metrics()["by_fault"]["wrong_fact"]["agreement"] == 1.0


def test_position_biased_pairwise_judge_gets_half() -> None:
    """A judge that always answers A agrees on the rows where the better one is shown first."""
    exs = read_examples(SET)
    always_a = FakeBackend(logprob_fn=lambda conv, choices, prefix: {"A": math.log(0.9), "B": math.log(0.1)})
    report = calibrate(always_a, load_rubric("overall_preference"), exs, progress=False)
    assert report.first_order_agreement == pytest.approx(sum(e.better == "a" for e in exs) / len(exs))
    assert report.position_consistency == 0.0 and report.agreement == 0.0  # p = 0.5 exactly: a tie
