"""Win-rate statistics for head-to-head evaluation (pure numpy; no models).

Outcomes. Every compared pair (A's response against B's on one prompt) has an outcome
``o in {0, 1/2, 1}``: A loses, tie, A wins. The win rate is ``(wins + ties / 2) / n``.

Interval (`win_rate_interval`). Pairs of one prompt are not independent, so the unit is the
prompt: ``x_i`` = the mean outcome of prompt i's pairs, in [0, 1]. A Wilson interval on
``wins + ties/2`` treats each outcome as Bernoulli, whose variance ``p(1 - p)`` overstates the
variance of outcomes with ties (a tie is 1/2 for sure), and a plain normal/t interval collapses
to a point when every prompt has the same outcome (5 wins out of 5 gives [1, 1]). We use the
Agresti-Coull construction generalised to bounded outcomes: add ``z^2/2`` pseudo-outcomes 0 and
``z^2/2`` pseudo-outcomes 1 (z = 1.96), then

    n~ = n + z^2,   p~ = (sum_i x_i + z^2/2) / n~,
    s~^2 = (sum_i (x_i - p~)^2 + z^2/2 (p~^2 + (1 - p~)^2)) / n~,
    CI = p~ +- z s~ / sqrt(n~), clipped to [0, 1].

For Bernoulli outcomes ``s~^2 = p~(1 - p~)`` and this is exactly the Agresti-Coull interval (Agresti &
Coull 1998), whose coverage is close to 95% from small n on; with ties it is narrower, as it
should be. `tests/test_eval_stats.py` checks the coverage by simulation.

Length control (`length_controlled_win_rate`). AlpacaEval 2 (Dubois et al. 2024, arXiv 2404.04475)
fits a logistic model of the judge's preference on the length difference and reports its
prediction at zero difference. Per pair, with ``d = len_a - len_b`` and ``sigma`` the standard
deviation of ``d`` over all pairs,

    P(A preferred) = sigmoid(theta_0 + theta_1 * tanh(d / sigma)),   LC win rate = sigmoid(theta_0),

fitted by maximum likelihood on the soft targets ``o`` (a tie is the target 1/2) with a small
ridge penalty ``lambda/2 (theta_0^2 + theta_1^2)`` so that a perfectly separable judge (always
the longer answer) still has a finite fit; Newton's method. Such a judge has no defined preference at
zero difference (its verdict jumps from 0 to 1 there), and the ridge then decides the read-out
(about 0.6-0.75 on our hand-made data); a judge whose preference rises smoothly with length is
read correctly as 1/2 (tests/test_eval_stats.py). AlpacaEval's instruction-difficulty
term needs many models judged on the same prompts and is left out: with one pair of models it is
not identified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
RIDGE = 1e-3  # per-pair ridge strength of the length-controlled fit


def outcome(score_a: float, score_b: float) -> float:
    """1 if A scored higher, 0 if lower, 1/2 if equal."""
    return 1.0 if score_a > score_b else 0.0 if score_a < score_b else 0.5


@dataclass
class WinRate:
    n: int  # pairs compared
    wins: int
    losses: int
    ties: int
    win_rate: float | None  # (wins + ties/2) / n
    win_rate_ci: list[float] | None  # [low, high], 95%, over prompts (see module docstring)
    prompts: int  # units of the interval


def win_rate_interval(per_prompt: Sequence[float], z: float = Z95) -> list[float] | None:
    """The adjusted interval of the module docstring for per-prompt mean outcomes in [0, 1]."""
    x = np.asarray(per_prompt, dtype=float)
    if x.size == 0:
        return None
    pseudo = z * z / 2
    n_adj = x.size + 2 * pseudo
    p_adj = (x.sum() + pseudo) / n_adj
    var = (((x - p_adj) ** 2).sum() + pseudo * (p_adj ** 2 + (1 - p_adj) ** 2)) / n_adj
    half = z * math.sqrt(var / n_adj)
    return [max(0.0, float(p_adj - half)), min(1.0, float(p_adj + half))]


def summarise(outcomes: Sequence[float], groups: Sequence[str] | None = None) -> WinRate:
    """Counts, win rate and its 95% interval; ``groups[i]`` is pair i's prompt id (pairs of one
    prompt are averaged into one unit of the interval). Outcomes must be 0, 0.5 or 1."""
    o = np.asarray(outcomes, dtype=float)
    if not np.isin(o, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcomes must be 0, 0.5 or 1")
    groups = list(groups) if groups is not None else [str(i) for i in range(len(o))]
    if len(groups) != len(o):
        raise ValueError("one group per outcome")
    units: dict[str, list[float]] = {}
    for g, v in zip(groups, o):
        units.setdefault(g, []).append(float(v))
    per_prompt = [sum(v) / len(v) for v in units.values()]
    wins, losses = int((o == 1).sum()), int((o == 0).sum())
    return WinRate(n=len(o), wins=wins, losses=losses, ties=len(o) - wins - losses,
                   win_rate=float(o.mean()) if len(o) else None, win_rate_ci=win_rate_interval(per_prompt),
                   prompts=len(units))


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(t / 2))  # stable for large |t|


def fit_length_logistic(outcomes: Sequence[float], len_a: Sequence[float], len_b: Sequence[float],
                        ridge: float = RIDGE, iters: int = 100) -> tuple[float, float]:
    """``(theta_0, theta_1)`` of the length model in the module docstring (Newton on the penalised
    mean cross-entropy ``-mean(o log p + (1-o) log(1-p)) + ridge/2 |theta|^2``)."""
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    sigma = d.std()
    feature = np.tanh(d / sigma) if sigma > 0 else np.zeros_like(d)
    X = np.stack([np.ones_like(d), feature], axis=1)
    theta = np.zeros(2)
    for _ in range(iters):
        p = _sigmoid(X @ theta)
        grad = X.T @ (p - y) / len(y) + ridge * theta
        w = p * (1 - p)
        hess = (X * w[:, None]).T @ X / len(y) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def length_controlled_win_rate(outcomes: Sequence[float], len_a: Sequence[float],
                               len_b: Sequence[float]) -> float | None:
    """AlpacaEval 2's length-controlled win rate: the fitted P(A preferred) at zero length difference."""
    if len(outcomes) == 0:
        return None
    theta0, _ = fit_length_logistic(outcomes, len_a, len_b)
    return float(_sigmoid(np.array(theta0)))
