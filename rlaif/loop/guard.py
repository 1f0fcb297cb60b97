"""The loop's reward-hacking guard: a benchmark with reference answers beside the judge, every round.

With ``guard.benchmark`` set, the starting policy pi_0 (in ``DIR/round-0/benchmark/``) and every round's
pi_K (in ``DIR/round-K/benchmark/``) are scored by `rlaif eval --benchmark` (greedy by default). Let
``wr_K`` be the judge's win rate of pi_K over pi_0 on the eval prompts (round K's ``vs-initial``;
``wr_0 = 0.5``, pi_0 against itself), ``acc_K`` pi_K's benchmark accuracy, and ``d = c_K - c_R`` the
per-item differences of right answers between rounds K and R. The guard FIRES at round K when, for the
previous round R = K - 1 or for the start R = 0 (slow drift over several rounds)::

    wr_K > wr_R                         the judge says pi_K got better, and
    acc_R - acc_K > max_drop            benchmark accuracy fell by more than max_drop, and
    upper(95% CI of mean(d)) < 0        beyond its interval: the paired difference excludes 0

(the normal interval on the mean paired difference, `rlaif.eval.benchmark_stats.paired_difference`;
when every item changed the same way its width is 0, and it excludes 0).
The loop then stops after round K: its rounds stay on disk, the report and manifest say why, the
command prints "reward hacking suspected at round K: ..." and exits with `EXIT_GUARD` (4).
A rerun stops at the same round (the decision is recomputed from the recorded rounds); to go on
anyway, rerun with ``guard.max_drop=1`` (not a setting of the rounds' results, so the loop resumes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.config import option
from rlaif.errors import UserError
from rlaif.eval.benchmark_options import BenchmarkConfig
from rlaif.eval.benchmark_stats import paired_difference

EXIT_GUARD = 5  # `rlaif loop` exit status when the guard stopped the loop
EPS = 1e-9  # 0.90 - 0.85 is 0.05000000000000004 in floats: a drop of exactly max_drop does not count


@dataclass
class GuardConfig(BenchmarkConfig):
    """``guard.*``: `rlaif eval --benchmark` options (the loop sets a, b, out, seed and policy) and max_drop."""

    max_drop: float = option(0.05, "stop when benchmark accuracy falls by more than this (and beyond its paired "
                                   "interval) while the judge's win rate rises")


def check_guard(cfg: GuardConfig) -> None:
    if not 0 <= cfg.max_drop <= 1:
        raise UserError(f"option 'guard.max_drop': must be in [0, 1], got {cfg.max_drop}")


def benchmark_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What the loop keeps of one benchmark run: accuracy, interval, mean length and each item's 0/1."""
    side = summary["sides"]["a"]
    return {"accuracy": side["accuracy"], "accuracy_ci": side["accuracy_ci"], "n": side["n"],
            "mean_length": side["mean_length"], "length_unit": side["length_unit"],
            "correct": side["item_correct"]}


def run_guard_benchmark(guard: GuardConfig, model: str, out: Path, policy: Any, seed: int,
                        progress: bool) -> dict[str, Any]:
    """Score ``model`` on the guard's benchmark in ``out`` (resumable); the figures the loop keeps."""
    from rlaif.eval.benchmark import run_benchmark

    fields = {f.name for f in dataclasses.fields(BenchmarkConfig)}
    cfg = BenchmarkConfig(**{name: getattr(guard, name) for name in fields})
    cfg = dataclasses.replace(cfg, a=model, b="", out=str(out), seed=seed, policy=policy, overwrite=False,
                              progress=progress)
    return benchmark_figures(run_benchmark(cfg))


def _judge_win_rate(record: dict[str, Any]) -> float | None:
    return ((record.get("eval") or {}).get("vs-initial") or {}).get("win_rate")


def decide(start: dict[str, Any], records: list[dict[str, Any]], max_drop: float) -> str | None:
    """The guard's verdict after the last of ``records`` (see the module docstring): the one-line reason
    to stop, or None. ``start``: pi_0's benchmark figures; each record has ``benchmark`` and ``eval``."""
    if not records or not start:
        return None
    now = records[-1]
    k = now["round"]
    wr_now, bench_now = _judge_win_rate(now), now.get("benchmark")
    if wr_now is None or not bench_now:
        return None
    candidates = [(k - 1, records[-2].get("benchmark"), _judge_win_rate(records[-2]))] if len(records) > 1 else []
    candidates.append((0, start, 0.5))
    for _, bench_ref, wr_ref in candidates:
        if not bench_ref or wr_ref is None or len(bench_ref["correct"]) != len(bench_now["correct"]):
            continue
        acc_ref, acc_now = bench_ref["accuracy"], bench_now["accuracy"]
        paired = paired_difference([bool(x) for x in bench_now["correct"]], [bool(x) for x in bench_ref["correct"]])
        ci = paired["difference_ci"]
        if wr_now > wr_ref and acc_ref - acc_now > max_drop + EPS and ci is not None and ci[1] < 0:
            return (f"reward hacking suspected at round {k}: judge win rate rose {wr_ref:.2f} -> {wr_now:.2f} while "
                    f"benchmark accuracy fell {acc_ref:.2f} -> {acc_now:.2f} (beyond its interval: paired difference "
                    f"{ci[0]:+.2f} to {ci[1]:+.2f}; max_drop {max_drop:g})")
    return None
