"""Rollout engine: hf on the tiny random Llama (fast), vLLM on the embedded model (slow)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlaif.backends.base import BackendConfig
from rlaif.errors import UserError
from rlaif.train.online.rollouts import Rollout, RolloutEngine, policy_weights

MESSAGES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write a long and careful explanation of why the sky is blue."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
]


def trainer_logprobs(model, r: Rollout, temperature: float) -> torch.Tensor:
    """What the trainer computes: log_softmax(logits / T) at the sampled ids, (len(completion),)."""
    ids = torch.tensor([r.prompt_ids + r.completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(r.prompt_ids) - 1:-1].float()
    logp = torch.log_softmax(logits / temperature, -1)
    return logp.gather(-1, torch.tensor(r.completion_ids).unsqueeze(-1)).squeeze(-1)


def mean_gap(model, rollouts: list[Rollout], temperature: float) -> float:
    gaps = [(torch.tensor(r.engine_logprobs) - trainer_logprobs(model, r, temperature)).abs() for r in rollouts]
    return torch.cat(gaps).mean().item()


@pytest.fixture()
def policy(tiny_model_dir: str):
    """The tiny policy with its EOS logit raised by 3, so samples both stop and run out of tokens."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.eos_token_id] = 3.0
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    model.train()
    return model, tok


@pytest.fixture()
def hf_engine(policy, tiny_model_dir: str) -> RolloutEngine:
    model, tok = policy
    return RolloutEngine("hf", tiny_model_dir, tok, max_prompt_length=64, hf_model=model,
                         backend_options=BackendConfig(batch_size=5))


def test_shapes_grouping_text_and_finished(hf_engine: RolloutEngine, policy) -> None:
    model, tok = policy
    prompts = [hf_engine.prompt_ids(m) for m in MESSAGES]
    out = hf_engine.generate(prompts, 4, temperature=1.0, top_p=1.0, max_tokens=6, seed=1)
    assert len(out) == 12 and [r.prompt_index for r in out] == [i for i in range(3) for _ in range(4)]
    assert all(r.prompt_ids == prompts[r.prompt_index] for r in out)
    for r in out:
        assert 1 <= len(r.completion_ids) == len(r.engine_logprobs) <= 6
        assert r.text == tok.decode(r.completion_ids, skip_special_tokens=True)
        assert r.finished == (r.completion_ids[-1] == tok.eos_token_id)
        assert r.finished or len(r.completion_ids) == 6
        assert tok.eos_token_id not in r.completion_ids[:-1]
    assert {r.finished for r in out} == {True, False}
    assert model.training  # the trainer's mode is restored


def test_prompt_ids_are_the_chat_template_left_truncated(hf_engine: RolloutEngine, policy) -> None:
    _, tok = policy
    full = tok.apply_chat_template(MESSAGES[1], add_generation_prompt=True, tokenize=False)
    want = tok.encode(full, add_special_tokens=False)
    assert len(want) > 20
    assert hf_engine.prompt_ids(MESSAGES[1]) == want
    hf_engine.max_prompt_length = 8
    assert hf_engine.prompt_ids(MESSAGES[1]) == want[-8:]


def test_seeds_reproduce_and_ignore_batch_companions(hf_engine: RolloutEngine) -> None:
    prompts = [hf_engine.prompt_ids(m) for m in MESSAGES]
    kw = dict(temperature=1.0, top_p=1.0, max_tokens=8)
    a = hf_engine.generate(prompts, 3, seed=7, **kw)
    b = hf_engine.generate(prompts, 3, seed=7, **kw)
    head = hf_engine.generate(prompts[:1], 3, seed=7, **kw)
    other = hf_engine.generate(prompts, 3, seed=8, **kw)
    ids = [r.completion_ids for r in a]
    assert ids == [r.completion_ids for r in b]
    assert ids[:3] == [r.completion_ids for r in head]
    assert ids != [r.completion_ids for r in other]
    assert len({tuple(i) for i in ids[:3]}) > 1  # the k samples of one prompt differ


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_logprobs_match_the_trainer_and_sync_is_a_no_op(hf_engine: RolloutEngine, policy, temperature: float) -> None:
    model, _ = policy
    prompts = [hf_engine.prompt_ids(m) for m in MESSAGES]
    kw = dict(temperature=temperature, top_p=1.0, max_tokens=8, seed=3)
    assert mean_gap(model, hf_engine.generate(prompts, 2, **kw), temperature) < 1e-4
    with torch.no_grad():  # the trainer updates its weights: the hf engine samples with them at once
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    assert hf_engine.sync(model) == hf_engine.last_sync_s < 0.01
    assert mean_gap(model, hf_engine.generate(prompts, 2, **kw), temperature) < 1e-4


def test_engine_arguments_are_checked(tiny_model_dir: str, policy) -> None:
    _, tok = policy
    with pytest.raises(ValueError, match="hf_model"):
        RolloutEngine("hf", tiny_model_dir, tok, max_prompt_length=8)
    with pytest.raises(UserError, match="rollout engine"):
        RolloutEngine("sglang", tiny_model_dir, tok, max_prompt_length=8, hf_model=policy[0])  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"^option 'rollout.replicas': 2 needs engine=vllm \(the hf engine samples"):
        RolloutEngine("hf", tiny_model_dir, tok, max_prompt_length=8, hf_model=policy[0],
                      backend_options=BackendConfig(replicas=2))


def test_policy_weights_plain_and_lora_merged(tiny_model_dir: str) -> None:
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    plain = dict(policy_weights(base))
    assert plain.keys() == dict(base.named_parameters()).keys() and "lm_head.weight" not in plain  # tied
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # B starts at zero: make the adapter change something
    merged = dict(policy_weights(lora))
    want = copy.deepcopy(lora).merge_and_unload()
    assert merged.keys() == plain.keys()
    for name, w in want.named_parameters():
        assert torch.allclose(merged[name], w, atol=1e-6), name
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[q], plain[q])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], plain["model.layers.0.mlp.up_proj.weight"])


# --- vLLM (slow) ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_engine(embedded_model_dir: str):
    pytest.importorskip("vllm")
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    engine = RolloutEngine("vllm", embedded_model_dir, tok, max_prompt_length=256,
                           backend_options=BackendConfig(gpu_memory_utilization=0.15, max_model_len=1024))
    yield engine, tok
    engine.close()


@pytest.mark.slow
def test_vllm_rollouts_ids_text_and_stale_weights(vllm_engine, embedded_model_dir: str) -> None:
    """Float32 engine vs float32 trainer: the log-prob gap is ~0 with the same weights, large
    after the trainer changes its weights without a sync, and ~0 again after `sync`."""
    engine, tok = vllm_engine
    trainer = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    prompts = [engine.prompt_ids(m) for m in MESSAGES]
    for m, p in zip(MESSAGES, prompts):
        assert p == tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
    kw = dict(temperature=0.9, top_p=1.0, max_tokens=48, seed=5)
    out = engine.generate(prompts, 2, **kw)
    assert [r.prompt_index for r in out] == [0, 0, 1, 1, 2, 2]
    for r in out:
        assert r.prompt_ids == prompts[r.prompt_index] and len(r.completion_ids) == len(r.engine_logprobs)
        assert r.text == tok.decode(r.completion_ids, skip_special_tokens=True)
        assert r.finished == (r.completion_ids[-1] == tok.eos_token_id)
        assert r.finished or len(r.completion_ids) == 48
    assert any(r.finished for r in out)
    assert [r.completion_ids for r in engine.generate(prompts, 2, **kw)] == [r.completion_ids for r in out]
    same = mean_gap(trainer, out, 0.9)
    original = {n: p.detach().clone() for n, p in trainer.named_parameters()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * p.std() * 0.3)
    stale = mean_gap(trainer, engine.generate(prompts, 2, **kw), 0.9)
    seconds = engine.sync(trainer)
    synced = mean_gap(trainer, engine.generate(prompts, 2, **kw), 0.9)
    print(f"gap same={same:.2e} stale={stale:.3f} synced={synced:.2e} sync={seconds:.2f}s")
    assert same < 1e-3 and synced < 1e-3 and stale > 0.1  # measured: 5e-6, 3e-5, 9.1
    with torch.no_grad():  # leave the engine as it was
        for n, p in trainer.named_parameters():
            p.copy_(original[n])
    engine.sync(trainer)
    assert mean_gap(trainer, engine.generate(prompts, 2, **kw), 0.9) < 1e-3
