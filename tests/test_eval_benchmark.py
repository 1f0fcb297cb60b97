"""`rlaif eval --benchmark`: checkers, intervals by hand, the paired difference, bad input, the CLI end to end
(candidates files and the fake engine), and the shipped set kept apart from rubric examples and demo prompts."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from rlaif.cli import main
from rlaif.errors import UserError
from rlaif.eval.benchmark_check import (Checkers, check_exact, check_number, check_regex, last_number, normalise,
                                        read_benchmark)
from rlaif.eval.benchmark_stats import paired_difference, wilson
from rlaif.shipped import shipped_dir

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# ----------------------------------------------------------------------------- checkers
def test_exact_match_normalises_case_punctuation_articles_and_whitespace():
    assert normalise("  The  Eiffel-Tower, in PARIS!  ") == "eiffeltower in paris"
    assert check_exact("The Pacific.", ["Pacific"]) and check_exact("an apple", ["Apple"])
    assert check_exact("Paris", ["Lyon", "paris"])  # any of a list
    assert not check_exact("Paris is the capital.", ["Paris"])  # exact: the whole response
    assert not check_exact("theatre", ["atre"]) and check_exact("Theatre", ["theatre"])  # articles as words only
    assert not check_exact("", ["a"]) or normalise("a") == ""  # "a" alone is an article: both sides empty
    assert check_exact("12", [12])


def test_number_takes_the_last_number_within_tolerance():
    assert last_number("Between 3 and 4, the answer is -1,234.5 units") == -1234.5
    assert last_number("3e8 m/s") == 3e8 and last_number("no digits") is None and last_number("It is 12.") == 12 and last_number(".5 kg") == 0.5
    assert check_number("7 + 5 = 12.", [12.0], (1e-6, 0.0))
    assert not check_number("12 or 13", [12.0], (1e-6, 0.0))  # the last number counts
    assert check_number("about 16.2 km", [16.09], (0.0, 0.02)) and not check_number("17", [16.09], (0.0, 0.02))
    assert check_number("211.6", [212.0], (0.5, 0.0)) and not check_number("211", [212.0], (0.5, 0.0))
    assert not check_number("twelve", [12.0], (1.0, 0.0))


def test_regex_searches_with_a_time_limit():
    assert check_regex("Answer: YES", [r"(?i)\byes\b"]) and not check_regex("no", [r"^yes$"])
    started = time.perf_counter()
    assert not check_regex("a" * 40 + "!", [r"^(a+)+$"])  # catastrophic backtracking: wrong, not stuck
    assert time.perf_counter() - started < 10


def test_python_checker_is_loaded_like_python_rewards_and_its_errors_name_the_row(tmp_path):
    code = tmp_path / "chk.py"
    code.write_text("def starts(response, answer, row):\n    return response.startswith(answer)\n\n"
                    "def boom(response, answer, row):\n    raise ValueError('bad ' + response)\n")
    bench = write_rows(tmp_path / "b.jsonl", [{"prompt": "p1", "answer": "ok", "check": f"python:{code}:starts"},
                                              {"prompt": "p2", "answer": "ok", "check": f"python:{code}:boom"}])
    items = read_benchmark(bench)
    checkers = Checkers(items)
    assert checkers(items[0], "ok then") and not checkers(items[0], "not ok")
    with pytest.raises(UserError, match=rf"b.jsonl:2: field 'check': python:.*raised ValueError: bad x \(.*chk.py:5\)"):
        checkers(items[1], "x")
    missing = write_rows(tmp_path / "m.jsonl", [{"prompt": "p", "answer": "a", "check": f"python:{code}:nope"}])
    with pytest.raises(UserError, match=r"m.jsonl:1: field 'check': .*'nope' is missing"):
        Checkers(read_benchmark(missing))


# ----------------------------------------------------------------------------- statistics
def test_wilson_interval_by_hand():
    low, high = wilson(8, 10)  # type: ignore[misc]
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    assert (low, high) == pytest.approx((centre - half, centre + half)) and (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == pytest.approx(1) and wilson(0, 0) is None  # type: ignore[index]
    assert wilson(0, 10)[1] == pytest.approx(z * z / 10 / (1 + z * z / 10))  # 0/n: [0, z^2/(n+z^2)]


def test_paired_difference_by_hand():
    a = [1, 1, 1, 0, 1, 0]
    b = [0, 1, 0, 0, 1, 1]  # d = 1, 0, 1, 0, 0, -1: mean 1/6
    d = [1, 0, 1, 0, 0, -1]
    mean = 1 / 6
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 5)
    got = paired_difference([bool(x) for x in a], [bool(x) for x in b])
    assert got["difference"] == pytest.approx(mean) and (got["a_only"], got["b_only"]) == (2, 1)
    assert got["difference_ci"] == pytest.approx([mean - 1.959963984540054 * sd / math.sqrt(6),
                                                  mean + 1.959963984540054 * sd / math.sqrt(6)])
    assert paired_difference([True], [False])["difference_ci"] is None  # one item: no interval


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("row, needle", [
    ({"prompt": "p"}, ":2: field 'answer': missing"),
    ({"prompt": "p", "answer": None}, ":2: field 'answer': missing"),
    ({"prompt": "p", "answer": "a", "check": "fuzzy"}, ":2: field 'check': unknown checker 'fuzzy'"),
    ({"prompt": "p", "answer": "(", "check": "regex"}, ":2: field 'answer': bad regular expression"),
    ({"prompt": "p", "answer": "ten", "check": "number"}, ":2: field 'answer': 'ten' is not a number"),
    ({"prompt": "p", "answer": 1, "check": "number", "tolerance": -1}, ":2: field 'tolerance'"),
    ({"prompt": "p", "answer": 1, "check": "number", "tolerance": {"pct": 1}}, ":2: field 'tolerance': unknown key"),
])
def test_bad_rows_are_one_line_errors_naming_file_line_and_field(tmp_path, capsys, row, needle):
    bench = write_rows(tmp_path / "b.jsonl", [{"prompt": "fine", "answer": "x"}, row])
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", bench, "--a", "m", "policy.engine=fake", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "b.jsonl" in err
    assert not out.exists()  # found before anything is written


def test_a_raising_checker_stops_with_the_row_and_keeps_the_generated_responses(tmp_path, capsys):
    code = tmp_path / "chk.py"
    code.write_text("def f(response, answer, row):\n    return 1 / 0\n")
    bench = write_rows(tmp_path / "b.jsonl", [{"prompt": "one", "answer": "x"},
                                              {"prompt": "two", "answer": "x", "check": f"python:{code}:f"}])
    out = tmp_path / "out"
    argv = ["eval", "--benchmark", bench, "--a", "m", "policy.engine=fake", "--out", str(out), "progress=false"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlaif: error")]
    assert len(err) == 1 and "b.jsonl:2: field 'check'" in err[0] and "ZeroDivisionError" in err[0]
    assert (out / "candidates_a.jsonl").is_file() and not (out / "benchmark.json").exists()
    code.write_text("def f(response, answer, row):\n    return True\n")  # fixed: scored without generating again
    assert main(argv) == 0 and json.loads((out / "benchmark.json").read_text())["sides"]["a"]["correct"] == 1


def test_benchmark_refuses_rubrics_and_needs_a_model(tmp_path, capsys):
    assert main(["eval", "--benchmark", "basic", "--a", "m", "--rubric", "helpfulness", "policy.engine=fake"]) == 2
    assert "'--rubric': not used with --benchmark" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "basic", "policy.engine=fake", f"out={tmp_path}"]) == 2
    assert "option 'a'" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "nosuchset", "--a", "m", "policy.engine=fake", f"out={tmp_path}"]) == 2
    assert "shipped set: basic" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end
def test_two_candidates_files_accuracy_interval_and_paired_difference(tmp_path, capsys):
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": 2 * i, "check": "number"} for i in range(10)]
    rows.append({"id": "cap", "prompt": "Capital of Peru?", "answer": "Lima"})  # default checker: exact
    bench = write_rows(tmp_path / "bench.jsonl", rows)
    a_resp = [f"It is {2 * i}." for i in range(10)] + ["The Lima"]  # all right
    b_resp = [f"It is {2 * i + (i % 2)}." for i in range(10)] + ["Cusco"]  # 5 of 11 right
    cand_a = write_rows(tmp_path / "a.jsonl", [{"id": r["id"], "prompt": r["prompt"], "responses": [t]}
                                               for r, t in zip(rows, a_resp)])
    cand_b = write_rows(tmp_path / "b.jsonl", [{"id": r["id"], "prompt": r["prompt"], "responses": [t]}
                                               for r, t in zip(rows, b_resp)])
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", bench, "--a", cand_a, "--b", cand_b, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "benchmark.json").read_text())
    assert (s["sides"]["a"]["correct"], s["sides"]["b"]["correct"], s["n"]) == (11, 5, 11)
    assert s["sides"]["b"]["accuracy_ci"] == pytest.approx(list(wilson(5, 11)))  # type: ignore[arg-type]
    assert s["paired"]["difference"] == pytest.approx(6 / 11) and s["paired"]["difference_ci"][0] > 0
    assert (s["paired"]["a_only"], s["paired"]["b_only"]) == (6, 0)
    assert s["by_check"] == {"number": {"n": 10, "correct_a": 10, "correct_b": 5},
                             "exact": {"n": 1, "correct_a": 1, "correct_b": 0}}
    assert s["sides"]["a"]["length_unit"] == "words" and s["sides"]["a"]["mean_length"] == pytest.approx(
        sum(len(t.split()) for t in a_resp) / 11)
    items = [json.loads(line) for line in (out / "benchmark.jsonl").read_text().splitlines()]
    assert items[-1]["correct_a"] is True and items[-1]["correct_b"] is False
    assert "A is more accurate than B" in printed and "report.html" in printed
    assert "A is more accurate than B" in (out / "report.html").read_text()


def test_model_side_on_the_shipped_set_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--benchmark", "basic", "--a", "m", "policy.engine=fake", "--out", str(out), "progress=false"]
    assert main(argv) == 0
    s = json.loads((out / "benchmark.json").read_text())
    assert s["n"] == 60 and s["sides"]["a"]["length_unit"] == "tokens" and s["settings"]["temperature"] == 0.0
    assert main(argv) == 0 and "resuming" not in capsys.readouterr().err  # generation done: reused
    assert main([*argv, "max_tokens=3"]) == 2  # other settings are refused, not mixed


# ----------------------------------------------------------------------------- the shipped set
def _reference_texts() -> list[str]:
    """Every rubric example's prompt and every demo prompt, normalised."""
    texts = []
    for path in sorted((ROOT / "rubrics").glob("*.yaml")):
        for example in yaml.safe_load(path.read_text()).get("examples") or []:
            texts.append(str(example.get("prompt", "")))
    for line in (ROOT / "prompts" / "demo.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts.append(row.get("prompt") or " ".join(m["content"] for m in row["messages"]))
    return [normalise(text) for text in texts if normalise(text)]


def test_shipped_set_is_kept_apart_from_rubric_examples_and_demo_prompts():
    items = read_benchmark("basic")
    assert len(items) >= 50 and {item.check for item in items} == {"exact", "regex", "number"}
    references = _reference_texts()
    assert len(references) > 20
    for item in items:
        mine = normalise(item.prompt.messages[-1]["content"])
        clash = [ref for ref in references if ref == mine or ref in mine or mine in ref]
        assert not clash, f"{item.source}: overlaps {clash[0]!r}"
    assert read_benchmark("basic")[0].source.startswith(str(shipped_dir("benchmarks")))


def test_the_overlap_check_catches_a_rubric_example():
    assert "what is capital of japan" in _reference_texts()  # an example of answer_checks.yaml
