"""`rlaif eval`: how often A's responses beat B's, judged by rubrics and/or rewards.

Sides. ``a`` and ``b`` are each a model (alias, local folder, or an ``rlaif train`` output folder)
or a candidates file (``candidates.jsonl`` of ``rlaif generate``/``rlaif run``, a user JSONL of
``{id?, prompt|messages, responses}``, or a folder holding ``candidates.jsonl``). A model side
generates ``n_per_prompt`` responses per prompt with the pipeline's generation code, each prompt
seeded by (seed, prompt id) on both sides; a candidates side contributes its first
``n_per_prompt`` responses. Pair k of a prompt is A's k-th response against B's k-th.

Judging (`rlaif.eval.votes`; `rlaif.eval.winrate` has the statistics). Each source votes on each pair:
- a pairwise rubric judges the pair in both orders (`rlaif.judging.judge`); A wins when both
  orders prefer A, loses when both prefer B, and a position-inconsistent pair is a tie;
- a pointwise rubric (logprob, verdict, likelihood, rules) or a reward (``python:FILE.py:FUNC``, ``rm:DIR``, loaded
  as in the online trainers) scores both responses; the higher score wins, equal scores tie.
With several sources a pair's outcome is their majority, ``sign(sum_s (o_s - 1/2))`` (a tie vote
counts for neither side; as many for A as for B: tie). A source
that failed on a pair (no score) does not vote; a pair with no vote is left out and counted in
``failed``.

Engines. One at a time, each closed before the next loads: A's policy, B's policy, the judge,
then the reward models. Resume: generated candidates and finished votes are appended to
``DIR/.rlaif/`` as they come (`rlaif.io.store`); a rerun with the same settings continues, one with
other settings is refused unless ``overwrite``.

Outputs in ``DIR``: ``eval.json`` (summary), ``eval.jsonl`` (one readable row per pair),
``report.html``, ``votes.jsonl`` (every source's raw verdict per pair) and, for model sides,
``candidates_a.jsonl`` / ``candidates_b.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from rlaif.backends import Backend, BackendConfig, load_backend
from rlaif.eval.options import EvalConfig
from rlaif.eval.plan import Plan, plan_eval
from rlaif.eval.sampling import Pair, generate_side, make_pairs
from rlaif.eval.summary import source_kinds, summarise
from rlaif.eval.votes import judge_votes, reward_votes, votes_fingerprint
from rlaif.io.records import read_jsonl
from rlaif.io.outdir import prepare_out as prepare_out_folder
from rlaif.io.store import PARTIAL_DIR, RunState, StageFile, atomic_write_text, refuse_out_overlap, write_jsonl

OUTPUTS = ["candidates_a.jsonl", "candidates_b.jsonl", "votes.jsonl", "eval.json", "eval.jsonl", "report.html"]
STAGES = ["generate_a", "generate_b", "votes"]


def prepare_out(cfg: EvalConfig, outputs: list[str] = OUTPUTS, stages: list[str] = STAGES) -> RunState:
    """Refuse an --out holding files rlaif did not write; with overwrite remove ``outputs`` and forget
    ``stages``; list the outputs in the folder's marker (eval's, or the benchmark's)."""
    prepare_out_folder(cfg.out, outputs, overwrite=cfg.overwrite, legacy=outputs.__contains__,
                       evidence=[PARTIAL_DIR], inputs=[cfg.a, cfg.b, cfg.prompts])
    state = RunState(cfg.out)
    if cfg.overwrite:
        state.forget(*stages)
    return state


def _votes(cfg: EvalConfig, plan: Plan, pairs: list[Pair], state: RunState,
           factory: Callable[[BackendConfig], Backend]) -> dict[tuple[str, str], dict]:
    """Every source's vote on every pair (resumed from ``votes.jsonl`` or its stage file)."""
    out = Path(cfg.out)
    fp = votes_fingerprint(cfg, plan, pairs)
    stage = StageFile(out, "votes", key_fn=lambda row: (row["key"], row["source"]))
    if state.begin("votes", fp, "the candidates, judge, rubrics, rewards or seed", "votes.jsonl", "eval: votes"):
        stage.load()
        try:
            judge_votes(cfg, plan, pairs, stage, state, factory)
            reward_votes(cfg, plan, pairs, stage)
        finally:
            stage.close()
        stage.finish([(pair.key, source) for source in source_kinds(plan) for pair in pairs])  # type: ignore[arg-type]
        state.update("votes", done=True)
    return {(vote["key"], vote["source"]): vote for vote in read_jsonl(out / "votes.jsonl")}


def run_eval(cfg: EvalConfig, factory: Callable[[BackendConfig], Backend] = load_backend) -> dict[str, Any]:
    """Generate (model sides), judge every pair, write ``eval.json`` / ``eval.jsonl`` / ``report.html`` in
    ``cfg.out``; returns the ``eval.json`` dict. ``factory`` builds engines (tests pass scripted fakes)."""
    from rlaif.eval.report import write_report

    refuse_out_overlap(cfg.out, {"--a": cfg.a, "--b": cfg.b, "--prompts": cfg.prompts,
                                 **{f"--reward {spec}": spec[3:] for spec in cfg.rewards if spec.startswith("rm:")}},
                       OUTPUTS)
    plan = plan_eval(cfg)
    state = prepare_out(cfg)
    out = Path(cfg.out)
    rows: dict[str, list[dict]] = dict(plan.given)
    model_ids: dict[str, str] = {}
    for side in plan.sides:
        if side.candidates is None:
            rows[side.name] = generate_side(cfg, plan, side, state, factory)
            model_ids[side.name] = state.stage(f"generate_{side.name}").get("model_id", side.spec)
        else:
            model_ids[side.name] = "+".join(dict.fromkeys(row["policy"] for row in rows[side.name])) or side.spec
    pairs = make_pairs(plan, rows, cfg.n_per_prompt)
    votes = _votes(cfg, plan, pairs, state, factory)
    summary, pair_rows = summarise(cfg, plan, pairs, votes, state.stage("votes").get("judge"), model_ids)
    write_jsonl(out / "eval.jsonl", pair_rows)
    atomic_write_text(out / "eval.json", json.dumps(summary, indent=2) + "\n")
    write_report(out / "report.html", summary, pair_rows)
    return summary
