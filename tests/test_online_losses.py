"""GSPO, CISPO, clip-higher, DAPO's overlong penalty and the entropy bonus (issue 24): the maths
against hand computations, their wiring into a GRPO step, and a short learning run each."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train.online import maths
from rlaif.train.online.algorithms import strategy
from rlaif.train.online.batch import MicroBatch, build_batch, token_logprobs
from rlaif.train.online.config import GRPOConfig, PPOConfig, check_config
from rlaif.train.online.step import micro_loss


def _leaf(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # lengths 3 and 2


# ----------------------------------------------------------------------------- GSPO

def test_gspo_sequence_ratio_value_and_gradient_by_hand() -> None:
    """s_i = exp(mean_t d_it); l_i = -A_i s_i inside the range; d l / d logp_it = -A_i s_i / |y_i| / B.
    Sequence 1 leaves the range upwards with A > 0: its term is clipped, its gradient 0."""
    logp = _leaf([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    old = torch.tensor([[-1.1, -2.0, -0.6], [-1.2, -1.2, 0.0]], dtype=torch.float64)
    adv = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    loss, stats = maths.gspo_loss(logp, old, adv, MASK, clip_eps=0.1, clip_eps_high=0.1)
    s0 = math.exp((0.1 + 0.0 + 0.1) / 3)      # 1.069: inside [0.9, 1.1]
    s1 = math.exp((0.2 + 0.2) / 2)            # 1.221: above 1.1, A > 0: clipped to 1.1
    assert loss.item() == pytest.approx((1.0 * s0 - 2.0 * 1.1) / 2)
    loss.backward()
    expected = torch.tensor([[s0 / 3 / 2] * 3, [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)
    assert stats["clip_fraction"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx((s0 + s1) / 2)


def test_gspo_ratio_equals_the_token_ratio_when_every_token_has_the_same_log_ratio() -> None:
    """d_it = d for all t: s_i = exp(d) = r_it, and GSPO's loss and gradient equal PPO-clip's
    (grpo aggregation: mean per sequence, then over sequences)."""
    d = torch.tensor([[0.05], [-0.3]], dtype=torch.float64)
    base = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
    results = []
    for fn in ("gspo", "ppo"):
        logp = (base + d * MASK).clone().requires_grad_(True)
        if fn == "gspo":
            loss, _ = maths.gspo_loss(logp, base, adv, MASK, 0.2, 0.2)
        else:
            loss, _ = maths.policy_loss(logp, base, adv, MASK, 0.2, loss_type="grpo")
        loss.backward()
        results.append((loss.item(), logp.grad))
    (gspo, g_grad), (ppo, p_grad) = results
    assert gspo == pytest.approx(ppo)
    torch.testing.assert_close(g_grad, p_grad)
    assert float(p_grad[1].abs().sum()) == 0  # sequence 1 (exp(-0.3) < 0.8, A < 0) is clipped in both


def test_gspo_token_equals_gspo_with_one_advantage_per_sequence() -> None:
    logp_seq = _leaf([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    logp_tok = logp_seq.detach().clone().requires_grad_(True)
    old = torch.tensor([[-1.1, -1.9, -0.6], [-1.05, -1.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([0.7, -1.3], dtype=torch.float64)
    seq, _ = maths.gspo_loss(logp_seq, old, adv, MASK, 0.2, 0.2)
    tok, _ = maths.gspo_loss(logp_tok, old, adv, MASK, 0.2, 0.2, token=True, loss_type="grpo")
    seq.backward()
    tok.backward()
    assert tok.item() == pytest.approx(seq.item())
    torch.testing.assert_close(logp_tok.grad, logp_seq.grad)


# ----------------------------------------------------------------------------- CISPO and clip-higher

def test_cispo_value_and_gradient_by_hand() -> None:
    """l = -sum_t sg(clip(r_t, 0.8, 1.2)) A logp_t / tokens; d l / d logp_t = -w_t A / tokens for EVERY
    token, the clipped ones included."""
    logp = _leaf([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    old = torch.tensor([[-1.5, -2.0, -0.4], [-0.5, -1.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss, stats = maths.cispo_loss(logp, old, adv, MASK, clip_eps=0.2, clip_eps_high=0.2)
    w = torch.tensor([[1.2, 1.0, math.exp(-0.1)], [0.8, 1.0, 0.0]], dtype=torch.float64)  # e^0.5, e^-0.5 clipped
    a = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    expected = float((-w * a * logp.detach() * MASK).sum() / 5)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    torch.testing.assert_close(logp.grad, -w * a * MASK / 5)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)


def test_cispo_keeps_the_gradient_that_ppo_clip_zeroes() -> None:
    """r = e^0.5 = 1.65 > 1.2 with A > 0: PPO-clip takes the clipped branch (gradient 0); CISPO still
    pushes logp up, with the weight capped at 1.2."""
    mask = torch.ones(1, 1)
    old = torch.tensor([[-1.5]], dtype=torch.float64)
    adv = torch.tensor([1.0], dtype=torch.float64)
    grads = {}
    for name in ("ppo", "cispo"):
        logp = _leaf([[-1.0]])
        fn = maths.policy_loss if name == "ppo" else maths.cispo_loss
        loss, _ = fn(logp, old, adv, mask, 0.2, clip_eps_high=0.2)
        loss.backward()
        grads[name] = float(logp.grad)
    assert grads["ppo"] == 0.0
    assert grads["cispo"] == pytest.approx(-1.2)


def test_clip_higher_widens_only_the_upper_bound() -> None:
    """r = e^0.22 = 1.246, A > 0: clipped at eps 0.2, not with clip_eps_high 0.28; the lower bound stays 0.8."""
    mask = torch.ones(1, 2)
    old = torch.tensor([[-1.22, -0.75]], dtype=torch.float64)  # ratios e^0.22 and e^-0.25 = 0.78
    adv = torch.tensor([1.0], dtype=torch.float64)
    grads = []
    for high in (None, 0.28):
        logp = _leaf([[-1.0, -1.0]])
        loss, _ = maths.policy_loss(logp, old, adv, mask, 0.2, clip_eps_high=high)
        loss.backward()
        grads.append(logp.grad.clone())
    assert float(grads[0][0, 0]) == 0.0 and float(grads[1][0, 0]) == pytest.approx(-math.exp(0.22) / 2)
    assert float(grads[1][0, 1]) == pytest.approx(-math.exp(-0.25) / 2)  # below 0.8 with A > 0: unclipped


# ----------------------------------------------------------------------------- overlong penalty

def test_overlong_penalty_by_hand() -> None:
    lengths = torch.tensor([2, 4, 6, 7, 8])
    torch.testing.assert_close(maths.overlong_penalty(lengths, 8, 4), torch.tensor([0.0, 0.0, -0.5, -0.75, -1.0]))
    assert float(maths.overlong_penalty(torch.tensor([9]), 8, 4)) == -1.0
    assert float(maths.overlong_penalty(lengths, 8, 0).abs().sum()) == 0.0


def test_reward_tensor_adds_the_scaled_penalty_to_valid_samples_only() -> None:
    from rlaif.train.online.trainer import reward_tensor

    rollouts = [SimpleNamespace(completion_ids=[1] * n, finished=n < 8) for n in (3, 6, 8, 8)]
    cfg = GRPOConfig(max_tokens=8, overlong_buffer=4, overlong_penalty=0.5)
    scores, valid = reward_tensor(cfg, [1.0, 1.0, 1.0, None], rollouts)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.75, 0.5, 0.0]))
    assert valid.tolist() == [1.0, 1.0, 1.0, 0.0]
    off, _ = reward_tensor(GRPOConfig(max_tokens=8), [1.0, 1.0, 1.0, None], rollouts)
    assert off.tolist() == [1.0, 1.0, 1.0, 0.0]


# ----------------------------------------------------------------------------- entropy bonus

def test_adaptive_entropy_controller_steps_towards_the_target_and_round_trips() -> None:
    ctl = maths.AdaptiveEntropyController(0.01, target=0.5, delta=0.004)
    ctl.update(0.2)
    assert ctl.value == pytest.approx(0.014)  # entropy below target: more bonus
    ctl.update(0.9)
    ctl.update(0.9)
    ctl.update(0.9)
    ctl.update(0.9)
    assert ctl.value == 0.0  # never negative
    other = maths.AdaptiveEntropyController(0.0, target=0.5, delta=0.004)
    ctl.value = 0.03
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.03
    assert isinstance(strategy(GRPOConfig(entropy_coef=0.02)).entropy_controller(), maths.FixedKLController)
    adaptive = strategy(PPOConfig(entropy_coef=0.02, entropy_target=1.0)).entropy_controller()
    assert isinstance(adaptive, maths.AdaptiveEntropyController) and adaptive.value == 0.02


def _micro(tiny_model_dir: str) -> tuple[object, MicroBatch]:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    rollouts = []
    for i in range(4):
        ids = torch.randint(5, policy.config.vocab_size, (8,), generator=g).tolist()
        rollouts.append(SimpleNamespace(prompt_ids=ids[:4], completion_ids=ids[4:4 + 2 + i % 3],
                                        engine_logprobs=[0.0] * 4))
    batch = build_batch(rollouts, pad_id=0)
    tokens = float(batch.mask.sum())
    return policy, MicroBatch(batch, torch.zeros(4), None, None, None, None, tokens, tokens)


def test_entropy_bonus_carries_a_gradient_that_raises_the_entropy(tiny_model_dir) -> None:
    """Zero advantages: the loss is -coef x mean entropy; its gradient is not zero and one SGD step on it
    raises the policy's entropy. Without the bonus (coef 0) the same step changes nothing."""
    cfg = GRPOConfig(k=2)
    policy, micro = _micro(tiny_model_dir)
    with torch.no_grad():
        _, before = token_logprobs(policy, micro.rows, cfg.temperature, entropy=True)
    for coef in (0.0, 1.0):
        policy.zero_grad(set_to_none=True)
        loss, _, _, fresh_entropy = micro_loss(cfg, micro, policy, None, entropy_coef=coef)
        loss.backward()
        grads = [p.grad for p in policy.parameters() if p.grad is not None]
        norm = float(torch.stack([g.norm() for g in grads]).norm())
        if coef == 0:
            assert norm == 0.0
            continue
        assert fresh_entropy is not None and not fresh_entropy.requires_grad
        assert loss.item() == pytest.approx(-float(fresh_entropy), rel=1e-5)
        assert norm > 0
        with torch.no_grad():
            for p in policy.parameters():
                if p.grad is not None:
                    p -= 50.0 * p.grad
    with torch.no_grad():
        _, after = token_logprobs(policy, micro.rows, cfg.temperature, entropy=True)
    assert float(after) > float(before)


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("options, key", [
    (dict(loss_type="cispo", importance_sampling_level="sequence"), "importance_sampling_level"),
    (dict(overlong_buffer=9, max_tokens=8), "overlong_buffer"),
    (dict(entropy_coef=-0.1), "entropy_coef"),
    (dict(entropy_target=0.0), "entropy_target"),
    (dict(clip_eps_high=0.0), "clip_eps_high"),
])
def test_bad_options_name_the_option(options, key, tmp_path) -> None:
    cfg = GRPOConfig(prompts="p.jsonl", out=str(tmp_path), reward=["python:r.py:f"], **options)
    with pytest.raises(UserError, match=f"option '{key}'"):
        check_config(cfg)


def test_the_clip_range_follows_the_ratio_level() -> None:
    assert GRPOConfig().clip_range() == (0.2, 0.2)
    assert GRPOConfig(clip_eps_high=0.28).clip_range() == (0.2, 0.28)
    assert GRPOConfig(importance_sampling_level="sequence").clip_range() == (3e-4, 4e-4)
    # GSPO counts sequences in its normaliser, whatever the loss_type
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert strategy(GRPOConfig(importance_sampling_level="sequence")).normalizer(mask) == 2.0
    assert strategy(GRPOConfig(loss_type="cispo")).normalizer(mask) == 4.0


# ----------------------------------------------------------------------------- they learn

VOWELS = '''
def vowels(prompts, completions, **kw):
    return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]
'''


@pytest.mark.slow
def test_gspo_and_cispo_raise_the_reward(tmp_path, tiny_model_dir) -> None:
    """Reward = share of vowels in the completion, 2 epochs of 2 minibatches per step (so the later
    updates are off-policy and the clip matters): for GSPO and for CISPO the mean reward of the last 2
    of 6 steps is above the first 2's. Also: the overlong penalty and the entropy coefficient are
    logged. (Slow only for CPU time: ~10 s per run on a free core, the tiny random model.)"""
    from rlaif.train.online.trainer import train_online

    (tmp_path / "rewards.py").write_text(VOWELS)
    rows = [{"id": f"p{i}", "prompt": f"Say something about number {i}."} for i in range(4)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, options in (("gspo", dict(importance_sampling_level="sequence")), ("cispo", dict(loss_type="cispo"))):
        cfg = GRPOConfig(prompts=str(tmp_path / "prompts.jsonl"), model=tiny_model_dir, out=str(tmp_path / name),
                         reward=[f"python:{tmp_path / 'rewards.py'}:vowels"], engine="hf", steps=6, k=4,
                         prompts_per_step=2, max_tokens=6, micro_batch_size=8, epochs_per_step=2, minibatch_size=4,
                         lr=5e-2, progress=False, save_steps=0, log_rollouts_every=0, seed=0, overlong_buffer=1,
                         overlong_penalty=1e-3, entropy_coef=1e-4, **options)
        train_online(cfg)
        lines = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        rewards = [x["reward/mean"] for x in lines]
        print(name, [round(r, 3) for r in rewards])
        assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.1, (name, rewards)
        assert max(x["clip_fraction"] for x in lines) > 0, name  # the off-policy updates clipped (or capped)
        assert all(x["entropy_coef"] == 1e-4 for x in lines)
        assert all(-1.001e-3 <= x["overlong_penalty"] <= 0 for x in lines)
