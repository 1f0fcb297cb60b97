"""`rlaif rubric calibrate --examples DIR/review/labels.jsonl`: reviewed items become a calibration set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlaif.backends as base
from rlaif.cli import main
from rlaif.io.review_files import append_label, write_items
from rlaif.judging.calibrate import read_examples
from rlaif.judging.rubrics import load_rubric
from test_review_report import answer, make_item
from test_rubric_cli import oracle


def reviewed(tmp_path: Path, person_right: bool) -> tuple[Path, int]:
    """A review of helpfulness's shipped examples: the person prefers the better (or worse) response on
    each; one extra tie and one skip, which calibration leaves out. Returns the labels path, decided items."""
    examples = load_rubric("helpfulness").examples
    items, labels = [], []
    for k, ex in enumerate(examples):
        item = make_item(k, show=(k % 2, 1 - k % 2))
        item["prompt"] = [{"role": "user", "content": ex.prompt}]
        item["responses"] = [ex.response_a, ex.response_b]
        items.append(item)
        better = 0 if ex.better == "a" else 1
        labels.append(answer(item, better if person_right else 1 - better))
    labels[0] = answer(items[0], None, kind="tie")
    labels.append(answer(items[1], None, reviewer="bob", kind="skip"))
    review = tmp_path / "run" / "review"
    write_items(review / "items.jsonl", items)
    for row in labels:
        append_label(review / "labels.jsonl", row)
    return review / "labels.jsonl", len(examples) - 1


@pytest.mark.parametrize("person_right", [True, False])
def test_calibrate_on_a_review(monkeypatch, tmp_path, capsys, person_right):
    monkeypatch.setattr(base, "load_backend", lambda cfg: oracle(True))
    labels, n = reviewed(tmp_path, person_right)
    examples = read_examples(labels)
    assert len(examples) == n and {ex.better for ex in examples} == {"a", "b"}  # shown order, not index order
    report = tmp_path / "r.json"
    assert main(["rubric", "calibrate", "helpfulness", "--examples", str(labels), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    agree = n if person_right else 0
    assert f"agreement with labels:  {agree}/{n} = {100 * agree // n}%" in out
    assert json.loads(report.read_text())["n"] == n


def test_labels_recognised_by_row_shape_and_need_their_items(tmp_path, capsys):
    labels, _ = reviewed(tmp_path, True)
    moved = tmp_path / "answers.jsonl"  # another name: recognised by its rows, but items.jsonl is not beside it
    moved.write_bytes(labels.read_bytes())
    assert main(["rubric", "calibrate", "helpfulness", "--examples", str(moved), "judge.engine=fake"]) == 2
    assert "need their items.jsonl beside them" in capsys.readouterr().err
