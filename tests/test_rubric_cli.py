"""`rlaif rubric lint | preview | calibrate` exit codes and output (scripted fake judge)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import rlaif.backends as base
from rlaif.backends.fake import FakeBackend
from rlaif.cli import main
from rlaif.judging.rubrics import SHIPPED_RUBRICS, load_rubric


def test_lint_shipped_rubrics_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rubric", "lint"]) == 0
    assert " 0 error(s)" in capsys.readouterr().err


def test_lint_broken_rubric_exit_1_with_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((SHIPPED_RUBRICS / "honesty.yaml").read_text().replace("name: honesty", "name: broken")
                      .replace("{{ response }}", "{{ responce }}"))
    assert main(["rubric", "lint", str(broken), str(SHIPPED_RUBRICS / "honesty.yaml")]) == 1
    out = capsys.readouterr().out
    line = next(n for n, t in enumerate(broken.read_text().splitlines(), 1) if "responce" in t)
    assert f"{broken}:{line}: unknown template variable 'responce'" in out
    assert "honesty.yaml" not in out  # the good file has no findings
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: binary\ndescription: \xff\n")
    assert main(["rubric", "lint", str(binary)]) == 2
    assert f"{binary}:2: not UTF-8 text" in capsys.readouterr().err


def test_lint_accepts_overrides_beside_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rubric", "lint", "helpfulness", "judge.engine=fake"]) == 0
    assert main(["rubric", "lint", "helpfulness", "judge.nope=1"]) == 2
    assert "unknown option 'judge.nope'" in capsys.readouterr().err


def oracle(prefer_better: bool) -> FakeBackend:
    """A judge that knows which shipped-example responses are the better ones (or the opposite)."""
    good, bad = set(), set()
    for path in SHIPPED_RUBRICS.glob("*.yaml"):
        for ex in load_rubric(path).examples:
            (good if ex.better == "a" else bad).add(ex.response_a.strip())
            (bad if ex.better == "a" else good).add(ex.response_b.strip())
    if not prefer_better:
        good, bad = bad, good

    def quality(text: str) -> float:
        return 1.0 if text.strip() in good else -1.0

    def section(text: str, label: str) -> str:
        return text.split(f"<<<{label}>>>\n", 1)[1].split(f"\n<<<END {label}>>>", 1)[0]

    def logprob_fn(conv, choices, prefix):
        text = conv[-1]["content"]
        if "<<<RESPONSE A>>>" in text:
            d = quality(section(text, "RESPONSE A")) - quality(section(text, "RESPONSE B"))
            p = 1 / (1 + math.exp(-d))
            return {"A": math.log(p), "B": math.log(1 - p)}
        top = "5" if quality(section(text, "RESPONSE")) > 0 else "1"
        return {c: (math.log(0.9) if c == top else math.log(0.025)) for c in choices}

    def reply_fn(conv, k, params):
        score = 5 if quality(section(conv[1]["content"], "RESPONSE")) > 0 else 1
        return f'{{"rationale": "oracle", "score": {score}}}'

    return FakeBackend(reply_fn=reply_fn, logprob_fn=logprob_fn)


@pytest.mark.parametrize("rubric", ["helpfulness", "truthfulness", "overall_preference"])
def test_calibrate_min_agreement_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            rubric: str) -> None:
    monkeypatch.setattr(base, "load_backend", lambda cfg: oracle(True))
    assert main(["rubric", "calibrate", rubric, "--min-agreement", "0.9"]) == 0
    out = capsys.readouterr().out
    n = len(load_rubric(rubric).examples)
    assert f"agreement with labels:  {n}/{n} = 100%" in out and "WARNING" not in out
    assert ("position consistency:   100%" in out) == (rubric == "overall_preference")
    monkeypatch.setattr(base, "load_backend", lambda cfg: oracle(False))
    assert main(["rubric", "calibrate", rubric, "--min-agreement", "0.9"]) == 1
    captured = capsys.readouterr()
    assert f"0/{n} = 0%" in captured.out and "WARNING: agreement 0% is low" in captured.out
    assert "worst disagreements (3 of" in captured.out
    assert "below --min-agreement 0.9" in captured.err


def test_calibrate_examples_file_and_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(base, "load_backend", lambda cfg: oracle(True))
    ex = load_rubric("helpfulness").examples[0]
    good = tmp_path / "ex.jsonl"
    good.write_text(f'{{"prompt": "{ex.prompt}", "response_a": "{ex.response_a}", "response_b": "{ex.response_b}", '
                    f'"better": "{ex.better}"}}\n')
    assert main(["rubric", "calibrate", "helpfulness", "--examples", str(good), "--json", str(tmp_path / "r.json")]) == 0
    assert "1/1 = 100%" in capsys.readouterr().out
    assert '"agreement": 1.0' in (tmp_path / "r.json").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- prompt: hi\n  response_a: a\n  response_b: b\n  better: a\n- prompt: hi\n  response_a: a\n"
                   "  response_b: b\n  better: c\n")
    assert main(["rubric", "calibrate", "helpfulness", "--examples", str(bad)]) == 2
    assert f"{bad}:5: field 'better': 'c' is not one of" in capsys.readouterr().err


def test_preview_logprob_and_pairwise(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(base, "load_backend", lambda cfg: oracle(True))
    assert main(["rubric", "preview", "helpfulness", "--prompt", "What is the capital of Australia?",
                 "--response", "The capital of Australia is Canberra.", "judge.engine=fake"]) == 0
    out = capsys.readouterr().out
    assert "<<<RESPONSE>>>\nThe capital of Australia is Canberra.\n<<<END RESPONSE>>>" in out
    assert "expected score 4.7" in out and "  5: 0.900" in out
    assert main(["rubric", "preview", "overall_preference", "--prompt", "Capital of Canada?", "--response", "Toronto.",
                 "--response-b", "Ottawa."]) == 0
    out = capsys.readouterr().out
    assert "order 1 (A=0, B=1)" in out and "order 2 (A=1, B=0)" in out and "position-consistent: yes" in out
    assert main(["rubric", "preview", "overall_preference", "--prompt", "x", "--response", "y"]) == 2
    assert "give --response-b" in capsys.readouterr().err


def test_preview_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(base, "load_backend", lambda cfg: oracle(True))
    cands = tmp_path / "candidates.jsonl"
    cands.write_text('{"id": "p1", "prompt": "hi", "responses": ["a", "b"]}\n'
                     '{"id": "p2", "messages": [{"role": "user", "content": "How many legs does a spider have?"}], '
                     '"responses": ["Eight; spiders are arachnids, not insects."]}\nnot json\n')
    assert main(["rubric", "preview", "truthfulness", "--from", str(cands), "--row", "2"]) == 0
    out = capsys.readouterr().out
    assert "How many legs" in out and "score 5.0 after 1 attempt(s)" in out and '"rationale": "oracle"' in out
    assert main(["rubric", "preview", "truthfulness", "--from", str(cands), "--row", "3"]) == 2
    assert f"{cands}:3: malformed JSON" in capsys.readouterr().err
    assert main(["rubric", "preview", "truthfulness", "--from", str(cands), "--row", "9"]) == 2
    assert f"{cands}:3: malformed JSON" in capsys.readouterr().err  # rows before 9 are read too
    cands.write_text(cands.read_text().replace("not json\n", "\n[1]\n"))
    assert main(["rubric", "preview", "truthfulness", "--from", str(cands), "--row", "3"]) == 2
    assert f"{cands}: --row 3: no JSON on that line" in capsys.readouterr().err
    assert main(["rubric", "preview", "truthfulness", "--from", str(cands), "--row", "4"]) == 2
    assert f"{cands}:4: expected a JSON object" in capsys.readouterr().err


def test_verdict_retries_reach_the_judge(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    replies: list[int] = []

    def reply_fn(conv, k, params):  # never a valid verdict: one ask plus verdict_retries re-asks
        replies.append(len(conv))
        return "no verdict here"

    monkeypatch.setattr(base, "load_backend", lambda cfg: FakeBackend(reply_fn=reply_fn))
    args = ["rubric", "preview", "truthfulness", "--prompt", "q", "--response", "r"]
    assert main(args + ["verdict_retries=3"]) == 0
    assert replies == [2, 4, 4, 4] and "FAILED after 4 attempt(s)" in capsys.readouterr().out
    assert main(args + ["verdict_retries=-1"]) == 2
    assert "option 'verdict_retries': must be >= 0, got -1" in capsys.readouterr().err
    assert main(args + ["max_retries=1"]) == 2  # the old name is gone


def test_calibrate_triples_with_fault_kinds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--examples takes labelled-set rows (prompt, better, worse, fault) and prints a per-fault table."""
    monkeypatch.setattr(base, "load_backend", lambda cfg: oracle(True))
    rows = [{"prompt": ex.prompt, "better": ex.response_a if ex.better == "a" else ex.response_b,
             "worse": ex.response_b if ex.better == "a" else ex.response_a, "fault": kind}
            for kind, name in (("wrong", "helpfulness"), ("unsafe", "harmlessness"))
            for ex in load_rubric(name).examples[:3]]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "r.json"
    assert main(["rubric", "calibrate", "helpfulness", "--examples", str(path), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "per fault kind:" in out and "6/6 = 100%" in out
    assert [line.split()[:2] for line in out.splitlines() if line.strip().startswith(("wrong", "unsafe"))] == \
        [["wrong", "3"], ["unsafe", "3"]]
    assert json.loads(report.read_text())["by_fault"]["unsafe"] == \
        {"n": 3, "agreement": 1.0, "position_consistency": None}
    path.write_text(json.dumps({"prompt": "p", "better": "x", "worse": "y", "fault": 3}) + "\n")
    assert main(["rubric", "calibrate", "helpfulness", "--examples", str(path)]) == 2
    assert f"{path}:1: field 'fault': expected a string" in capsys.readouterr().err


def test_calibrate_rules_rubric_loads_no_model(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def no_engine(cfg):
        raise AssertionError("a rules rubric must not load a judge engine")

    monkeypatch.setattr(base, "load_backend", no_engine)
    assert main(["rubric", "calibrate", "answer_checks"]) == 0
    out = capsys.readouterr().out
    n = len(load_rubric("answer_checks").examples)
    assert "judge rules (no judge model)" in out and f"{n}/{n} = 100%" in out
