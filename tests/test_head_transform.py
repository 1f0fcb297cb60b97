"""Models that change W h after the LM head (Cohere's logit_scale, Granite's logits_scaling): the lean
log-probs of dpo (selected_logprobs) and the online trainers (token_logprobs) equal log_softmax of
the model's own logits; a model changing them in a way rlaif does not know is refused at load."""

from __future__ import annotations

import pytest
import torch

from rlaif.errors import UserError
from rlaif.train import logprobs
from rlaif.train.logprobs import HeadTransform, check_head_transform, head_transform_of
from rlaif.train.online.batch import token_logprobs
from test_online_batch_lean import _batch

TOL = 1e-5  # float32
SMALL = dict(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, initializer_range=0.5, attn_implementation="eager")


def _cohere():
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(0)
    return CohereForCausalLM(CohereConfig(**SMALL, logit_scale=4.0)).eval()


def _granite():
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    return GraniteForCausalLM(GraniteConfig(**SMALL, logits_scaling=0.25)).eval()


def _model_logprobs(model, batch, temperature: float) -> torch.Tensor:
    """log_softmax(model logits / T) at each completion token, zero where masked: the truth."""
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions).logits
    rows = torch.arange(batch.mask.shape[0]).unsqueeze(-1)
    logp = torch.log_softmax(logits[rows, batch.positions].float() / temperature, -1)
    return logp.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1) * batch.mask


@pytest.mark.parametrize("make, scale", [(_cohere, 4.0), (_granite, 4.0)], ids=["cohere", "granite"])
@pytest.mark.parametrize("chunk_elements", [1 << 25, 3 * 96])  # one chunk; several
def test_scaled_logits_give_the_log_probs_of_the_model(make, scale, chunk_elements, monkeypatch):
    monkeypatch.setattr(logprobs, "LOGIT_CHUNK_ELEMENTS", chunk_elements)
    model = make()
    assert head_transform_of(model) == HeadTransform(scale, None)
    assert check_head_transform(model) == HeadTransform(scale, None)
    batch = _batch(model.config.vocab_size)
    keep = batch.mask > 0
    with torch.no_grad():
        want = _model_logprobs(model, batch, 0.7)
        unscaled = _model_logprobs(model, batch, 0.7 * scale)  # what the bare head W h / T would give
        assert (want - unscaled).abs().max() > 0.1  # the scale matters here
        online, _ = token_logprobs(model, batch, 0.7)
        rows = torch.arange(batch.mask.shape[0]).unsqueeze(-1).expand_as(batch.positions)
        targets = torch.zeros_like(batch.input_ids)
        targets[rows[keep], batch.positions[keep]] = batch.targets[keep]
        select = torch.zeros_like(targets, dtype=torch.bool)
        select[rows[keep], batch.positions[keep]] = True
        offline = logprobs.selected_logprobs(model, batch.input_ids, (batch.attention_mask.cumsum(-1) - 1).clamp(min=0),
                                             targets, select, 0.7, attention_mask=batch.attention_mask)
    assert torch.allclose(online, want, atol=TOL, rtol=1e-5)
    assert torch.allclose(offline, want[keep], atol=TOL, rtol=1e-5)


def test_a_model_whose_logits_are_changed_in_an_unknown_way_is_refused_in_one_line():
    from transformers import LlamaConfig, LlamaForCausalLM

    class ShiftedLogits(LlamaForCausalLM):
        """A model that adds a learnt-looking bias to its logits after the head."""

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits + torch.linspace(0, 3, out.logits.shape[-1])
            return out

    torch.manual_seed(0)
    config = LlamaConfig(**SMALL)
    plain = LlamaForCausalLM(LlamaConfig(**SMALL, attention_dropout=0.5)).train()
    assert check_head_transform(plain) == HeadTransform()  # the plain model passes, dropout or not
    assert plain.training  # and is left in the mode it was in
    with pytest.raises(UserError, match=r"model type 'llama': its logits differ from the LM head's output") as caught:
        check_head_transform(ShiftedLogits(config))
    assert "\n" not in str(caught.value)
