"""A small finished run folder for the review tests: `rlaif run` on the fake engine (no model), six
demo prompts x 3 responses, the demo's two rubrics, some responses cut off at max_tokens."""

from __future__ import annotations

from pathlib import Path

from rlaif.cli import main

ROOT = Path(__file__).resolve().parents[1]


def make_run(tmp: Path, prompts: int = 6, n: int = 3) -> Path:
    src = tmp / "prompts.jsonl"
    src.write_text("".join((ROOT / "prompts" / "demo.jsonl").read_text().splitlines(keepends=True)[:prompts]))
    out = tmp / "run"
    assert main(["run", "--prompts", str(src), "--rubric", "answer_likelihood", "--rubric", "answer_checks",
                 "--out", str(out), "policy.engine=fake", "progress=false", f"n={n}", "max_tokens=6"]) == 0
    return out
