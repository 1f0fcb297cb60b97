"""Best-of-n: the judge's best complete candidate per prompt above best_min_score -> sft/{train,test}.jsonl,
on the pairs' side of the prompt split, counted in the manifest and the card; `rlaif train sft` reads it."""

import json
from pathlib import Path

import pytest

from rlaif.cli import main
from rlaif.dataset.best import best_response
from rlaif.io.records import read_jsonl

DEMO = Path(__file__).resolve().parents[1] / "prompts" / "demo.jsonl"
FAKE = ["policy.engine=fake", "progress=false", "chunk_size=4", "judge_chunk_size=3"]


def cand(finish: list[str], responses: list[str] | None = None) -> dict:
    return {"id": "p1", "messages": [{"role": "user", "content": "Q?"}], "policy": "pol",
            "responses": responses or [f"r{i}" for i in range(len(finish))], "finish_reasons": finish}


def judged(scores: list, scale=(1, 5), judge="j") -> dict:
    return {"id": "p1", "rubric": "helpfulness", "judge": judge, "scale": list(scale), "scores": scores}


def test_the_best_complete_candidate_above_the_threshold_is_kept():
    row, why = best_response(cand(["stop", "length", "stop", "stop"]), {"helpfulness": judged([2, 5, 4, 3])},
                             {}, 0.5)
    assert why == "kept" and row["candidate"] == 2, "the cut-off candidate (5) is never kept"
    assert row["messages"] == [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "r2"}]
    assert row["score"] == pytest.approx(0.75) and row["id"] == "p1" and row["judge"] == "j"


def test_ties_go_to_the_first_and_unknown_finish_counts_as_complete():
    row, _ = best_response(cand(["unknown", "stop", "stop"]), {"helpfulness": judged([4, 2, 4])}, {}, 0.0)
    assert row["candidate"] == 0


@pytest.mark.parametrize("finish, scores, min_score, why", [
    (["stop", "stop"], [2, 3], 0.75, "below_min_score"),           # best 3 -> 0.5 < 0.75
    (["length", "stop"], [5, None], 0.0, "no_complete_scored"),   # the only complete one failed
    (["length", "length"], [5, 4], 0.0, "no_complete_scored"),
])
def test_nothing_is_kept_without_a_good_enough_complete_candidate(finish, scores, min_score, why):
    assert best_response(cand(finish), {"helpfulness": judged(scores)}, {}, min_score) == (None, why)
    assert best_response(cand(finish), {}, {}, 0.0) == (None, "missing_judgement")


def test_rubrics_are_combined_with_their_weights():
    rows = {"helpfulness": judged([5, 1]), "truthfulness": {**judged([1, 5]), "rubric": "truthfulness"}}
    assert best_response(cand(["stop", "stop"]), rows, {"truthfulness": 3.0}, 0.0)[0]["candidate"] == 1
    assert best_response(cand(["stop", "stop"]), rows, {"helpfulness": 3.0}, 0.0)[0]["candidate"] == 0


def test_run_writes_sft_rows_on_the_pairs_side_of_the_split_and_sft_trains_on_them(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:12]))
    out = tmp_path / "run"
    assert main(["run", "--prompts", str(prompts), "--rubric", "helpfulness", "--out", str(out), *FAKE,
                 "test_fraction=0.25", "best_min_score=0.3"]) == 0
    train, test = read_jsonl(out / "sft" / "train.jsonl"), read_jsonl(out / "sft" / "test.jsonl")
    pairs_test = {p["id"] for p in read_jsonl(out / "preferences" / "test.jsonl")}
    assert train and test and {r["id"] for r in test} <= pairs_test and not {r["id"] for r in train} & pairs_test
    cands = {c["id"]: c for c in read_jsonl(out / "candidates.jsonl")}
    scores = {j["id"]: j["scores"] for j in read_jsonl(out / "judgements.jsonl")}
    for row in train + test:  # the judge's best of the prompt's candidates, and at least the threshold
        assert row["messages"][-1]["content"] == cands[row["id"]]["responses"][row["candidate"]]
        assert scores[row["id"]][row["candidate"]] == max(scores[row["id"]]) and row["score"] >= 0.3
    counts = json.loads((out / "manifest.json").read_text())["stages"]["build"]["counts"]
    assert counts["sft_kept"] == len(train) + len(test) == counts["sft_train"] + counts["sft_test"]
    assert counts["sft_kept"] + counts.get("sft_below_min_score", 0) + counts.get("sft_no_complete_scored", 0) == 12
    assert f"{counts['sft_kept']} prompts with a best response >= 0.3" in (out / "README.md").read_text()

    # a higher threshold keeps fewer (the build reruns: the option is part of its fingerprint)
    assert main(["build", "--judgements", str(out / "judgements.jsonl"), "--out", str(tmp_path / "strict"),
                 "progress=false", "test_fraction=0.25", "best_min_score=0.6"]) == 0
    strict = json.loads((tmp_path / "strict" / "manifest.json").read_text())["stages"]["build"]["counts"]
    assert strict["sft_kept"] < counts["sft_kept"] and strict["sft_below_min_score"] > 0

    model = tmp_path / "sft-model"
    assert main(["train", "sft", "--data", str(out), "--model", tiny_model_dir, "--out", str(model), "max_steps=2",
                 "max_length=256", "max_tokens_per_batch=512", "progress=false"]) == 0
    summary = json.loads((model / "summary.json").read_text())
    assert summary["data"]["train"]["rows"] == len(train) and summary["data"]["test"]["rows"] == len(test)
