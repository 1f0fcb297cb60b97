"""rlaif.train.online.maths on small hand-made tensors; every expected number is written out
(worked by hand or with plain arithmetic in the comments), never computed by the function under test."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.train.online.maths import (
    AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance, gae,
    grpo_advantages, kl_k1, kl_k3, masked_mean, masked_whiten, policy_loss, ppo_token_rewards,
    rloo_advantages, value_loss,
)


def close(actual: torch.Tensor, expected: list, tol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol, rtol=0)


# ----------------------------------------------------------------------------- masked statistics

def test_masked_mean_all_and_per_row() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x, mask), 7 / 3)                      # (1 + 2 + 4) / 3
    close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)       # nothing active: 0, not NaN


def test_masked_whiten_ignores_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    # active values 1..5: mean 3, unbiased var (4 + 1 + 0 + 1 + 4) / 4 = 2.5
    s = math.sqrt(2.5 + 1e-8)
    expected = [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]]
    close(masked_whiten(x, mask), expected)
    other_padding = torch.tensor([[1.0, 2.0, 3.0, -7.0], [4.0, 5.0, 1e6, 0.0]])
    close(masked_whiten(other_padding, mask), expected)
    keep_mean = [[-2 / s + 3, -1 / s + 3, 3.0, 0.0], [1 / s + 3, 2 / s + 3, 0.0, 0.0]]
    close(masked_whiten(x, mask, shift_mean=False), keep_mean)


# ----------------------------------------------------------------------------- KL estimators

def test_kl_k1_and_k3_by_hand() -> None:
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    close(kl_k1(logp, ref), [0.5, 0.0])
    # d = ref - logp = -0.5: exp(-0.5) - (-0.5) - 1 = 0.60653066 + 0.5 - 1
    close(kl_k3(logp, ref), [0.10653066, 0.0])


def test_kl_k3_nonnegative_and_zero_iff_equal() -> None:
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(50, generator=g) * 3, torch.randn(50, generator=g) * 3
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k3(logp, ref) > 0).all()                     # random pairs are never equal
    assert torch.equal(kl_k3(logp, logp), torch.zeros(50))
    assert (kl_k1(logp, ref) < 0).any()                     # k1 is unbiased but can be negative


# ----------------------------------------------------------------------------- RLOO

def test_rloo_k2() -> None:
    # k = 2: the baseline is the other sample: 1 - 2, 2 - 1, 3 - 5, 5 - 3
    close(rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0]), 2), [-1.0, 1.0, -2.0, 2.0])


def test_rloo_k4() -> None:
    # sum 12: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3
    close(rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), 4), [-8 / 3, -4 / 3, 0.0, 4.0])


def test_rloo_masked_sample_leaves_the_baseline() -> None:
    nan = float("nan")
    rewards = torch.tensor([1.0, nan, 3.0, 6.0, 2.0, nan, nan, nan])
    valid = torch.tensor([1, 0, 1, 1, 1, 0, 0, 0])
    # group 1 over {1, 3, 6}, sum 10: 1 - 9/2, 3 - 7/2, 6 - 4/2; group 2 has one valid sample -> 0
    adv = rloo_advantages(rewards, 4, valid=valid)
    close(adv, [-3.5, 0.0, -0.5, 4.0, 0.0, 0.0, 0.0, 0.0])


@pytest.mark.parametrize("fn", [rloo_advantages, lambda r, k: grpo_advantages(r, k, "group")])
def test_group_estimators_refuse_one_sample(fn) -> None:
    with pytest.raises(ValueError, match=r"k >= 2.*nothing trains"):
        fn(torch.tensor([1.0, 2.0]), 1)


def test_group_estimators_refuse_ragged_batches() -> None:
    with pytest.raises(ValueError, match="multiple of k=2"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)


# ----------------------------------------------------------------------------- GRPO

def test_grpo_scale_group() -> None:
    # group 1: mean 2, centred -1, +1, unbiased std sqrt(2); group 2 all equal -> 0 (no NaN)
    adv = grpo_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2, "group")
    s = math.sqrt(2) + 1e-4
    close(adv, [-1 / s, 1 / s, 0.0, 0.0])
    # k = 4: mean 2, centred -2, -1, 0, 3, unbiased var (4 + 1 + 0 + 9) / 3
    s4 = math.sqrt(14 / 3) + 1e-4
    close(grpo_advantages(torch.tensor([0.0, 1.0, 2.0, 5.0]), 4, "group"), [-2 / s4, -1 / s4, 0.0, 3 / s4])


def test_grpo_scale_batch_and_none() -> None:
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])
    # batch: mean 2, unbiased var (1 + 1 + 0 + 0) / 3; still centred on each group's mean
    s = math.sqrt(2 / 3) + 1e-4
    close(grpo_advantages(rewards, 2, "batch"), [-1 / s, 1 / s, 0.0, 0.0])
    close(grpo_advantages(rewards, 2, "none"), [-1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(rewards, 2, "rank")  # type: ignore[arg-type]


def test_grpo_zero_std_gives_zero_not_nan() -> None:
    for scale in ("group", "batch", "none"):
        adv = grpo_advantages(torch.tensor([4.0, 4.0, 4.0, 4.0]), 4, scale)
        assert torch.equal(adv, torch.zeros(4)), scale


def test_grpo_masked_sample() -> None:
    valid = torch.tensor([1, 1, 0, 1])
    # group 1 over {0, 2, 7}: mean 3, centred -3, -1, 4; unbiased var (9 + 1 + 16) / 2 = 13
    adv = grpo_advantages(torch.tensor([0.0, 2.0, float("nan"), 7.0]), 4, "group", valid=valid)
    s = math.sqrt(13) + 1e-4
    close(adv, [-3 / s, -1 / s, 0.0, 4 / s])
