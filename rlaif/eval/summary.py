"""``eval.json`` and ``eval.jsonl`` from the pairs and every source's votes.

With several sources a pair's outcome is their majority, ``sign(sum_s (o_s - 1/2))`` (a tie vote
counts for neither side; as many for A as for B: tie); a pair with no vote is left out and counted
in ``failed``. Win rates, intervals and the length-controlled win rate come from `rlaif.eval.winrate`.
"""

from __future__ import annotations

from typing import Any, Sequence

from rlaif.eval import winrate
from rlaif.eval.options import EvalConfig
from rlaif.eval.plan import Plan
from rlaif.eval.sampling import Pair

Votes = dict[tuple[str, str], dict]  # (pair key, source name) -> vote


def combine(votes: Sequence[float]) -> float | None:
    """Majority of the sources' outcomes: sign of sum(o - 1/2) -> 1, 0, or 1/2; None without votes."""
    if not votes:
        return None
    total = sum(vote - 0.5 for vote in votes)
    return 1.0 if total > 0 else 0.0 if total < 0 else 0.5


def _lengths(pairs: list[Pair]) -> tuple[str, list[tuple[int, int]]]:
    """Tokens where both sides report engine tokens, else words for both (comparable units)."""
    if all(tokens is not None for pair in pairs for tokens in pair.tokens):
        return "tokens", [(int(pair.tokens[0]), int(pair.tokens[1])) for pair in pairs]  # type: ignore[arg-type]
    return "words", [(len(pair.responses[0].split()), len(pair.responses[1].split())) for pair in pairs]


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _eos_rate(finish: list[str]) -> float | None:
    if not finish or any(reason not in ("stop", "length") for reason in finish):
        return None  # a user's candidates file does not say
    return sum(reason == "stop" for reason in finish) / len(finish)


def _stats(outcomes: list[float], groups: list[str], lengths: list[tuple[int, int]]) -> dict[str, Any]:
    summary = winrate.summarise(outcomes, groups)
    length_controlled = (winrate.length_controlled_win_rate(outcomes, [a for a, _ in lengths],
                                                             [b for _, b in lengths]) if outcomes else None)
    return {"n": summary.n, "wins": summary.wins, "losses": summary.losses, "ties": summary.ties,
            "win_rate": summary.win_rate, "win_rate_ci": summary.win_rate_ci, "lc_win_rate": length_controlled,
            "prompts": summary.prompts}


def source_kinds(plan: Plan) -> dict[str, str]:
    """Source name -> its kind (the rubric's method, or "reward"), rubrics first, in the plan's order."""
    return ({rubric.name: rubric.method for rubric in plan.rubrics}
            | {f"{scheme}:{target}": "reward" for scheme, target, _ in plan.rewards})


def _pair_row(pair: Pair, lengths: tuple[int, int], unit: str, mine: dict[str, dict],
              result: float | None) -> dict[str, Any]:
    """One readable ``eval.jsonl`` row."""
    from rlaif.judging.templates import last_user_message

    return {"id": pair.id, "k": pair.index, "prompt": last_user_message(pair.messages),
            "response_a": pair.responses[0], "response_b": pair.responses[1],
            "length_a": lengths[0], "length_b": lengths[1], "length_unit": unit,
            "finish_a": pair.finish[0], "finish_b": pair.finish[1], "outcome": result,
            "winner": None if result is None else {1.0: "A", 0.0: "B", 0.5: "tie"}[result],
            "votes": {source: {key: value for key, value in vote.items() if key not in ("key", "source")}
                      for source, vote in mine.items()}}


def _by_source(plan: Plan, pairs: list[Pair], lengths: list[tuple[int, int]], votes: Votes) -> dict[str, Any]:
    """Each source's own win rate, failures and mean scores (and position consistency if pairwise)."""
    pairwise = {rubric.name for rubric in plan.rubrics if rubric.judge_method.pairwise}
    by_source: dict[str, Any] = {}
    for source, kind in source_kinds(plan).items():
        got = [(pair, length, votes[(pair.key, source)]) for pair, length in zip(pairs, lengths)
               if votes[(pair.key, source)]["outcome"] is not None]
        entry = _stats([vote["outcome"] for _, _, vote in got], [pair.id for pair, _, _ in got],
                       [length for _, length, _ in got])
        entry |= {"kind": kind, "failed": len(pairs) - len(got),
                  "mean_score_a": _mean([vote["score_a"] for _, _, vote in got]),
                  "mean_score_b": _mean([vote["score_b"] for _, _, vote in got])}
        if source in pairwise:
            entry["position_consistency"] = _mean([float(vote["consistent"]) for _, _, vote in got])
        by_source[source] = entry
    return by_source


def summarise(cfg: EvalConfig, plan: Plan, pairs: list[Pair], votes: Votes, judge_id: str | None,
              model_ids: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(eval.json dict, eval.jsonl rows)`` from the pairs and every source's votes."""
    unit, lengths = _lengths(pairs)
    kinds = source_kinds(plan)
    rows, outcomes, groups, kept_lengths = [], [], [], []
    for pair, length in zip(pairs, lengths):
        mine = {source: votes[(pair.key, source)] for source in kinds}
        result = combine([vote["outcome"] for vote in mine.values() if vote["outcome"] is not None])
        rows.append(_pair_row(pair, length, unit, mine, result))
        if result is not None:
            outcomes.append(result)
            groups.append(pair.id)
            kept_lengths.append(length)
    by_source = _by_source(plan, pairs, lengths, votes)
    pairwise = [rubric.name for rubric in plan.rubrics if rubric.judge_method.pairwise]
    consistency = [float(votes[(pair.key, name)]["consistent"]) for name in pairwise for pair in pairs
                   if votes[(pair.key, name)]["outcome"] is not None]
    names = list(kinds)
    score_source = next((name for name in names if kinds[name] == "reward"),
                        next((name for name in names if name not in pairwise), names[0]))
    summary = _stats(outcomes, groups, kept_lengths) | {
        "failed": len(pairs) - len(outcomes),
        "position_consistency": _mean(consistency) if pairwise else None,
        "length_unit": unit,
        "mean_length_a": _mean([a for a, _ in lengths]), "mean_length_b": _mean([b for _, b in lengths]),
        "eos_rate_a": _eos_rate([pair.finish[0] for pair in pairs]),
        "eos_rate_b": _eos_rate([pair.finish[1] for pair in pairs]),
        "mean_score_a": by_source[score_source]["mean_score_a"],
        "mean_score_b": by_source[score_source]["mean_score_b"], "score_source": score_source,
        "judge": judge_id, "rubrics": [rubric.name for rubric in plan.rubrics],
        "rewards": [f"{scheme}:{target}" for scheme, target, _ in plan.rewards],
        "a": cfg.a, "b": cfg.b, "models": model_ids, "by_source": by_source,
        "settings": {"n_per_prompt": cfg.n_per_prompt, "temperature": cfg.temperature, "top_p": cfg.top_p,
                     "max_tokens": cfg.max_tokens, "seed": cfg.seed},
    }
    return summary, rows
