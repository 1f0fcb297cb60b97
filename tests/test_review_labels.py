"""The review files: items.jsonl written atomically, labels.jsonl appended durably and read back."""

from __future__ import annotations

import json
import os

import pytest

from rlaif.errors import UserError
from rlaif.io import review_files as rf


def label(item="p1:0:1", reviewer="ann", answer="A", shown=(1, 0), **extra):
    shown = list(shown)
    preferred = {"A": shown[0], "B": shown[1]}.get(answer)
    return {"item": item, "reviewer": reviewer, "time": "2026-12-06T23:59:59Z", "shown": shown,
            "answer": answer, "preferred": preferred, "note": "", **extra}


def item(item_id="p1:0:1", **extra):
    return {"item": item_id, "prompt_id": "p1", "prompt": [{"role": "user", "content": "hi"}],
            "candidates": [0, 1], "responses": ["a", "b"],
            "judge": {"scores": [1.0, 0.0], "preferred": 0, "margin": 1.0, "rubric": "r", "judge": "m",
                      "reasons": {}, "flags": []},
            "in_dataset": True, "stratum": "all", "weight": 1.0, "show": [1, 0],
            "sample": {"strategy": "random", "seed": 0, "size": 1}, **extra}


def test_append_then_read_round_trips(tmp_path):
    path = tmp_path / "review" / "labels.jsonl"
    rf.append_label(path, label())
    rf.append_label(path, label(answer="tie"))
    rows = rf.read_labels(path)
    assert [r["answer"] for r in rows] == ["A", "tie"]
    assert rows[0]["preferred"] == 1 and rows[1]["preferred"] is None
    assert path.read_bytes().count(b"\n") == 2


def test_missing_labels_file_is_no_labels(tmp_path):
    assert rf.read_labels(tmp_path / "labels.jsonl") == []


@pytest.mark.parametrize("torn", [b'{"item": "p1:0:1", "revi', b'{"item": "p1:0:1", "revi\n'])
def test_torn_last_line_is_dropped_on_read_and_repaired_on_append(tmp_path, torn):
    path = tmp_path / "labels.jsonl"
    rf.append_label(path, label())
    with open(path, "ab") as fh:
        fh.write(torn)
    before = path.read_bytes()
    assert [r["answer"] for r in rf.read_labels(path)] == ["A"]
    assert path.read_bytes() == before  # reading never writes
    rf.append_label(path, label(answer="B"))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3  # the torn bytes are gone, both answers intact
    assert [r["answer"] for r in rf.read_labels(path)] == ["A", "B"]


def test_bad_row_in_the_middle_names_file_line_field(tmp_path):
    path = tmp_path / "labels.jsonl"
    rf.append_label(path, label())
    bad = label(answer="maybe")
    with open(path, "a") as fh:
        fh.write(json.dumps(bad) + "\n")
    rf.append_label(path, label())
    with pytest.raises(UserError, match=r"labels.jsonl:2: field 'answer'"):
        rf.read_labels(path)


def test_not_json_in_the_middle_is_an_error_not_dropped(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("{nope\n" + json.dumps(label()) + "\n")
    with pytest.raises(UserError, match=r"labels.jsonl:1: not valid JSON"):
        rf.read_labels(path)


@pytest.mark.parametrize(
    "change, field",
    [({"preferred": 0}, "preferred"), ({"shown": [0]}, "shown"), ({"reviewer": ""}, "reviewer"),
     ({"item": 3}, "item"), ({"note": 5}, "note")],
)
def test_append_refuses_an_invalid_row_and_writes_nothing(tmp_path, change, field):
    path = tmp_path / "labels.jsonl"
    with pytest.raises(UserError, match=f"field '{field}'"):
        rf.append_label(path, {**label(), **change})
    assert not path.exists()


def test_append_is_one_o_append_write_and_fsync(tmp_path, monkeypatch):
    calls = []
    real_open, real_write, real_fsync = os.open, os.write, os.fsync
    monkeypatch.setattr(os, "open", lambda p, flags, *a: calls.append(("open", flags)) or real_open(p, flags, *a))
    monkeypatch.setattr(os, "write", lambda fd, b: calls.append(("write", b)) or real_write(fd, b))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync",)) or real_fsync(fd))
    rf.append_label(tmp_path / "labels.jsonl", label())
    kinds = [c[0] for c in calls]
    assert kinds == ["open", "write", "fsync"]
    assert calls[0][1] & os.O_APPEND
    assert calls[1][1].endswith(b"\n") and calls[1][1].count(b"\n") == 1


def test_latest_labels_supersedes_per_reviewer_and_item():
    rows = [label(answer="A"), label(reviewer="bob", answer="B"), label(answer="tie"),
            label(item="p2:0:1", answer="skip")]
    latest = rf.latest_labels(rows)
    assert latest[("ann", "p1:0:1")]["answer"] == "tie"
    assert latest[("bob", "p1:0:1")]["answer"] == "B"
    assert latest[("ann", "p2:0:1")]["answer"] == "skip"
    assert len(latest) == 3


def test_items_round_trip_and_bad_item_names_line(tmp_path):
    path = tmp_path / "items.jsonl"
    rf.write_items(path, [item(), item("p1:0:2", candidates=[0, 2], show=[0, 2])])
    assert [r["item"] for r in rf.read_items(path)] == ["p1:0:1", "p1:0:2"]
    path.write_text(json.dumps(item()) + "\n" + json.dumps(item("x", responses=["only one"])) + "\n")
    with pytest.raises(UserError, match=r"items.jsonl:2: field 'responses'"):
        rf.read_items(path)
    path.write_text(json.dumps(item()) + "\n" + json.dumps(item()) + "\n")
    with pytest.raises(UserError, match=r"items.jsonl:2: field 'item'.*twice"):
        rf.read_items(path)
