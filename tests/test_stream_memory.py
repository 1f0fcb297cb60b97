"""The data job's memory does not grow with the rows (issue 20 item 10: big inputs).

`rlaif run` on the fake engine, in this process, under tracemalloc: the peak of Python allocations
for 20,000 prompts stays under twice that for 2,000 (reading the whole file, holding every stage's
rows or building pairs from whole lists makes it about 10x). What remains per row is small indexes
(ids seen, byte offsets of finished rows, ids with pairs). Not a timing test: a memory one.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

from rlaif.cli import main


def _prompts(path: Path, rows: int) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for index in range(rows):
            text = f"Question {index}: explain topic {index % 97} in simple words, with an example. " * 50  # ~4 KB
            fh.write(json.dumps({"id": f"p{index}", "prompt": text, "topic": index % 97}) + "\n")
    return path


def _peak(tmp_path: Path, rows: int) -> int:
    """Peak bytes allocated by one `rlaif run` of ``rows`` prompts (fake policy, a rules rubric)."""
    prompts = _prompts(tmp_path / f"prompts_{rows}.jsonl", rows)
    tracemalloc.start()
    try:
        rc = main(["run", "--prompts", str(prompts), "--out", str(tmp_path / f"run_{rows}"), "--rubric",
                   "answer_checks", "policy.engine=fake", "progress=false", "n=2", "max_tokens=8",
                   "chunk_size=256", "judge_chunk_size=256"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 0
    return peak


def test_run_memory_is_flat_in_the_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not under test; speed is welcome
    _peak(tmp_path, 50)  # imports and caches (matplotlib, rubrics) load here, outside the measures
    small, big = _peak(tmp_path, 2_000), _peak(tmp_path, 20_000)
    assert big < 2 * small, f"peak {big / 2**20:.1f} MiB for 20k prompts vs {small / 2**20:.1f} MiB for 2k"
    lines = (tmp_path / "run_20000" / "candidates.jsonl").read_text().count("\n")
    assert lines == 20_000
