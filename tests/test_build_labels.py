"""`rlaif build/run --labels`: people's verdicts override the judge's, counted in manifest and card."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.dataset.labels import DROP, read_verdicts
from rlaif.dataset.options import BuildOptions
from rlaif.dataset.pairs import build_pairs
from rlaif.errors import UserError
from rlaif.io.records import PAIR_SCHEMA, read_jsonl, validate
from rlaif.io.outdir import claim
from rlaif.io.review_files import append_label
from test_pipeline import FAKE, small_prompts
from test_preferences import cand, judg


def label(item: str, preferred: int | None, reviewer: str = "ann", answer: str | None = None) -> dict:
    i, j = (int(x) for x in item.rsplit(":", 2)[1:])
    answer = answer or ("A" if preferred == i else "B")  # shown in candidate order
    return {"item": item, "reviewer": reviewer, "time": "2026-12-06T00:00:00Z", "shown": [i, j], "answer": answer,
            "preferred": preferred if answer in ("A", "B") else None, "note": ""}


def test_verdicts_flip_drop_add_and_agree_on_pairs():
    cands = [cand("x", ["r0", "r1", "r2"]), cand("y", ["s0", "s1"]), cand("z", ["t0", "t1"]), cand("w", ["u0", "u1"])]
    judgements = [judg("x", "h", [5, 1, 3]), judg("y", "h", [5, 1]), judg("z", "h", [3, 3]), judg("w", "h", [4, 2])]
    # x: judge pair r0 > r1; person reverses it and adds r2 > r0 (the judge never formed it)
    # y: person calls it a tie -> dropped; z: judge tied (no pair), person prefers t1 -> added; w: agreed
    verdicts = {"x": {(0, 1): 1, (0, 2): 2}, "y": {(0, 1): DROP}, "z": {(0, 1): 1}, "w": {(0, 1): 0}}
    pairs, stats = build_pairs(cands, judgements, ["h"], BuildOptions(), verdicts)
    got = [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"], p.get("label_source")) for p in pairs]
    assert got == [("x", "r1", "r0", "person"), ("x", "r2", "r0", "person"), ("z", "t1", "t0", "person"),
                   ("w", "u0", "u1", "person")]
    assert (stats["review_flipped"], stats["review_added"], stats["review_dropped"], stats["review_agreed"]) == (1, 2, 1, 1)
    # judge-vs-person on decided items with unequal scores: x(0,1) no, x(0,2) no, z tied (left out), w yes
    assert (stats["review_judge_decided"], stats["review_judge_agrees"]) == (3, 1)
    assert [p["margin"] for p in pairs] == [0.0, 0.0, 0.0, 0.5]  # judge's margin the person's way, floored at 0
    for p in pairs:
        validate(p, PAIR_SCHEMA)
    plain, _ = build_pairs(cands, judgements, ["h"], BuildOptions())
    assert all("label_source" not in p for p in plain) and len(plain) == 3


def test_majority_of_reviewers_and_disagreement(tmp_path):
    path = tmp_path / "labels.jsonl"
    cands = [cand("a:b", ["r0", "r1"]), cand("y", ["s0", "s1"]), cand("z", ["t0", "t1"])]
    for row in [label("a:b:0:1", 1, "ann"), label("a:b:0:1", 1, "bob"), label("a:b:0:1", 0, "cy"),  # 2 of 3: 1
                label("y:0:1", 0, "ann"), label("y:0:1", 1, "bob"),  # 1-1: reviewers disagree
                label("z:0:1", None, "ann", "skip"), label("z:0:1", 1, "bob"), label("z:0:1", None, "bob", "skip")]:
        append_label(path, row)
    v = read_verdicts(path, cands)
    assert v.by_prompt == {"a:b": {(0, 1): 1}}  # prompt ids may hold ':'; bob's later skip replaced his B
    assert v.counts["disagreements"] == 1 and v.counts["skipped"] == 1 and v.reviewers == ["ann", "bob", "cy"]


def test_label_on_a_pair_outside_the_run_names_file_and_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    append_label(path, label("x:0:1", 0))
    append_label(path, label("x:0:5", 0))
    with pytest.raises(UserError, match=r"labels.jsonl:2: field 'item': 'x:0:5' is not a pair of this run"):
        read_verdicts(path, [cand("x", ["r0", "r1"])])
    with pytest.raises(UserError, match=r"labels.jsonl:1: field 'item'"):
        read_verdicts(path, [cand("other", ["r0", "r1"])])


def _indices(candidates: dict, pair: dict) -> tuple[int, int]:
    responses = candidates[pair["id"]]["responses"]
    return responses.index(pair["chosen"][0]["content"]), responses.index(pair["rejected"][0]["content"])


def test_build_with_labels_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--prompts", str(small_prompts(tmp_path, 6)), "--rubric", "helpfulness", "--out", str(out),
                 *FAKE, "test_fraction=0"]) == 0
    candidates = {c["id"]: c for c in read_jsonl(out / "candidates.jsonl")}
    judge_pairs = read_jsonl(out / "preferences" / "train.jsonl")
    assert len(judge_pairs) >= 2
    (c0, r0), (c1, r1) = _indices(candidates, judge_pairs[0]), _indices(candidates, judge_pairs[1])
    labels = out / "review" / "labels.jsonl"
    claim(out, "review")  # as `rlaif review` does: the run's marker lists review/, so builds without --labels accept it
    item = lambda pair, a, b: f"{pair['id']}:{min(a, b)}:{max(a, b)}"  # noqa: E731
    append_label(labels, label(item(judge_pairs[0], c0, r0), r0))  # the person reverses the judge
    append_label(labels, label(item(judge_pairs[1], c1, r1), None, answer="both_bad"))

    build = ["build", "--judgements", str(out / "judgements.jsonl"), "--out", str(out), "progress=false",
             "test_fraction=0", "--labels", str(labels)]
    assert main(build) == 0
    pairs = read_jsonl(out / "preferences" / "train.jsonl")
    assert len(pairs) == len(judge_pairs) - 1
    flipped = [p for p in pairs if p.get("label_source") == "person"]
    assert len(flipped) == 1 and flipped[0]["chosen"] == judge_pairs[0]["rejected"]
    review = json.loads((out / "manifest.json").read_text())["stages"]["build"]["review"]
    assert (review["reviewed_pairs"], review["flipped"], review["dropped"], review["added"]) == (1, 1, 1, 0)
    assert review["agreement"] == 0.0 and review["judge_decided"] == 1 and review["interval"][0] == 0.0
    card = (out / "README.md").read_text()
    assert "1 pairs reviewed by people" in card and "agreement 0.00 [0.00, 0.79]" in card

    capsys.readouterr()
    assert main(build) == 0  # same labels: skipped
    assert "already done" in capsys.readouterr().err
    append_label(labels, label(item(judge_pairs[0], c0, r0), c0, reviewer="ann"))  # ann changes her mind
    assert main(build) == 0  # new labels: rebuilt
    review = json.loads((out / "manifest.json").read_text())["stages"]["build"]["review"]
    assert (review["agreed"], review["flipped"], review["agreement"]) == (1, 0, 1.0)
    assert [p["chosen"] for p in read_jsonl(out / "preferences" / "train.jsonl")][0] == judge_pairs[0]["chosen"]

    assert main(build[:-2]) == 0  # without labels: the judge's pairs again, no review record
    assert read_jsonl(out / "preferences" / "train.jsonl") == judge_pairs
    assert "review" not in json.loads((out / "manifest.json").read_text())["stages"]["build"]
    assert main(["run", "--prompts", str(small_prompts(tmp_path, 6)), "--rubric", "helpfulness", "--out", str(out),
                 *FAKE, "test_fraction=0", "--labels", str(labels)]) == 0  # run: generate, judge skipped
    review = json.loads((out / "manifest.json").read_text())["stages"]["build"]["review"]
    assert (review["agreed"], review["dropped"]) == (1, 1)


def test_bad_labels_file_one_line_exit_2_outputs_intact(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--prompts", str(small_prompts(tmp_path, 3)), "--rubric", "helpfulness", "--out", str(out),
                 *FAKE]) == 0
    before = (out / "preferences" / "train.jsonl").read_bytes()
    labels = tmp_path / "labels.jsonl"
    append_label(labels, label("nope:0:1", 0))
    capsys.readouterr()
    assert main(["build", "--judgements", str(out / "judgements.jsonl"), "--out", str(out), "--labels",
                 str(labels)]) == 2
    err = capsys.readouterr().err
    assert "labels.jsonl:1: field 'item'" in err and err.count("\n") == 1
    assert main(["run", "--prompts", str(small_prompts(tmp_path, 3)), "--rubric", "helpfulness", "--out", str(out),
                 *FAKE, "--labels", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    assert (out / "preferences" / "train.jsonl").read_bytes() == before
