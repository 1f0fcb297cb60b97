"""Two real vLLM replicas of the embedded model on a local Ray (started by the CLI itself) write
the candidates and judgements of one in-process vLLM engine, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, out: str, extra: list[str]) -> subprocess.CompletedProcess:
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        prompts.write_text("".join((ROOT / "prompts" / "demo.jsonl").read_text().splitlines(keepends=True)[:6]))
    cmd = [sys.executable, "-m", "rlaif.cli", "run", "--prompts", str(prompts), "--rubric", "helpfulness",
           "--rubric", "answer_likelihood", "--out", str(tmp_path / out), "policy.engine=vllm",
           "policy.gpu_memory_utilization=0.1", "policy.max_model_len=1024", "n=2", "max_tokens=16",
           "chunk_size=2", "judge_chunk_size=2", "progress=false", *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_vllm_replicas_write_the_bytes_of_one_engine(tmp_path, embedded_model_dir):
    pytest.importorskip("vllm")
    pytest.importorskip("ray")
    _run(tmp_path, "one", [])
    _run(tmp_path, "two", ["policy.replicas=2"])
    for name in ("candidates.jsonl", "judgements.jsonl"):
        one, two = (tmp_path / "one" / name).read_bytes(), (tmp_path / "two" / name).read_bytes()
        assert one == two, name
    assert (tmp_path / "one" / "candidates.jsonl").read_text().count('"id"') == 6
