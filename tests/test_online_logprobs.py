"""rlaif.train.online.logprobs: the chunked log-prob path equals the plain formula (full logits, gather -
logsumexp, softmax entropy) in values, entropy and gradients, on the tiny random Llama and on raw logits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlaif.train.modeling import position_ids
from rlaif.train.online import logprobs, maths
from rlaif.train.online.step import build_batch


def _formula(model, b, temperature: float):
    """The formula the module replaces: full logits from the model's forward, / T, gather - logsumexp."""
    first = int(b.positions.min())
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=position_ids(b.attention_mask),
                logits_to_keep=b.input_ids.shape[1] - first, use_cache=False)
    rows = torch.arange(b.positions.shape[0]).unsqueeze(-1)
    logits = out.logits[rows, b.positions - first].float() / temperature
    logp = logits.gather(-1, b.targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    return logp * b.mask, maths.entropy_from_logits(logits.detach(), b.mask)


def _batch(vocab: int):
    """6 ragged rollouts: prompts of 3-7 tokens, completions of 1-6 (the longest prompt with the shortest)."""
    g = torch.Generator().manual_seed(1)
    rs = []
    for p, c in [(3, 6), (5, 2), (7, 1), (4, 5), (6, 3), (3, 4)]:
        ids = torch.randint(5, vocab, (p + c,), generator=g).tolist()
        rs.append(SimpleNamespace(prompt_ids=ids[:p], completion_ids=ids[p:], engine_logprobs=[0.0] * c))
    return build_batch(rs, pad_id=0)


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_the_formula_with_gradients(tiny_model_dir, monkeypatch, temperature):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 3 * model.config.vocab_size)  # several row chunks
    b = _batch(model.config.vocab_size)
    weights = torch.randn(b.mask.shape, generator=torch.Generator().manual_seed(2))

    ref_logp, ref_ent = _formula(model, b, temperature)
    ref_grads = _grads(model, (ref_logp * weights).sum())
    logp, ent = logprobs.token_logprobs(model, b, temperature, entropy=True)
    grads = _grads(model, (logp * weights).sum())

    assert logp.shape == ref_logp.shape and bool((logp[b.mask == 0] == 0).all())
    torch.testing.assert_close(logp, ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    assert not ent.requires_grad
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert logprobs.token_logprobs(model, b, temperature)[1] is None


def test_selective_log_softmax_on_raw_logits(monkeypatch):
    """Values, entropy and the logits' gradient against log_softmax + gather, in row chunks of 2."""
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 2 * 11)
    g = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(7, 11, generator=g)).requires_grad_()
    targets = torch.randint(0, 11, (7,), generator=g)
    upstream = torch.randn(7, generator=g)
    logp, ent = logprobs.SelectiveLogSoftmax.apply(logits, targets, 0.5, True)
    (grad,) = torch.autograd.grad((logp * upstream).sum(), logits)
    ref = torch.log_softmax(logits / 0.5, -1)
    ref_logp = ref.gather(-1, targets[:, None]).squeeze(-1)
    (ref_grad,) = torch.autograd.grad((ref_logp * upstream).sum(), logits)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1))
    torch.testing.assert_close(grad, ref_grad)
