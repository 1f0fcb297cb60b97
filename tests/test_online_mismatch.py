"""Training-inference mismatch correction (rlaif.train.online.mismatch) and one-step off-policy
generation (rlaif.train.online.ahead): the maths by hand, a perturbed engine on the tiny random
Llama (the corrected gradient is nearer the on-policy one), and a trainer run whose batches are
sampled one step stale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train.online import mismatch
from rlaif.train.online.batch import MicroBatch, RolloutBatch
from rlaif.train.online.config import GRPOConfig, RLOOConfig, check_config
from rlaif.train.online.step import micro_loss, reuses_current_logp

# ----------------------------------------------------------------------------- the maths


def _pair(log_r: list[list[float]], lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """old_logp, engine_logp and mask with old - engine = log_r on the first ``lengths`` tokens."""
    lr = torch.tensor(log_r)
    mask = (torch.arange(lr.shape[1]) < torch.tensor(lengths).unsqueeze(-1)).float()
    engine = torch.full_like(lr, -1.5)
    return (engine + lr) * mask, engine * mask, mask


def test_token_weights_truncate_at_the_cap_and_zero_padding():
    old, engine, mask = _pair([[math.log(0.5), math.log(3.0), 0.0], [math.log(1.9), 0.0, 5.0]], [3, 1])
    w, clipped = mismatch.token_weights(old, engine, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0, 1.0], [1.9, 0.0, 0.0]]))
    assert clipped.tolist() == [[False, True, False], [False, False, False]]  # padding never counts


def test_sequence_weights_mask_outside_the_bounds_and_skip_empty_rows():
    # sequence log-ratios: log 1.5 (kept), log 4 (above 2), log 0.25 (below 0.5), empty row, +-1000
    old, engine, mask = _pair([[math.log(1.5), 0.0], [math.log(2.0), math.log(2.0)],
                               [math.log(0.5), math.log(0.5)], [9.0, 9.0], [1000.0, 0.0], [-1000.0, 0.0]],
                              [2, 2, 2, 0, 1, 1])
    w, masked = mismatch.sequence_weights(old, engine, mask, cap=2.0, low=0.5)
    torch.testing.assert_close(w, torch.tensor([1.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert masked.tolist() == [False, True, True, False, True, True]
    assert torch.isfinite(w).all()
    no_low, masked_no_low = mismatch.sequence_weights(old, engine, mask, cap=2.0, low=0.0)
    assert masked_no_low.tolist() == [False, True, False, False, True, False]
    assert float(no_low[2]) == pytest.approx(0.25)
    metrics = mismatch.mismatch_metrics("sequence", old, engine, mask, 2.0, 0.5)
    assert metrics["mismatch/masked"] == pytest.approx(4 / 5)  # the empty row is out of the count
    assert metrics["mismatch/weight_mean"] == pytest.approx(1.5 / 5)


def test_mismatch_kl_is_k3_and_zero_when_engine_and_trainer_agree():
    old, engine, mask = _pair([[0.3, -0.2], [0.0, 0.0]], [2, 1])
    expected = sum(math.exp(x) - 1 - x for x in (0.3, -0.2, 0.0)) / 3
    assert mismatch.mismatch_kl(old, engine, mask) == pytest.approx(expected, rel=1e-5)
    assert mismatch.mismatch_kl(engine, engine, mask) == 0.0
    token = mismatch.mismatch_metrics("token", old, engine, mask, 1.2, 0.0)
    assert token["mismatch/clipped"] == pytest.approx(1 / 3)  # exp(0.3) = 1.35 > 1.2
    assert token["mismatch/weight_mean"] == pytest.approx((1.2 + math.exp(-0.2) + 1.0) / 3, rel=1e-5)
    assert set(mismatch.mismatch_metrics("none", old, engine, mask, 2.0, 0.5)) == {"mismatch/kl_k3"}


def test_weigh_advantages_scales_each_term():
    old, engine, mask = _pair([[math.log(0.5), math.log(3.0)], [math.log(1.5), 0.0]], [2, 1])
    adv = torch.tensor([1.0, -2.0])
    assert mismatch.weigh_advantages("none", adv, old, engine, mask, 2.0, 0.5, "token") is adv
    token = mismatch.weigh_advantages("token", adv, old, engine, mask, 2.0, 0.5, "token")
    torch.testing.assert_close(token, torch.tensor([[0.5, 2.0], [-3.0, 0.0]]))
    seq = mismatch.weigh_advantages("sequence", adv, old, engine, mask, 2.0, 0.5, "sequence")
    torch.testing.assert_close(seq, torch.tensor([1.5, -3.0]))
    with pytest.raises(ValueError):
        mismatch.weigh_advantages("token", adv, old, engine, mask, 2.0, 0.5, "sequence")


def test_config_checks_name_the_mismatch_options():
    base = dict(prompts="p.jsonl", out="o", reward=["python:x.py:f"])
    for cfg, key in ((GRPOConfig(is_cap=0.5, **base), "is_cap"), (GRPOConfig(is_min=1.5, **base), "is_min"),
                     (RLOOConfig(is_correction="token", **base), "is_correction"),
                     (GRPOConfig(async_generation=True, **base), "async_generation")):
        with pytest.raises(UserError, match=f"option '{key}'"):
            check_config(cfg)
    check_config(GRPOConfig(async_generation=True, is_correction="token", **base))
    check_config(RLOOConfig(is_correction="sequence", **base))


# ----------------------------------------------------------------------------- a perturbed engine


def _every_completion(model, vocab: int) -> tuple[RolloutBatch, torch.Tensor]:
    """One prompt and every one-token completion y of it as rows (V, 1), with the trainer's log pi(y)."""
    prompt = torch.randint(5, vocab, (1, 4), generator=torch.Generator().manual_seed(2))
    ids = torch.cat([prompt.repeat(vocab, 1), torch.arange(vocab).unsqueeze(-1)], -1)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=prompt).logits[0, -1].float(), -1)
    batch = RolloutBatch(ids, torch.ones_like(ids), torch.full((vocab, 1), 3), ids[:, 4:].clone(),
                         torch.ones(vocab, 1), logp.unsqueeze(-1).clone())
    return batch, logp


def _expected_gradient(cfg, model, batch: RolloutBatch, sampler_logp: torch.Tensor, adv: torch.Tensor
                       ) -> torch.Tensor:
    """E_{y ~ sampler}[gradient of `step.micro_loss`] exactly: every completion y is a row whose
    advantage carries its sampling probability (V * p(y) * A(y): the loss averages over V rows),
    and the batch reports the sampler's log-probs as the engine's."""
    vocab = batch.mask.shape[0]
    batch.engine_logp = sampler_logp.unsqueeze(-1).clone()
    micro = MicroBatch(batch, vocab * sampler_logp.exp() * adv, None, None, None, None, float(vocab), 1.0)
    model.zero_grad()
    loss, _, _, _ = micro_loss(cfg, micro, model, None)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_truncated_is_brings_a_perturbed_engines_gradient_nearer_the_on_policy_one(tiny_model_dir):
    """The engine samples from softmax(logits + noise) and reports those log-probs. Expected
    gradients, exact over every completion: the uncorrected one is the engine's distribution's, the
    TIS- and MIS-weighted ones are nearer the trainer's own (on-policy) one, by cosine and by L2."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    vocab = model.config.vocab_size
    batch, logp = _every_completion(model, vocab)
    good = (torch.arange(vocab) % 3 == 0).float()  # reward: 1 on a third of the vocabulary
    adv = good - float((logp.exp() * good).sum())  # A(y) = r(y) - E_pi[r]
    noise = torch.randn(vocab, generator=torch.Generator().manual_seed(1)) + 1.5 * (1 - good)
    engine_logp = torch.log_softmax(logp + noise, -1)
    assert mismatch.mismatch_kl(logp, engine_logp, torch.ones(vocab)) > 0.05  # a real gap per token
    cfg = {kind: GRPOConfig(is_correction=kind, is_cap=3.0, is_min=0.0, max_tokens=1) for kind in
           ("none", "token", "sequence")}
    assert reuses_current_logp(cfg["token"], vocab, 0.0)  # old = current, detached (the pass is skipped)
    on_policy = _expected_gradient(cfg["none"], model, batch, logp, adv)
    grads = {kind: _expected_gradient(cfg[kind], model, batch, engine_logp, adv) for kind in cfg}

    def cos(a: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a, on_policy, dim=0))

    def dist(a: torch.Tensor) -> float:
        return float((a - on_policy).norm() / on_policy.norm())

    print({kind: (round(cos(g), 3), round(dist(g), 3)) for kind, g in grads.items()})
    for kind in ("token", "sequence"):
        assert cos(grads[kind]) > cos(grads["none"]) + 0.05, (kind, cos(grads[kind]), cos(grads["none"]))
        assert dist(grads[kind]) < 0.75 * dist(grads["none"]), (kind, dist(grads[kind]), dist(grads["none"]))


# ----------------------------------------------------------------------------- one-step off-policy


def _fingerprint(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters())))


def _run_recorded(tmp_path: Path, tiny_model_dir: str, monkeypatch, name: str, steps: int, **kw: object
                  ) -> tuple[list[float], list[float], Path]:
    """A GRPO run on the tiny model (hf engine, reward: shorter is better) recording the engine's
    weights at each generate() and the weights pushed by each sync()."""
    from tests.test_online_trainer import REWARDS, write_prompts

    from rlaif.train.online.rollouts import RolloutEngine
    from rlaif.train.online.trainer import train_online

    sampled, synced = [], []
    generate, sync = RolloutEngine.generate, RolloutEngine.sync
    monkeypatch.setattr(RolloutEngine, "generate", lambda self, *a, **k: (
        sampled.append(_fingerprint(self.backend.model)), generate(self, *a, **k))[1])
    monkeypatch.setattr(RolloutEngine, "sync", lambda self, model: (synced.append(_fingerprint(model)),
                                                                   sync(self, model))[1])
    out = tmp_path / name
    options = dict(prompts=write_prompts(tmp_path / "prompts.jsonl"), model=tiny_model_dir, out=str(out),
                   reward=[f"python:{REWARDS}:short"], engine="hf", steps=steps, k=4, prompts_per_step=2, max_tokens=8,
                   micro_batch_size=16, progress=False, log_rollouts_every=1, lr=3e-3, save_steps=0)
    train_online(GRPOConfig(**{**options, **kw}))
    return sampled, synced, out


def test_async_generation_samples_one_step_stale_learns_and_is_deterministic(tmp_path, tiny_model_dir,
                                                                             monkeypatch):
    """Batch s is sampled from the weights after step s-2's update (s-1's batch trains meanwhile;
    on-policy: after step s-1's), by the engine's own copy. Shorter is better: the mean reward of the
    last 3 of 16 steps is above the first 3's. A rerun gives the same rollouts (seeds are per step)."""
    sampled, synced, _ = _run_recorded(tmp_path, tiny_model_dir, monkeypatch, "sync", 4)
    start = sampled[0]
    assert sampled == [start] + synced[:3]
    kw = dict(async_generation=True, is_correction="token", k=8, lr=5e-2)
    sampled, synced, out = _run_recorded(tmp_path, tiny_model_dir, monkeypatch, "async", 16, **kw)
    assert sampled[0] == start and len(set(synced)) == 16  # the same start; every update moved the weights
    assert sampled == [start, start] + synced[:14]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["mismatch/kl_k3"] < 1e-6  # step 0: sampled from the weights it trains from
    assert all(m["mismatch/kl_k3"] > 1e-6 and m["mismatch/weight_mean"] > 0 for m in metrics[1:])  # stale
    rows = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    first = [r["reward"] for r in rows if r["step"] <= 3]
    last = [r["reward"] for r in rows if r["step"] > 13]
    print(f"reward first 3 steps {sum(first) / len(first):.3f}, last 3 {sum(last) / len(last):.3f}")
    assert sum(last) / len(last) > sum(first) / len(first) + 0.07
    _, _, again = _run_recorded(tmp_path, tiny_model_dir, monkeypatch, "again", 4, **kw)
    assert [r["response"] for r in rows if r["step"] <= 4] == [
        json.loads(x)["response"] for x in (again / "rollouts.jsonl").read_text().splitlines()]


def test_an_async_run_stopped_mid_run_resumes(tmp_path, tiny_model_dir, monkeypatch):
    """A crash at step 3 (the next batch sampling in the background) leaves the step-2 checkpoint;
    the rerun resumes from it, samples its first batch afresh and finishes, no step logged twice."""
    from rlaif.train.online import trainer

    inner = trainer.rollout_step

    def crash(cfg, run, prompts, cache, step, ahead=None):
        if step == 2:
            raise RuntimeError("killed")
        return inner(cfg, run, prompts, cache, step, ahead)

    monkeypatch.setattr(trainer, "rollout_step", crash)
    kw = dict(async_generation=True, is_correction="sequence", save_steps=2)
    with pytest.raises(RuntimeError, match="killed"):
        _run_recorded(tmp_path, tiny_model_dir, monkeypatch, "run", 4, **kw)
    monkeypatch.setattr(trainer, "rollout_step", inner)
    _, _, out = _run_recorded(tmp_path, tiny_model_dir, monkeypatch, "run", 4, **kw)
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 2
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
