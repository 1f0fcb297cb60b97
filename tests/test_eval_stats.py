"""`rlaif.eval.winrate` on hand-made data: counts, the interval's coverage, the length-controlled win rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlaif.eval.winrate import Z95, length_controlled_win_rate, outcome, summarise, win_rate_interval


def test_outcome_and_counts_ties_half():
    assert [outcome(2, 1), outcome(1, 2), outcome(1.5, 1.5)] == [1.0, 0.0, 0.5]
    s = summarise([1, 1, 1, 0.5, 0.5, 0])
    assert (s.n, s.wins, s.losses, s.ties, s.prompts) == (6, 3, 1, 2, 6)
    assert s.win_rate == pytest.approx(4 / 6)
    assert s.win_rate_ci[0] < s.win_rate < s.win_rate_ci[1]
    with pytest.raises(ValueError):
        summarise([0.3])


def test_interval_is_agresti_coull_for_win_loss_outcomes():
    x = [1] * 14 + [0] * 6
    n_adj = 20 + Z95 ** 2
    p = (14 + Z95 ** 2 / 2) / n_adj
    half = Z95 * math.sqrt(p * (1 - p) / n_adj)
    assert win_rate_interval(x) == pytest.approx([p - half, p + half])


def test_interval_does_not_collapse_on_small_unanimous_samples():
    lo, hi = win_rate_interval([1.0] * 5)
    assert hi == 1.0 and 0.4 < lo < 0.7  # a t interval would say [1, 1]
    lo50, _ = win_rate_interval([1.0] * 50)
    assert lo50 > 0.9 > lo


def test_ties_give_a_narrower_interval_than_wins_and_losses_of_the_same_mean():
    ties = win_rate_interval([0.5] * 40)
    coin = win_rate_interval([1.0, 0.0] * 20)
    assert ties[1] - ties[0] < 0.75 * (coin[1] - coin[0])


def test_pairs_of_one_prompt_are_one_unit_of_the_interval():
    s = summarise([1, 1, 0, 0.5], groups=["p", "p", "q", "q"])
    assert (s.n, s.prompts, s.win_rate) == (4, 2, 0.625)
    assert s.win_rate_ci == pytest.approx(win_rate_interval([1.0, 0.25]))


@pytest.mark.parametrize("probs,n", [((0.5, 0.3, 0.2), 40), ((0.85, 0.05, 0.10), 20), ((0.5, 0.0, 0.5), 30),
                                     ((0.2, 0.3, 0.5), 60)])
def test_interval_covers_the_true_win_rate_about_95_percent(probs, n):
    rng = np.random.default_rng(1)
    truth = probs[0] + probs[1] / 2
    reps = 2000
    hits = 0
    for _ in range(reps):
        lo, hi = win_rate_interval(rng.choice([1.0, 0.5, 0.0], size=n, p=probs))
        hits += lo <= truth <= hi
    assert 0.93 <= hits / reps <= 0.99


def test_lc_win_rate_removes_a_pure_length_preference():
    rng = np.random.default_rng(0)
    d = rng.normal(50, 35, 2000)  # A is longer on ~92% of the prompts
    longer_wins = (rng.random(2000) < 1 / (1 + np.exp(-d / 15))).astype(float)  # the judge only sees length
    raw = longer_wins.mean()
    lc = length_controlled_win_rate(longer_wins, 100 + d, np.full(2000, 100.0))
    assert raw > 0.85 and abs(lc - 0.5) < 0.06


def test_lc_win_rate_keeps_a_quality_difference_that_length_does_not_explain():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 40, 600)
    better = (rng.random(600) < 0.8).astype(float)
    lc = length_controlled_win_rate(better, 100 + d, np.full(600, 100.0))
    assert abs(lc - better.mean()) < 0.05


def test_lc_win_rate_is_finite_when_the_judge_always_picks_the_longer_and_symmetric_in_a_and_b():
    rng = np.random.default_rng(0)
    d = rng.normal(0, 30, 200)
    y = (d > 0).astype(float)
    lc = length_controlled_win_rate(y, 100 + d, np.full(200, 100.0))
    assert 0.35 < lc < 0.65
    lc_swapped = length_controlled_win_rate(1 - y, np.full(200, 100.0), 100 + d)
    assert lc_swapped == pytest.approx(1 - lc, abs=1e-6)
    assert length_controlled_win_rate([1.0, 0.0, 0.5], [5, 5, 5], [5, 5, 5]) == pytest.approx(0.5, abs=1e-3)
