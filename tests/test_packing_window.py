"""Packed rows under a sliding attention window: per-row attention (``use_varlen_attention``) gives
each row the logits of the padded computation with the model's own sliding-window mask, for rows
longer than the window; and ``sliding_window`` reads the window from each way configs carry it."""

import pytest
import torch

from rlaif.train.packing import PackedRow, pack, sliding_window, use_varlen_attention

LENGTHS = [11, 3, 9, 4, 13]  # rows longer and shorter than the window (4)
KV = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
          num_hidden_layers=3, max_position_embeddings=64)


def _mistral():
    from transformers import MistralConfig
    return MistralConfig(sliding_window=4, **KV)  # every layer slides


def _qwen2():
    from transformers import Qwen2Config
    return Qwen2Config(use_sliding_window=True, sliding_window=4, max_window_layers=1, **KV)  # layer 0 full, 1-2 slide


def _qwen2_moe():
    from transformers import Qwen2MoeConfig  # its attention does not hand the window to the attention function
    return Qwen2MoeConfig(use_sliding_window=True, sliding_window=4, max_window_layers=1, num_experts=2,
                          num_experts_per_tok=1, moe_intermediate_size=8, shared_expert_intermediate_size=8, **KV)


def _gemma3():
    from transformers import Gemma3TextConfig  # alternating layers: 0 and 2 slide, 1 attends fully
    return Gemma3TextConfig(sliding_window=4, sliding_window_pattern=2, head_dim=4, **KV)


def _rows() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, 64, (n,), generator=g).tolist() for n in LENGTHS]


def _padded_logits(model, rows: list[list[int]]) -> list[torch.Tensor]:
    """Right-padded (B, T) rows with an attention mask: transformers builds the sliding-window mask."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    return [logits[i, :len(r)] for i, r in enumerate(rows)]


@pytest.mark.parametrize("make", [_mistral, _qwen2, _qwen2_moe, _gemma3])
@pytest.mark.parametrize("attention", ["varlen", "sdpa"])
def test_packed_rows_longer_than_the_window_give_the_padded_logits(make, attention):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make(), attn_implementation="sdpa", dtype=torch.float32).eval()
    rows = _rows()
    with torch.no_grad():
        want = _padded_logits(model, rows)
        model.config.sliding_window = 1000  # the masks read it: the same weights without a window
        full = _padded_logits(model, rows)
        model.config.sliding_window = 4
        if attention == "varlen":  # rm / dpo / sft / online trainers; "sdpa": transformers' block-diagonal mask
            use_varlen_attention(model)
        batch = pack([PackedRow(r, [0] * len(r)) for r in rows])
        got = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
        unmasked = model(input_ids=torch.tensor([rows[0], rows[0]]), use_cache=False).logits  # (2, T), no mask
    for i, w in enumerate(want):
        assert torch.allclose(got[batch.row_of == i], w, atol=1e-5, rtol=0), f"row {i} ({len(rows[i])} tokens)"
    assert torch.allclose(unmasked, want[0].expand_as(unmasked), atol=1e-5, rtol=0)
    # the window changes the long rows' logits, so the check above could fail
    assert not torch.allclose(full[0], want[0], atol=1e-3)


@pytest.mark.parametrize("make", [_mistral, _qwen2])
def test_packed_pairs_give_the_padded_logprobs_and_rewards_under_a_window(make):
    """The trainers' own functions (dpo / rm) on packed vs right-padded pairs, responses past the window."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlaif.train.data import TokenizedPair, collate
    from rlaif.train.dpo import response_logprobs
    from rlaif.train.packing import pack_pairs
    from rlaif.train.rm import pair_rewards

    r = _rows()
    pairs = [TokenizedPair(r[0][:5], r[0][5:], r[2], index=0), TokenizedPair(r[1], r[4], r[3], index=1)]
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(make(), attn_implementation="sdpa", dtype=torch.float32).eval()
    config = make()
    config.num_labels, config.pad_token_id = 1, 0
    scorer = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa",
                                                            dtype=torch.float32).eval()
    with torch.no_grad():
        want, want_n = response_logprobs(policy, collate(pairs, 0))
        want_r = pair_rewards(scorer, collate(pairs, 0))
        use_varlen_attention(policy)
        use_varlen_attention(scorer)
        got, got_n = response_logprobs(policy, pack_pairs(pairs))
        got_r = pair_rewards(scorer, pack_pairs(pairs))
    assert got_n.tolist() == want_n.tolist()
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert torch.allclose(got_r, want_r, atol=1e-5, rtol=0)


def test_sliding_window_is_read_from_each_config_convention():
    from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config,
                              Qwen3Config)

    assert sliding_window(MistralConfig(sliding_window=8)) == 8
    assert sliding_window(MistralConfig(sliding_window=None)) is None
    assert sliding_window(Qwen2Config(sliding_window=8, use_sliding_window=False)) is None
    assert sliding_window(Qwen2Config(sliding_window=8, use_sliding_window=True, max_window_layers=1,
                                      num_hidden_layers=2)) == 8
    # max_window_layers >= layers: no layer slides although the window is set
    assert sliding_window(Qwen2Config(sliding_window=8, use_sliding_window=True, max_window_layers=4,
                                      num_hidden_layers=2)) is None
    assert sliding_window(Qwen3Config(sliding_window=8, layer_types=["full_attention"] * 2,
                                      num_hidden_layers=2)) is None
    assert sliding_window(Gemma2Config(sliding_window=8, num_hidden_layers=2)) == 8
    assert sliding_window(Gemma3TextConfig(sliding_window=8, sliding_window_pattern=2, num_hidden_layers=2)) == 8
    assert sliding_window(Gemma3TextConfig(sliding_window=8, sliding_window_pattern=1, num_hidden_layers=2)) is None
    assert sliding_window(LlamaConfig()) is None
    # per layer: Qwen2's first max_window_layers layers attend fully, Gemma2 alternates from a sliding layer 0
    q = Qwen2Config(sliding_window=8, use_sliding_window=True, max_window_layers=1, num_hidden_layers=2)
    assert [sliding_window(q, i) for i in range(2)] == [None, 8]
    assert [sliding_window(Gemma2Config(sliding_window=8, num_hidden_layers=2), i) for i in range(2)] == [8, None]
