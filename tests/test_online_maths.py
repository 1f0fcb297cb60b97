"""rlaif.train.online.maths on small hand-made tensors; every expected number is written out
(worked by hand or with plain arithmetic in the comments), never computed by the function under test."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.train.logprobs import logits_entropy
from rlaif.train.online.maths import (
    AdaptiveKLController, FixedKLController, aggregate_loss, explained_variance, gae,
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


# ----------------------------------------------------------------------------- GAE and PPO rewards

def test_gae_gamma_1_lambda_095_with_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0], [0.2, -1.0, 9.0, 9.0]])    # 9: junk on padding
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0], [0.1, 0.3, 9.0, 9.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: delta2 = 1 - 0.7 = 0.3 (no value after the last token); delta1 = 0.7 - 0.6 = 0.1,
    # A1 = 0.1 + 0.95 * 0.3 = 0.385; delta0 = 0.6 - 0.5 = 0.1, A0 = 0.1 + 0.95 * 0.385 = 0.46575
    # row 1: A1 = -1 - 0.3 = -1.3; A0 = 0.2 + 0.3 - 0.1 + 0.95 * -1.3 = -0.835
    close(adv, [[0.46575, 0.385, 0.3, 0.0], [-0.835, -1.3, 0.0, 0.0]])
    close(ret, [[0.96575, 0.985, 1.0, 0.0], [-0.735, -1.0, 0.0, 0.0]])      # A + V


def test_gae_lambda_1_returns_are_reward_to_go() -> None:
    mask = torch.tensor([[1, 1, 1]])
    _, ret = gae(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[5.0, -4.0, 0.5]]), mask, gamma=0.5, lam=1.0)
    # discounted reward-to-go: 1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3 (whatever the values)
    close(ret, [[2.75, 3.5, 3.0]])


def test_gae_lambda_below_1_with_an_ignorant_critic_turns_the_best_first_token_negative() -> None:
    """Why PPO with a critic that starts knowing nothing (value model from the policy) uses lam = 1:
    the critic says 0 everywhere, both rows score above it (1 and 0.5, reward on the last token).
    lam = 0.5: A = [0.25, 0.5, 1] and [0.125, 0.25, 0.5] (A_t = lam^(T-1-t) * score); whitening
    subtracts their mean 2.625 / 6 = 0.4375, so the best row's first token gets 0.25 - 0.4375 < 0
    and the worse row's last token 0.5 - 0.4375 > 0: the advantage's sign follows the position,
    not the sample. lam = 1: A = [1, 1, 1] and [0.5, 0.5, 0.5], mean 0.75, unbiased var
    6 * 0.25^2 / 5 = 0.075: +-0.25 / sqrt(0.075) = +-0.912871 on every token."""
    mask = torch.ones(2, 3)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.5]])
    values = torch.zeros(2, 3)
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    close(adv, [[0.25, 0.5, 1.0], [0.125, 0.25, 0.5]])
    whitened = masked_whiten(adv, mask)
    assert whitened[0, 0] < 0 < whitened[1, 2]
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(masked_whiten(adv, mask), [[0.912871] * 3, [-0.912871] * 3])


def test_ppo_token_rewards_uses_the_mask_not_the_pad_id() -> None:
    eos = pad = 2                                            # a tokenizer whose pad is its eos
    ids = torch.tensor([[5, 7, eos, pad, pad], [5, 6, 7, 8, 9], [pad, pad, pad, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    # the pad id cannot tell the real EOS from padding: `ids != pad` ends row 0 one token early
    assert (ids[0] != pad).nonzero().max().item() == 1
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0, 0.0], [-1.0] * 5, [0.0] * 5])
    ref = torch.tensor([[-1.5, -2.0, -1.0, 0.0, 0.0], [-1.0] * 5, [0.0] * 5])
    rewards = ppo_token_rewards(torch.tensor([2.0, -1.0, 5.0]), logp, ref, mask, beta=0.1)
    # -0.1 * k1 = -0.1 * [0.5, 0, 0.5]; the score on the EOS (index 2), nothing on the pads;
    # row 1 was cut by max_tokens: the score sits on its last token; row 2 has no tokens: nothing
    close(rewards, [[-0.05, 0.0, 1.95, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, -1.0], [0.0] * 5])


# ----------------------------------------------------------------------------- policy loss

def _seqs(logp_shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two sequences, lengths 1 and 3 (T = 3): (logp with grad, old_logp, mask)."""
    old = torch.tensor([[-1.0, 0.0, 0.0], [-2.0, -0.5, -1.5]])
    logp = (old + logp_shift).clone().requires_grad_(True)
    return logp, old, torch.tensor([[1, 0, 0], [1, 1, 1]])


def test_policy_loss_ratio_one_is_minus_mean_advantage() -> None:
    adv = torch.tensor([1.0, -3.0])
    expected = {"dapo": 2.0,           # tokens: -1 once and +3 three times: (-1 + 9) / 4
                "token_mean": 2.0,
                "grpo": 1.0,           # per sequence -1 and +3, mean 1 = -(1 - 3) / 2
                "dr_grpo": 1.0}        # (-1 + 9) / (2 sequences * 4 max tokens)
    for loss_type, value in expected.items():
        logp, old, mask = _seqs()
        loss, stats = policy_loss(logp, old, adv, mask, 0.2, "token", loss_type, max_completion_length=4)
        close(loss.detach(), value)
        assert stats["clip_fraction"] == 0.0 and stats["approx_kl"] == 0.0
        assert stats["ratio_mean"] == pytest.approx(1.0)


def test_policy_loss_clipped_ratio_has_no_gradient_and_counts() -> None:
    old = torch.tensor([[0.0, 0.0]])
    logp = torch.tensor([[math.log(1.5), 0.0]], requires_grad=True)    # ratios 1.5 and 1.0
    loss, stats = policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([[1, 1]]), 0.2, "token", "dapo")
    loss.backward()
    # token 0: max(-1.5, -1.2) = -1.2, the clipped branch; token 1: -1.0; dapo: (-1.2 - 1) / 2
    close(loss.detach(), -1.1)
    close(logp.grad, [[0.0, -0.5]])                          # d(-ratio)/dlogp / 2 tokens on token 1
    assert stats["clip_fraction"] == 0.5
    assert stats["ratio_mean"] == pytest.approx(1.25)
    assert stats["approx_kl"] == pytest.approx(0.5 * math.log(1.5) ** 2 / 2)


def test_policy_loss_negative_advantage_is_not_clipped_above() -> None:
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.tensor([[0.0]]), torch.tensor([-1.0]), torch.tensor([[1]]), 0.2)
    loss.backward()
    close(loss.detach(), 1.5)                                # max(1.5, 1.2): pessimistic, keeps the gradient
    close(logp.grad, [[1.5]])
    assert stats["clip_fraction"] == 0.0


def _token_gradients(loss_type: str) -> torch.Tensor:
    logp, old, mask = _seqs()
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0, -1.0]), mask, 0.2, "token", loss_type,
                          max_completion_length=3)
    loss.backward()
    return logp.grad


def test_aggregation_length_bias() -> None:
    """Two wrong answers (A = -1), 1 and 3 tokens. Per-token gradient = weight of the token in the loss.

    grpo divides each sequence by its own length: the long wrong answer is pushed down 3x less per
    token, so wrong answers drift longer (Liu et al. 2025, sec. 3.1). dr_grpo divides by a constant
    (B * max tokens) and dapo by the batch's token count: every token weighs the same.
    """
    close(_token_gradients("grpo"), [[1 / 2, 0, 0], [1 / 6, 1 / 6, 1 / 6]])        # 1 / (len * B)
    close(_token_gradients("dr_grpo"), [[1 / 6, 0, 0], [1 / 6, 1 / 6, 1 / 6]])     # 1 / (2 * 3)
    close(_token_gradients("dapo"), [[1 / 4, 0, 0], [1 / 4, 1 / 4, 1 / 4]])        # 1 / 4 tokens


def test_aggregate_loss_on_a_token_quantity() -> None:
    per_token = torch.tensor([[1.0, 9.0, 9.0], [2.0, 2.0, 2.0]])         # 9: padding
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    close(aggregate_loss(per_token, mask, "grpo", None), 1.5)             # (1 + 2) / 2 sequences
    close(aggregate_loss(per_token, mask, "dapo", None), 7 / 4)           # (1 + 6) / 4 tokens
    close(aggregate_loss(per_token, mask, "dr_grpo", 3), 7 / 6)           # (1 + 6) / (2 * 3)


def test_aggregation_normalizer_for_micro_batches() -> None:
    logp, old, mask = _seqs()
    loss, _ = policy_loss(logp, old, torch.tensor([1.0, -3.0]), mask, 0.2, "token", "dapo", normalizer=8.0)
    close(loss.detach(), 1.0)                                # (-1 + 9) / 8
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(logp, old, torch.tensor([1.0, -3.0]), mask, 0.2, "token", "dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logp, old, torch.tensor([1.0, -3.0]), mask, 0.2, "token", "mean")  # type: ignore[arg-type]


def test_policy_loss_sequence_level() -> None:
    old = torch.zeros(2, 2)
    logp = torch.tensor([[0.1, 0.1], [0.0, 0.0]], requires_grad=True)
    loss, stats = policy_loss(logp, old, torch.tensor([1.0, 2.0]), torch.ones(2, 2), 0.2, "sequence")
    loss.backward()
    # row 0: rho = exp(0.1 + 0.1) = 1.2214 > 1.2, A = 1: clipped, -1.2; row 1: rho = 1, -2; mean -1.6
    close(loss.detach(), -1.6)
    close(logp.grad, [[0.0, 0.0], [-1.0, -1.0]])             # d(-2 rho)/dlogp_t / 2 sequences
    assert stats["clip_fraction"] == 0.5
    assert stats["ratio_mean"] == pytest.approx((math.exp(0.2) + 1) / 2)


# ----------------------------------------------------------------------------- value loss, EV, entropy

def test_value_loss_clipping() -> None:
    values = torch.tensor([[1.0, 2.5, 7.0]], requires_grad=True)     # 7.0 on padding
    old, returns, mask = torch.tensor([[0.5, 2.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    loss.backward()
    # token 0: V_clip = 0.7: max((1 - 0)^2, 0.7^2) = 1, unclipped; token 1: V_clip = 2.2:
    # max(0.5^2, 0.8^2) = 0.64, the clipped branch (no gradient). 0.5 * (1 + 0.64) / 2
    close(loss.detach(), 0.41)
    close(values.grad, [[0.5, 0.0, 0.0]])                    # 0.5 * 2 * (1 - 0) / 2
    assert stats["value_clip_fraction"] == 0.5
    assert stats["value_mean"] == pytest.approx(1.75)


def test_explained_variance() -> None:
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(torch.tensor([[1.0, 2.0, 3.0, 0.0]]), returns, mask) == pytest.approx(1.0)
    # residuals 1, 0, -1 have var 1, as the returns: 1 - 1 = 0
    assert explained_variance(torch.tensor([[2.0, 2.0, 2.0, 0.0]]), returns, mask) == pytest.approx(0.0)
    # residuals 0, 0, -2: unbiased var 4/3: 1 - 4/3
    assert explained_variance(torch.tensor([[1.0, 2.0, 5.0, 0.0]]), returns, mask) == pytest.approx(-1 / 3)
    assert math.isnan(explained_variance(returns, torch.ones(1, 4), torch.tensor([[1, 0, 0, 0]])))


def test_logits_entropy_the_trainers_log() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [100.0, 0.0], [0.0, 0.0]]])    # (1, 3, 2)
    # p = 1/4, 3/4: -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.5623351; uniform: ln 2; the peaked one is padding
    close(masked_mean(logits_entropy(logits), torch.tensor([[1, 0, 1]])), (0.5623351 + math.log(2)) / 2)
    close(logits_entropy(logits[:, 1:2]), [[0.0]])
    # a token outside the top-p nucleus (-inf) adds nothing (no 0 x inf NaN): 3 uniform tokens, ln 3
    close(logits_entropy(torch.tensor([0.0, 0.0, float("-inf"), 0.0])), math.log(3))


# ----------------------------------------------------------------------------- KL controllers

def test_adaptive_kl_controller_ziegler_formula() -> None:
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=256)                             # 9/6 - 1 = 0.5, clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl.value = 0.1
    ctl.update(6.6, n_steps=256)                             # error 0.1, inside the clip
    assert ctl.value == pytest.approx(0.1 * 1.00256)
    ctl.value = 0.1
    ctl.update(6.0, n_steps=256)                             # on target: unchanged
    assert ctl.value == pytest.approx(0.1)
    ctl.update(0.0, n_steps=256)                             # -1 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * (1 - 0.2 * 256 / 10000))
    restored = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value


def test_fixed_kl_controller_never_moves() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(100.0, n_steps=1000)
    assert ctl.value == 0.05
