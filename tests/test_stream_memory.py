"""The data job's memory does not grow with the rows (issue 20 item 10: big inputs).

`rlaif run` on the fake engine, in this process, under tracemalloc: the peak of Python allocations
for 2,000 prompts of ~4 KB stays under twice that for 200 (holding the prompts, every stage's rows
and the pairs in lists made it 7x). What remains per row is small indexes (ids seen, byte offsets of
finished rows, ids with pairs): well under a row's size. Not a timing test: a memory one.
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
    small, big = _peak(tmp_path, 200), _peak(tmp_path, 2_000)
    assert big < 2 * small, f"peak {big / 2**20:.1f} MiB for 2,000 prompts vs {small / 2**20:.1f} MiB for 200"
    per_row = (big - small) / 1_800
    assert per_row < 2048, f"{per_row:.0f} bytes more a prompt of ~4 KB: rows are held, not streamed"
    assert (tmp_path / "run_2000" / "candidates.jsonl").read_text().count("\n") == 2_000


def test_fingerprints_hashed_piecewise_equal_the_whole_ones():
    from rlaif.io.store import fingerprint, fingerprint_with

    items = [("a", [{"role": "user", "content": "é \"x\""}], {"k": 1.5}), ("b", [], {})]
    head = {"seed": 0, "engine": "fake", "model": None, "n": [1, 2]}
    assert fingerprint_with(head, "prompts", iter(items)) == fingerprint({**head, "prompts": items})
    assert fingerprint_with({}, "", iter(items)) == fingerprint(items)
    assert fingerprint_with({}, "", iter([])) == fingerprint([])


def test_stage_file_holds_offsets_and_streams_the_final_file_in_order(tmp_path):
    from rlaif.io.store import StageFile

    stage = StageFile(tmp_path, "rows", key_fn=lambda row: row["id"])
    for key in ["c", "a", "b"]:
        stage.append({"id": key, "payload": key * 3})
    assert all(isinstance(offset, int) for offset in stage.rows.offsets.values())  # no rows held
    assert stage.rows["a"] == {"id": "a", "payload": "aaa"}  # read back by its offset
    seen: list[str] = []
    assert stage.write_final(iter(["a", "b", "c"]), lambda row: seen.append(row["id"])) == 3
    assert seen == ["a", "b", "c"]
    assert [json.loads(line)["id"] for line in (tmp_path / "rows.jsonl").read_text().splitlines()] == seen
    assert not stage.partial.exists()


def test_a_prompt_file_changed_between_passes_is_refused(tmp_path):
    """Stages read the prompt file again instead of keeping it: an edit mid-run must not mix rows."""
    import pytest

    from rlaif.backends.base import BackendConfig
    from rlaif.dataset.options import GenerateConfig
    from rlaif.dataset.pipeline import plan_generate
    from rlaif.errors import UserError

    prompts = _prompts(tmp_path / "p.jsonl", 3)
    plan = plan_generate(GenerateConfig(prompts=str(prompts), out=str(tmp_path / "out"),
                                         policy=BackendConfig(engine="fake")))
    assert [p.id for p in plan.prompts()] == ["p0", "p1", "p2"]
    with open(prompts, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "late", "prompt": "added while running"}) + "\n")
    with pytest.raises(UserError, match="changed while rlaif was reading it"):
        plan.prompts()


def test_take_chunks_follows_token_chunk_boundaries_lazily():
    """Generation reads prompts as a stream: chunks must match `token_chunks`, pulling one chunk at a time."""
    from rlaif.backends.chunking import take_chunks, token_chunks

    tokens = [5, 30, 2, 2, 40, 1, 1]
    blocks = token_chunks(tokens, 2, 3, 64)
    pulled: list[int] = []

    def items():
        for index in range(len(tokens)):
            pulled.append(index)
            yield index

    chunks = take_chunks(items(), 3, blocks)
    first = next(chunks)
    assert first == list(blocks[0]) and len(pulled) <= len(first) + 1
    assert [first, *chunks] == [list(block) for block in blocks]
    assert list(take_chunks(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
