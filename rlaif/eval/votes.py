"""Each source's vote on each pair: rubrics judged by the judge engine, rewards scored by their sources.

A pairwise rubric judges the pair in both orders: A wins when both orders prefer A, loses when both
prefer B, a position-inconsistent pair is a tie. A pointwise rubric or a reward scores both
responses: the higher score wins, equal scores tie. A source that failed on a pair does not vote.
Votes are appended to the ``votes`` stage file as they come (resumable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rlaif.backends import Backend, BackendConfig
from rlaif.eval import winrate
from rlaif.eval.options import SIDES, EvalConfig
from rlaif.eval.plan import Plan, file_digest, model_identity
from rlaif.eval.sampling import Pair
from rlaif.io.log import log
from rlaif.io.store import RunState, StageFile, fingerprint


def _pairwise_vote(row: dict) -> dict[str, Any]:
    comparison = row["comparisons"][0] if row["comparisons"] else {}
    p = comparison.get("p")
    if p is None:
        return {"outcome": None, "error": comparison.get("error", "no comparison")}
    consistent = bool(comparison["consistent"])
    return {"outcome": (1.0 if p > 0.5 else 0.0) if consistent else 0.5, "p": p,
            "p_a_first": comparison["p_i_first"], "p_a_second": comparison["p_i_second"], "consistent": consistent,
            "score_a": p, "score_b": 1.0 - p}


def _score_vote(score_a: float | None, score_b: float | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    vote: dict[str, Any] = {"score_a": score_a, "score_b": score_b, **(extra or {})}
    vote["outcome"] = None if score_a is None or score_b is None else winrate.outcome(score_a, score_b)
    return vote


def _rubric_vote(rubric: Any, row: dict) -> dict[str, Any]:
    """One rubric's vote from its judgement row of the pair (responses A, B)."""
    if rubric.judge_method.pairwise:
        return _pairwise_vote(row)
    vote = _score_vote(row["scores"][0], row["scores"][1], {"scale": row["scale"]})
    if vote["outcome"] is None:
        vote["error"] = "; ".join(str(detail.get("error")) for detail in row["details"] if detail.get("error"))
    return vote


def _judge_item(pair: Pair) -> Any:
    from rlaif.judging.items import JudgeItem

    known_finish = set(pair.finish) <= {"stop", "length"}
    return JudgeItem(id=pair.key, messages=pair.messages, responses=list(pair.responses),
                     finish_reasons=list(pair.finish) if known_finish else None,
                     num_tokens=None if None in pair.tokens else list(pair.tokens))  # type: ignore[arg-type]


def judge_votes(cfg: EvalConfig, plan: Plan, pairs: list[Pair], stage: StageFile, state: RunState,
                factory: Callable[[BackendConfig], Backend]) -> None:
    """Rubric votes, chunk by chunk, with the judge engine (loaded only if some vote is missing)."""
    from rlaif.backends.chunking import chunks
    from rlaif.judging.judge import judge_items

    todo = [(rubric, [pair for pair in pairs if not stage.done((pair.key, rubric.name))]) for rubric in plan.rubrics]
    if not any(missing for _, missing in todo):
        return
    judged = [rubric for rubric, missing in todo if missing and rubric.needs_judge]
    if judged and plan.judge_dir is not None:
        from rlaif.dataset.judge_context import check_judge_prompt_lengths

        items = [{"id": pair.key, "messages": pair.messages, "responses": list(pair.responses)} for pair in pairs]
        check_judge_prompt_lengths(judged, items, plan.judge_dir, cfg.judge.max_model_len, cfg.seed,
                                   {pair.key: plan.sources.get(pair.id, "") for pair in pairs})
    backend = factory(cfg.judge) if judged else None  # rules rubrics need no model
    try:
        if backend is not None:
            state.update("votes", judge=backend.model_id)
        for rubric, missing in todo:
            for block in chunks(len(missing), cfg.judge_chunk_size):
                batch = [missing[index] for index in block]
                rows = judge_items(backend, rubric, [_judge_item(pair) for pair in batch], seed=cfg.seed,
                                   verdict_retries=cfg.verdict_retries, progress=cfg.progress)
                for pair, row in zip(batch, rows):
                    stage.append({"key": pair.key, "source": rubric.name, "kind": rubric.method,
                                  **_rubric_vote(rubric, row)})
            log(f"eval: rubric {rubric.name} ({rubric.method}): {len(missing)} pairs judged")
    finally:
        if backend is not None:
            backend.close()


def reward_votes(cfg: EvalConfig, plan: Plan, pairs: list[Pair], stage: StageFile) -> None:
    """Reward votes: each source scores A's and B's responses in one call (interleaved A, B per pair)."""
    from rlaif.rewards.load import load_rewards

    specs = [f"{scheme}:{target}" for scheme, target, _ in plan.rewards]
    todo = {spec: [pair for pair in pairs if not stage.done((pair.key, spec))] for spec in specs}
    if not any(todo.values()):
        return
    sources = load_rewards(specs, judge=cfg.judge, seed=cfg.seed, verdict_retries=cfg.verdict_retries)
    try:
        for source in sources:
            missing = todo[source.name]
            if not missing:
                continue
            prompts = [pair.messages for pair in missing for _ in SIDES]
            completions = [pair.responses[side] for pair in missing for side in range(2)]
            rows = [{"id": pair.id, **pair.metadata} for pair in missing for _ in SIDES]
            scores = source(prompts, completions, rows)
            for index, pair in enumerate(missing):
                vote = _score_vote(scores[2 * index], scores[2 * index + 1])
                stage.append({"key": pair.key, "source": source.name, "kind": "reward", **vote})
            log(f"eval: reward {source.name}: {len(missing)} pairs scored")
    finally:
        for source in sources:
            source.close()


def votes_fingerprint(cfg: EvalConfig, plan: Plan, pairs: list[Pair]) -> str:
    """What shapes the votes: the pairs, the judge, the rubric files, the reward files or models, the seed."""
    rewards = []
    for scheme, target, _ in plan.rewards:
        if scheme == "python":
            rewards.append((scheme, target, file_digest(target.rpartition(":")[0])))
        else:
            rewards.append((scheme, target, model_identity(str(Path(target).expanduser()))))
    return fingerprint({
        "pairs": [(pair.key, pair.messages, pair.responses) for pair in pairs],
        "judge": (cfg.judge.engine, cfg.judge.model) if any(r.needs_judge for r in plan.rubrics) else None,
        "rubrics": [(r.name, r.method, r.template, Path(r.path).read_text(encoding="utf-8") if r.path else "")
                    for r in plan.rubrics],
        "rewards": rewards, "seed": cfg.seed, "verdict_retries": cfg.verdict_retries})
