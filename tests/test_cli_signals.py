"""SIGTERM (a scheduler's kill, `timeout`, Ctrl-C in a container) ends rlaif cleanly: exit 143, the
engines closed, so no vLLM EngineCore process outlives the run, and the rows written so far kept."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import psutil
import pytest
from processes import run_and_signal


@pytest.mark.slow
def test_sigterm_mid_generation_closes_the_vllm_engine_and_keeps_finished_rows(tmp_path: Path,
                                                                                   embedded_model_dir: str):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n"
                               for i in range(2000)))
    out = tmp_path / "out"
    partial = out / ".rlaif" / "candidates.jsonl"
    rows_before: list[int] = []

    def engine_processes(proc) -> list[psutil.Process]:
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "vLLM runs its engine core in a child process; none found"
        rows_before.append(partial.read_text().count("\n"))
        return children

    ended = run_and_signal(
        [sys.executable, "-m", "rlaif.cli", "generate", "--prompts", str(prompts), "--out", str(out),
         "policy.engine=vllm", f"policy.model={embedded_model_dir}", "policy.gpu_memory_utilization=0.1",
         "policy.max_model_len=1024",
         "n=2", "max_tokens=64", "chunk_size=8", "progress=false"],
        partial, sig=signal.SIGTERM, timeout=300, before_signal=engine_processes)
    assert ended.returncode == 143, ended.stderr[-2000:]
    assert "rlaif: terminated; finished rows are kept" in ended.stderr
    _, alive = psutil.wait_procs(ended.before, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    rows = [json.loads(line) for line in partial.read_text().splitlines()]  # every kept row is whole JSON
    assert len(rows) >= rows_before[0] >= 1
