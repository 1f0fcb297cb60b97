"""SIGTERM (a scheduler's kill, `timeout`, Ctrl-C in a container) ends rlaif cleanly: exit 143, the
engines closed, so no vLLM EngineCore process outlives the run, and the rows written so far kept."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigterm_mid_generation_closes_the_vllm_engine_and_keeps_finished_rows(tmp_path: Path,
                                                                                   embedded_model_dir: str):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about the number {i}."}) + "\n"
                               for i in range(2000)))
    out = tmp_path / "out"
    partial = out / ".rlaif" / "candidates.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlaif.cli", "generate", "--prompts", str(prompts), "--out", str(out),
         "policy.engine=vllm", f"policy.model={embedded_model_dir}", "policy.gpu_memory_utilization=0.1",
         "policy.max_model_len=1024",
         "n=2", "max_tokens=64", "chunk_size=8", "progress=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: partial.is_file() and partial.stat().st_size > 0 or proc.poll() is not None, 300,
                  "the first finished chunk")
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "vLLM runs its engine core in a child process; none found"
        rows_before = partial.read_text().count("\n")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "rlaif: terminated; finished rows are kept" in err
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    rows = [json.loads(line) for line in partial.read_text().splitlines()]  # every kept row is whole JSON
    assert len(rows) >= rows_before >= 1
