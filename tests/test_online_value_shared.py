"""PPO with value_head=shared on tiny random Llamas: the head alone is the value model's parameters,
one policy forward gives log-probs and values, the value loss trains the backbone, the run learns,
saves, resumes and reloads; the separate critic stays the default."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from rlaif.train.online.config import PPOConfig, check_config
from rlaif.train.online.value import SharedValueHead, ValueModel, load_value_model, shared_value_head

from test_online_trainer import REWARDS, small


def _policy(model_dir: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _micro(seed: int = 0) -> object:
    """A micro-batch of 2 rollouts (prompt 3 + completion 4 and prompt 2 + completion 2 tokens), zero
    advantages (so the PPO-clip loss has no gradient and the backbone's gradient is the value loss's)."""
    from rlaif.train.online.batch import MicroBatch, build_batch
    from rlaif.train.online.rollouts import Rollout

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (11,), generator=gen).tolist()
    rollouts = [Rollout(prompt_index=0, prompt_ids=ids[:3], completion_ids=ids[3:7], engine_logprobs=[-1.0] * 4,
                        text="", finished=True),
                Rollout(prompt_index=1, prompt_ids=ids[7:9], completion_ids=ids[9:11], engine_logprobs=[-1.0] * 2,
                        text="", finished=True)]
    batch = build_batch(rollouts, pad_id=0)
    zeros = torch.zeros_like(batch.mask)
    returns = torch.linspace(-1, 1, batch.mask.numel()).view_as(batch.mask) * batch.mask
    return MicroBatch(batch, zeros, zeros.clone(), None, zeros.clone(), returns, 1.0, float(batch.mask.sum()))


def _backbone_grad(model_dir: str, vf_coef: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gradient of one backbone weight and of the head after `micro_loss`, and the decoder forwards it ran."""
    from rlaif.train.online.step import micro_loss

    torch.manual_seed(0)
    policy = _policy(model_dir)
    value = shared_value_head(policy)
    with torch.no_grad():
        value.head.weight.normal_(0, 1.0)  # a non-zero head, else no gradient reaches the backbone
    calls: list[int] = []
    handle = policy.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    cfg = PPOConfig(prompts="p", out="o", reward=["python:f.py:g"], value_head="shared", vf_coef=vf_coef,
                    max_tokens=4)
    loss, stats, _, _ = micro_loss(cfg, _micro(), policy, value)
    loss.backward()
    handle.remove()
    assert stats["value_loss"] > 0
    layer = policy.model.layers[0].mlp.up_proj.weight
    return layer.grad.clone(), value.head.weight.grad.clone(), len(calls)


def test_shared_head_trains_the_backbone_in_one_forward(tiny_model_dir: str) -> None:
    grad, head_grad, forwards = _backbone_grad(tiny_model_dir, 0.1)
    assert forwards == 1                                        # log-probs and values from one forward
    assert grad.abs().sum() > 0 and head_grad.abs().sum() > 0  # the value loss reaches the backbone
    grad2, _, _ = _backbone_grad(tiny_model_dir, 0.2)
    torch.testing.assert_close(grad2, 2 * grad, rtol=1e-4, atol=1e-9)  # weighted by vf_coef


def test_shared_head_parameters_are_the_head_alone(tiny_model_dir: str) -> None:
    from rlaif.train.online.setup import make_optimizer

    policy = _policy(tiny_model_dir)
    value = shared_value_head(policy)
    assert [name for name, _ in value.named_parameters()] == ["head.weight", "head.bias"]
    cfg = PPOConfig(prompts="p", out="o", reward=["python:f.py:g"], value_head="shared", lr=1e-5)
    params, optimizer = make_optimizer(cfg, policy, value)
    assert len(params) == len(list(policy.parameters())) + 2   # no backbone weight is counted twice
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 1e-4]


def test_separate_critic_stays_the_default(tiny_model_dir: str) -> None:
    from rlaif.train.online.setup import make_value_model

    cfg = PPOConfig(prompts="p", out="o", reward=["python:f.py:g"])
    assert cfg.value_head == "separate"
    value = make_value_model(cfg, tiny_model_dir, [], torch.device("cpu"), _policy(tiny_model_dir))
    assert isinstance(value, ValueModel) and len(list(value.parameters())) > 2  # a backbone of its own


def test_epochs_per_step_defaults_by_device() -> None:
    cfg = PPOConfig(prompts="p", out="o", reward=["python:f.py:g"])
    assert cfg.epochs_per_step is None
    check_config(cfg)
    assert cfg.epochs_per_step == (4 if torch.cuda.is_available() else 1)
    cfg = PPOConfig(prompts="p", out="o", reward=["python:f.py:g"], epochs_per_step=3)
    check_config(cfg)
    assert cfg.epochs_per_step == 3


def test_value_model_folder_with_a_shared_head_is_refused() -> None:
    from rlaif.errors import UserError

    with pytest.raises(UserError, match="value_model"):
        check_config(PPOConfig(prompts="p", out="o", reward=["python:f.py:g"], value_head="shared",
                               value_model="some/dir"))


SHARED = dict(value_head="shared", missing_eos_score=None, beta=0.01, k=2, prompts_per_step=2, lr=3e-3,
              value_lr=3e-3, epochs_per_step=2, micro_batch_size=4, save_steps=0, log_rollouts_every=1)


def test_shared_ppo_learns_a_python_reward(tiny_model_dir: str, tiny_tokenizer_dir: str) -> None:
    """Eight rollouts scored by a python: reward (-characters / 100), five PPO steps on them with the
    shared head (starting at V = 0): the policy moves log-probability towards the better-scored
    completions (the score-weighted sum of sequence log-probs rises) and the value loss falls."""
    from transformers import AutoTokenizer

    from rlaif.rewards.load import load_rewards
    from rlaif.train.online.batch import build_batch
    from rlaif.train.online.rollouts import Rollout
    from rlaif.train.online.step import Learner, advantages, score_batch, update
    from rlaif.train.optim import adamw

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    gen = torch.Generator().manual_seed(0)
    rollouts = []
    for i in range(8):
        ids = torch.randint(10, len(tok), (3 + 6,), generator=gen).tolist()
        rollouts.append(Rollout(prompt_index=i, prompt_ids=ids[:3], completion_ids=ids[3:],
                                engine_logprobs=[-1.0] * 6, text=tok.decode(ids[3:]), finished=True))
    from rlaif.backends.base import BackendConfig

    [source] = load_rewards([f"python:{REWARDS}:short"], judge=BackendConfig(), seed=0, verdict_retries=0)
    scores = torch.tensor(source([[]] * 8, [r.text for r in rollouts], [{}] * 8))
    assert scores.std() > 0.01
    batch, valid = build_batch(rollouts, pad_id=0), torch.ones(8)
    cfg = PPOConfig(prompts="p", out="o", reward=["python:f.py:g"], value_head="shared", beta=0.0, k=1,
                    micro_batch_size=4, epochs_per_step=1, lr=1e-2, value_lr=1e-2, temperature=1.0)
    torch.manual_seed(0)
    policy = _policy(tiny_model_dir)
    value = shared_value_head(policy)
    params = list(policy.parameters()) + list(value.parameters())
    learner = Learner(policy, value, adamw([{"params": params}], lr=1e-2), params, "cpu", lambda: nullcontext())
    centred = scores - scores.mean()
    progress, value_losses = [], []
    for step in range(5):
        scored = score_batch(cfg, batch, policy.eval(), None, value, "cpu", nullcontext)
        progress.append(float((centred * scored.old_logp.sum(-1)).sum()))
        adv = advantages(cfg, batch, scores, valid, scored, 0.0, critic_from_policy=True)
        value_losses.append(update(cfg, step, batch, scored, adv, valid, learner)["value_loss"])
        policy.train()
    assert progress[-1] > progress[0] + 1.0, progress
    assert value_losses[-1] < value_losses[0], value_losses


def test_shared_ppo_saves_resumes_and_reloads(tmp_path: Path, tiny_model_dir: str) -> None:
    """A run resumed from its last checkpoint ends with the same policy and head as the run straight
    through; checkpoints and value/ hold the head alone, and load_value_model puts it on the saved policy."""
    from safetensors.torch import load_file

    from rlaif.train.online.trainer import train_online

    cfg = small(PPOConfig, tmp_path, tiny_model_dir, steps=3, reward=[f"python:{REWARDS}:short"], max_tokens=4,
                **{**SHARED, "save_steps": 1})
    train_online(cfg)
    out = Path(cfg.out)
    names = ("model.safetensors", "value/value_head.safetensors")
    straight = {name: load_file(str(out / name)) for name in names}
    assert set(torch.load(out / "checkpoints" / "step-2" / "value.pt", weights_only=True)) == \
        {"head.weight", "head.bias"}
    (out / "summary.json").unlink()            # as if killed after the step-2 checkpoint: step 3 is redone
    assert train_online(cfg)["resumed_from"] == 2
    for name in names:
        again = load_file(str(out / name))
        assert all(torch.equal(straight[name][k], again[k]) for k in again), name
    assert not (out / "value" / "config.json").exists()       # the backbone is the policy in out/
    reloaded = load_value_model(out / "value")
    head = SharedValueHead(_policy(str(out)), reloaded_head(out))
    ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), head(ids, mask))
        assert float(head(ids, mask).abs().sum()) > 0


def reloaded_head(out: Path) -> torch.nn.Linear:
    from safetensors.torch import load_file

    saved = load_file(str(out / "value" / "value_head.safetensors"))
    head = torch.nn.Linear(saved["weight"].shape[1], 1)
    with torch.no_grad():
        head.weight.copy_(saved["weight"])
        head.bias.copy_(saved["bias"])
    return head
