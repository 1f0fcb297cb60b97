"""rlaif.train.online.step on the tiny random Llama: the skipped old-policy pass gives the same
update as the pass it replaces, and when it may be skipped."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from rlaif.train.online.config import GRPOConfig, PPOConfig, RLOOConfig
from rlaif.train.online.batch import Scored, build_batch, token_logprobs
from rlaif.train.online.step import Learner, advantages, reuses_current_logp, score_batch, sequence_kl, update


def _rollouts(vocab: int, n: int = 4) -> list[SimpleNamespace]:
    """n rollouts of random ids, prompts of 3-5 tokens, completions of 2-6 tokens (ragged)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        p, c = 3 + i % 3, 2 + (i * 3) % 5
        ids = torch.randint(5, vocab, (p + c,), generator=g).tolist()
        out.append(SimpleNamespace(prompt_ids=ids[:p], completion_ids=ids[p:], engine_logprobs=[0.0] * c))
    return out


def _setup(tiny_model_dir: str, cfg: object):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = build_batch(_rollouts(policy.config.vocab_size), pad_id=0)
    return policy, batch


def _one_step(cfg, policy, batch, old_policy: bool) -> tuple[dict, object, dict]:
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    scores = torch.tensor([1.0, -1.0, 0.5, 2.0])
    valid = torch.ones(4)
    policy.eval()
    scored = score_batch(cfg, batch, policy, None, None, "cpu", nullcontext, old_policy=old_policy)
    adv = advantages(cfg, batch, scores, valid, scored, 0.0)
    policy.train()
    stats = update(cfg, 0, batch, scored, adv, valid,
                   Learner(policy, None, optimizer, list(policy.parameters()), "cpu", nullcontext))
    return stats, scored, {k: v.detach().clone() for k, v in policy.state_dict().items()}


@pytest.mark.parametrize("cls", [GRPOConfig, RLOOConfig])
def test_skipped_old_policy_pass_gives_the_same_update(cls, tiny_model_dir):
    """One epoch, one minibatch: old_logp = logp.detach() from the update's own forward gives the
    same weights, stats, old log-probs and entropy as the separate no-grad pass."""
    cfg = cls(k=2, micro_batch_size=2, epochs_per_step=1, minibatch_size=0, temperature=0.7, beta=0.0)
    assert reuses_current_logp(cfg, 4, 0.0)
    policy, batch = _setup(tiny_model_dir, cfg)
    start = copy.deepcopy(policy.state_dict())
    with_pass, scored_a, weights_a = _one_step(cfg, policy, batch, old_policy=True)
    policy.load_state_dict(start)
    skipped, scored_b, weights_b = _one_step(cfg, policy, batch, old_policy=False)
    moved = max(float((weights_a[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-4  # the step did change the weights, so equality below means something
    # packed rows: float32 attention sums depend on which rows share a micro-batch (the update's
    # are shuffled), ~5e-7 in log-probs, which AdamW's g / sqrt(v) magnifies on near-zero gradients
    for k in start:
        torch.testing.assert_close(weights_b[k], weights_a[k], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scored_b.old_logp, scored_a.old_logp, atol=1e-5, rtol=0)
    assert scored_b.entropy == pytest.approx(scored_a.entropy, rel=1e-5)
    assert skipped["loss"] == pytest.approx(with_pass["loss"], rel=1e-5, abs=1e-6)  # ~0: advantages sum to 0
    assert skipped["clip_fraction"] == 0.0 and skipped["ratio_mean"] == pytest.approx(1.0)


def test_skipped_pass_logprobs_are_the_models(tiny_model_dir):
    cfg = GRPOConfig(k=2, micro_batch_size=4)
    policy, batch = _setup(tiny_model_dir, cfg)
    with torch.no_grad():
        expected, _ = token_logprobs(policy.eval(), batch, cfg.temperature)
    _, scored, _ = _one_step(cfg, policy, batch, old_policy=False)
    torch.testing.assert_close(scored.old_logp, expected, atol=1e-5, rtol=0)
    assert torch.isfinite(sequence_kl(scored, batch.mask)).all()


def test_when_the_old_policy_pass_may_be_skipped():
    n = 16
    assert reuses_current_logp(GRPOConfig(epochs_per_step=1, minibatch_size=0), n, 0.0)
    assert reuses_current_logp(GRPOConfig(epochs_per_step=1, minibatch_size=n), n, 0.0)
    assert reuses_current_logp(GRPOConfig(beta=0.1), n, 0.1)        # GRPO's KL is in the loss
    assert not reuses_current_logp(GRPOConfig(epochs_per_step=2), n, 0.0)
    assert not reuses_current_logp(GRPOConfig(minibatch_size=8), n, 0.0)  # 2 updates: the 2nd is off-policy
    assert reuses_current_logp(RLOOConfig(beta=0.0), n, 0.0)
    assert not reuses_current_logp(RLOOConfig(), n, 0.05)           # k1 KL of old_logp in the reward
    assert not reuses_current_logp(PPOConfig(), n, 0.05)            # 4 epochs
    assert not reuses_current_logp(PPOConfig(epochs_per_step=1, adaptive_kl=True, beta=0.0), n, 0.0)


def test_ppo_advantages_by_hand():
    """Per-token k1 KL with beta, the score on each row's last real token, GAE over the old values,
    returns = advantages + values; numbers worked by hand (beta 0.1, gamma 1, lambda 0.5)."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    old = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.5], [-1.0, -2.0, 0.0]])     # k1: [.5, 0, -.5], [0, 1, -]
    values = torch.tensor([[0.5, 0.2, 0.4], [0.1, -0.3, 9.0]])      # 9.0 sits on padding: never read
    scored = Scored(old, ref, values, 0.0)
    cfg = PPOConfig(beta=0.1, gamma=1.0, lam=0.5, whiten_advantages=False)
    out = advantages(cfg, SimpleNamespace(mask=mask), torch.tensor([1.0, -1.0]), torch.ones(2), scored, 0.1)
    # rewards: row 0 [-0.05, 0, 1 + 0.05], row 1 [0, -0.1 - 1, pad]
    # row 0: A2 = 1.05 - 0.4 = 0.65; A1 = (0 + 0.4 - 0.2) + 0.5 * 0.65 = 0.525; A0 = (-0.05 + 0.2 - 0.5) + 0.5 * 0.525
    # row 1: A1 = -1.1 - (-0.3) = -0.8; A0 = (0 - 0.3 - 0.1) + 0.5 * -0.8 = -0.8
    torch.testing.assert_close(out["adv"], torch.tensor([[-0.0875, 0.525, 0.65], [-0.8, -0.8, 0.0]]))
    torch.testing.assert_close(out["returns"], torch.tensor([[0.4125, 0.725, 1.05], [-0.7, -1.1, 0.0]]))
    torch.testing.assert_close(out["kl"], torch.tensor([0.0, 1.0]))
    whitened = advantages(PPOConfig(beta=0.1, gamma=1.0, lam=0.5), SimpleNamespace(mask=mask),
                          torch.tensor([1.0, -1.0]), torch.ones(2), scored, 0.1)["adv"]
    active = whitened[mask > 0]
    assert float(active.mean()) == pytest.approx(0.0, abs=1e-6) and float(active.var()) == pytest.approx(1.0, 1e-5)
    assert whitened[1, 2] == 0.0
    std = out["adv"][mask > 0].var().sqrt()                          # unbiased, over the 5 real tokens
    torch.testing.assert_close(whitened, (out["adv"] - (-0.5125 / 5)) / std * mask)  # mean = -0.5125 / 5
    # a masked sample (no reward) gets no advantage and leaves the whitening statistics
    masked = advantages(PPOConfig(beta=0.1, gamma=1.0, lam=0.5), SimpleNamespace(mask=mask),
                        torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0]), scored, 0.1)["adv"]
    assert torch.equal(masked[1], torch.zeros(3))
    a0 = torch.tensor([-0.0875, 0.525, 0.65])
    torch.testing.assert_close(masked[0], (a0 - a0.mean()) / a0.var().sqrt(), atol=1e-5, rtol=0)


def test_ppo_default_lambda_follows_where_the_critic_starts():
    """lam null: 1.0 with a critic started from the policy (A_t = return - V, the reward-to-go),
    0.95 with one started from a reward model (N+ details). Row [1, 1] tokens, score 1 on the last,
    V = [0.2, 0.4], no KL: lam 1: A = [1 - 0.2, 1 - 0.4] = [0.8, 0.6]; lam 0.95: A1 = 0.6,
    A0 = (0.4 - 0.2) + 0.95 * 0.6 = 0.77."""
    mask = torch.ones(1, 2)
    scored = Scored(torch.zeros(1, 2), None, torch.tensor([[0.2, 0.4]]), 0.0)
    cfg = PPOConfig(beta=0.0, whiten_advantages=False)
    assert cfg.lam is None
    args = (cfg, SimpleNamespace(mask=mask), torch.tensor([1.0]), torch.ones(1), scored, 0.0)
    torch.testing.assert_close(advantages(*args, critic_from_policy=True)["adv"], torch.tensor([[0.8, 0.6]]))
    torch.testing.assert_close(advantages(*args, critic_from_policy=False)["adv"], torch.tensor([[0.77, 0.6]]))
    cfg.lam = 0.0  # set explicitly, it wins: A0 = delta0 = 0.2
    torch.testing.assert_close(advantages(*args, critic_from_policy=True)["adv"], torch.tensor([[0.2, 0.6]]))


def test_the_config_type_picks_the_algorithm_and_its_rules():
    from rlaif.train.online.algorithms import GRPO, PPO, RLOO, strategy

    assert [type(strategy(cls())) for cls in (GRPOConfig, RLOOConfig, PPOConfig)] == [GRPO, RLOO, PPO]
    assert [strategy(cls()).level for cls in (GRPOConfig, RLOOConfig, PPOConfig)] == ["token", "sequence", "token"]
    assert not strategy(GRPOConfig()).uses_reference() and strategy(GRPOConfig(beta=0.1)).uses_reference()
    assert strategy(PPOConfig(beta=0.0, adaptive_kl=True)).uses_reference()
    assert strategy(PPOConfig()).missing_eos_score == -1.0 and strategy(RLOOConfig()).missing_eos_score is None
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # 3 tokens, 2 sequences, 3 rows
    normalizers = {loss_type: strategy(GRPOConfig(loss_type=loss_type, max_tokens=5)).normalizer(mask)
                   for loss_type in ("grpo", "dapo", "dr_grpo")}
    assert normalizers == {"grpo": 2.0, "dapo": 3.0, "dr_grpo": 15.0}
    assert strategy(RLOOConfig()).normalizer(mask) == 2.0 and strategy(PPOConfig()).normalizer(mask) == 3.0
