"""The responses an eval compares: a model side generates them (the pipeline's generation code,
resumable), a candidates side gives them; pair k of a prompt is A's k-th response against B's k-th."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlaif.backends import Backend, BackendConfig, SamplingParams
from rlaif.eval.options import EvalConfig
from rlaif.eval.plan import Plan, Side, model_identity, side_backend
from rlaif.io.log import log
from rlaif.io.records import read_jsonl
from rlaif.io.store import RunState, StageFile, fingerprint


@dataclass
class Pair:
    id: str
    index: int  # k: A's k-th response against B's k-th
    messages: list[dict[str, str]]
    metadata: dict[str, Any]
    responses: tuple[str, str]
    tokens: tuple[int | None, int | None]  # engine tokens (None: not known)
    finish: tuple[str, str]

    @property
    def key(self) -> str:
        return self.id if self.index == 0 else f"{self.id}#{self.index}"


def generate_side(cfg: EvalConfig, plan: Plan, side: Side, state: RunState,
                  factory: Callable[[BackendConfig], Backend]) -> list[dict]:
    """``DIR/candidates_<side>.jsonl`` for a model side (the pipeline's generation code; resumable)."""
    from rlaif.dataset.generate import generate_candidates

    out = Path(cfg.out)
    name = f"candidates_{side.name}"
    fp = fingerprint({"prompts": [(p.id, p.messages, p.metadata) for p in plan.prompts], "engine": cfg.policy.engine,
                      "model": side.spec, "weights": model_identity(side.model_dir), "n": cfg.n_per_prompt,
                      "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                      "seed": cfg.seed})
    stage_name = f"generate_{side.name}"
    if not state.begin(stage_name, fp, f"prompts, model {side.label}, n_per_prompt, temperature, top_p, "
                       "max_tokens or seed", f"{name}.jsonl", f"eval: {stage_name}"):
        return read_jsonl(out / f"{name}.jsonl")
    stage = StageFile(out, name, key_fn=lambda row: row["id"])
    stage.load()
    if stage.rows:
        log(f"eval: side {side.label}: resuming, {len(stage.rows)}/{len(plan.prompts)} prompts already generated")
    backend = factory(side_backend(cfg, side))
    try:
        params = SamplingParams(n=cfg.n_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_tokens, seed=cfg.seed)
        stats = generate_candidates(backend, plan.prompts, params, cfg.seed, stage, cfg.chunk_size, cfg.progress,
                                    prompt_tokens=plan.prompt_tokens.get(side.name), chunk_tokens=cfg.chunk_tokens)
        model_id = backend.model_id
    finally:
        stage.close()
        backend.close()
    rows = stage.finish([p.id for p in plan.prompts])
    state.update(stage_name, done=True, model_id=model_id, seconds=stats["seconds"])
    log(f"eval: side {side.label}: {len(rows)} prompts x {cfg.n_per_prompt} -> {out / (name + '.jsonl')}")
    return rows


def make_pairs(plan: Plan, rows: dict[str, list[dict]], per_prompt: int) -> list[Pair]:
    """Pair k of each prompt: A's k-th response against B's k-th, in prompt order."""
    by_side = {name: {row["id"]: row for row in side_rows} for name, side_rows in rows.items()}
    pairs = []
    for prompt in plan.prompts:
        row_a, row_b = by_side["a"][prompt.id], by_side["b"][prompt.id]
        for index in range(per_prompt):
            def tokens(row: dict) -> int | None:
                return row["num_tokens"][index] if row.get("policy") != "user" else None
            pairs.append(Pair(prompt.id, index, prompt.messages, prompt.metadata,
                              (row_a["responses"][index], row_b["responses"][index]), (tokens(row_a), tokens(row_b)),
                              (row_a["finish_reasons"][index], row_b["finish_reasons"][index])))
    return pairs
