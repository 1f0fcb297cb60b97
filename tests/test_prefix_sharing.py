"""Online rows that share a prefix (a GRPO group's prompt) run it once: the later rows are branches of
the first (packing.pack_sharing_prefixes), and log-probs, entropy, gradients and the shared value
head's hidden states equal the padded computation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlaif.train.online.batch import build_batch, token_logprobs
from rlaif.train.online.value import unpack_hidden
from rlaif.train.packing import MIN_SHARED, pack_sharing_prefixes, row_segments, use_varlen_attention
from test_online_batch_lean import TOL, _reference


def _grouped_batch(vocab: int, k: int = 3):
    """Two prompts (12 and 9 tokens) x k completions of 2-7 tokens, the groups interleaved, one
    completion starting like its sibling (so a branch shares more than the prompt), and a third
    prompt that starts like the first for fewer than MIN_SHARED tokens."""
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (12, 9)]
    prompts.append(prompts[0][:MIN_SHARED - 2] + torch.randint(3, vocab, (4,), generator=g).tolist())
    rows = []
    for j in range(k):
        for p, prompt in enumerate(prompts[:2]):
            own = torch.randint(3, vocab, (1 + (3 * j + p) % 6,), generator=g).tolist()
            completion = [3 + len(rows)] + own  # first tokens differ: the groups share exactly their prompt
            rows.append(SimpleNamespace(prompt_ids=prompt, completion_ids=completion, engine_logprobs=[0.0] * 7))
    rows[2].completion_ids = rows[0].completion_ids[:1] + rows[2].completion_ids  # shares prompt + 1 token
    rows.append(SimpleNamespace(prompt_ids=prompts[2], completion_ids=[5, 6], engine_logprobs=[0.0] * 2))
    return build_batch(rows, pad_id=0)


@pytest.fixture(scope="module")
def varlen_tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    use_varlen_attention(model)
    return model


def test_rows_starting_alike_become_branches_of_the_first():
    batch = _grouped_batch(64)
    lengths = batch.attention_mask.sum(-1)
    pack = pack_sharing_prefixes(batch.input_ids, batch.attention_mask)
    # group 0 (rows 0, 2, 4) runs its 12-token prompt once, group 1 (rows 1, 3, 5) its 9 tokens, row 6 all
    saved = 2 * 12 + 1 + 2 * 9
    assert pack.input_ids.shape[1] == int(lengths.sum()) - saved
    for i, n in enumerate(lengths.tolist()):  # every token maps to a packed position holding that token
        assert torch.equal(pack.input_ids[0, pack.index[i, :n]], batch.input_ids[i, :n])
        assert torch.equal(pack.position_ids[0, pack.index[i, :n]], torch.arange(n))
    segments = row_segments(pack.position_ids)
    assert [shared for _, _, shared in segments] == [0, 13, 12, 0, 9, 9, 0]  # row 0 + its 2 branches, ...
    plain = pack_sharing_prefixes(batch.input_ids, batch.attention_mask, share=False)
    assert plain.input_ids.shape[1] == int(lengths.sum())
    assert [shared for _, _, shared in row_segments(plain.position_ids)] == [0] * 7


def test_a_branch_never_continues_the_segment_before_it():
    """A row that extends an earlier row by tokens would start its branch where that row ends: it
    shares one token less, so the positions restart and the branch is seen as one."""
    base = list(range(3, 3 + MIN_SHARED + 2))
    ids = torch.tensor([base + [0, 0], base + [40, 41]])
    mask = torch.tensor([[1] * len(base) + [0, 0], [1] * (len(base) + 2)])
    pack = pack_sharing_prefixes(ids, mask)
    assert [shared for _, _, shared in row_segments(pack.position_ids)] == [0, len(base) - 1]
    assert torch.equal(pack.input_ids[0, pack.index[1]], ids[1])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_logprobs_entropy_and_gradients_equal_the_padded_computation(varlen_tiny, temperature):
    batch = _grouped_batch(varlen_tiny.config.vocab_size)
    seen = {}

    def on_body(mod, args, kwargs, out) -> None:
        seen.setdefault("tokens", kwargs["input_ids"].shape[1])

    hook = varlen_tiny.get_decoder().register_forward_hook(on_body, with_kwargs=True)
    try:
        logp, entropy = token_logprobs(varlen_tiny, batch, temperature, entropy=True)
    finally:
        hook.remove()
    assert seen["tokens"] < int(batch.attention_mask.sum())  # the prompts ran once per group
    ref_logp, ref_entropy = _reference(varlen_tiny, batch, temperature)
    assert torch.allclose(logp, ref_logp, atol=TOL, rtol=0)
    assert abs(float(entropy) - float(ref_entropy.detach())) < TOL
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    params = [p for p in varlen_tiny.parameters()]
    grads = torch.autograd.grad((logp * weights).sum(), params)
    ref_grads = torch.autograd.grad((ref_logp * weights).sum(), params)
    for grad, ref in zip(grads, ref_grads):
        assert torch.allclose(grad, ref, atol=TOL, rtol=1e-4)


def test_shared_value_head_reads_each_rows_hidden_states_back(varlen_tiny):
    """The PPO shared head's values come from the packed forward: a branch's prompt positions take the
    hidden states of the row it branches from, which are its own."""
    batch = _grouped_batch(varlen_tiny.config.vocab_size)
    decoder = varlen_tiny.get_decoder()
    with torch.no_grad():
        pack = pack_sharing_prefixes(batch.input_ids, batch.attention_mask)
        packed = decoder(input_ids=pack.input_ids, position_ids=pack.position_ids, use_cache=False).last_hidden_state
        padded = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
    got = unpack_hidden(packed, batch.input_ids, batch.attention_mask)
    real = batch.attention_mask.bool()
    assert torch.allclose(got[real], padded[real], atol=TOL, rtol=0)
    assert not got[~real].any()
