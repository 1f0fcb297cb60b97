"""Padding-free rm / dpo batches and lean log-probs: packed == padded per row, chunked == full,
a packed run == a padded run step by step, token budgets keep pairs whole, memory is logged."""

import json
from pathlib import Path

import pytest
import torch

from rlaif.train.config import DPOConfig, RMConfig
from rlaif.train.data import collate, load_splits, tokenize_rows
from rlaif.train.packing import pack_pairs, pair_batches, use_varlen_attention

ASSETS = Path(__file__).parent / "assets" / "prefs"


@pytest.fixture(scope="module")
def pairs(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenize_rows(tok, load_splits(ASSETS)["train"][:6], 1024, 512)[0], tok.pad_token_id


def _policy(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    use_varlen_attention(model)
    return model


def test_packed_pairs_give_the_per_row_logprobs_of_padded_rows(tiny_model_dir, pairs):
    from rlaif.train.dpo import response_logprobs

    pairs, pad = pairs
    model = _policy(tiny_model_dir)
    packed = pack_pairs(pairs)
    assert packed.padded_tokens == 0 and packed.input_ids.shape[0] == 1
    # the prompt is run once per pair (plus its last token at the head of the rejected branch)
    assert packed.input_ids.shape[1] == sum(p.packed_tokens for p in pairs) < sum(p.num_tokens for p in pairs)
    with torch.no_grad():
        got, got_n = response_logprobs(model, packed)
        want, want_n = response_logprobs(model, collate(pairs, pad))
    assert got_n.tolist() == want_n.tolist()
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    # bf16 autocast: both paths round differently; the summed log-probs (~ -400 over ~60 tokens) agree to 0.5%
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got16, _ = response_logprobs(model, packed)
        want16, _ = response_logprobs(model, collate(pairs, pad))
    assert torch.allclose(got16, want16, rtol=5e-3, atol=0.05)


def test_packed_pairs_give_the_reward_scores_of_padded_rows(tiny_model_dir, pairs):
    from rlaif.train.modeling import load_reward_model
    from rlaif.train.rm import pair_rewards

    pairs, pad = pairs
    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir, pad).eval()
    use_varlen_attention(model)
    with torch.no_grad():
        got = pair_rewards(model, pack_pairs(pairs))
        want = pair_rewards(model, collate(pairs, pad))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_row_segments_split_rows_at_position_zero_and_branches_where_positions_jump_back():
    from rlaif.train.packing import TokenizedPair, row_segments

    # two pairs: prompt 3 + chosen 2, branch (prompt's last + rejected 2); prompt 1 + chosen 1, rejected 3
    packed = pack_pairs([TokenizedPair([5, 6, 7], [8, 9], [10, 11]), TokenizedPair([5], [8], [10, 11, 12])])
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 0, 1, 0, 1, 2, 3]
    assert row_segments(packed.position_ids) == [(0, 5, 0), (5, 8, 2), (8, 10, 0), (10, 14, 0)]
    assert packed.row_of.tolist() == [0] * 5 + [2] * 3 + [1] * 2 + [3] * 4  # chosen rows 0-1, rejected 2-3
    assert packed.last.tolist() == [4, 9, 7, 13]
    # the branch's first token (the prompt's last, 7) predicts rejected[0]; prompt positions predict nothing
    assert packed.targets[0].tolist() == [-100, -100, 8, 9, -100, 10, 11, -100, 8, -100, 10, 11, 12, -100]


def test_chunked_head_logprobs_and_gradients_equal_the_full_log_softmax(monkeypatch):
    from rlaif.train import logprobs

    monkeypatch.setattr(logprobs, "LOGIT_CHUNK_ELEMENTS", 8 * 300)  # 8 positions a chunk: 5 chunks
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 300, (37,))
    full = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None])[:, 0]
    g_full = torch.autograd.grad(full.sum(), [hidden, head.weight])
    chunked, _ = logprobs.head_logprobs(head, hidden, targets)  # recomputed in backward
    g_chunked = torch.autograd.grad(chunked.sum(), [hidden, head.weight])
    assert torch.allclose(chunked, full, atol=1e-5)
    for a, b in zip(g_chunked, g_full):
        assert torch.allclose(a, b, atol=1e-5)
    hot, _ = logprobs.head_logprobs(head, hidden, targets, temperature=0.7)
    want = torch.log_softmax(head(hidden) / 0.7, -1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(hot, want, atol=1e-5)


def test_selected_logprobs_are_those_of_the_masked_positions_in_order(tiny_model_dir, pairs, monkeypatch):
    from rlaif.train import logprobs

    pairs, _ = pairs
    model = _policy(tiny_model_dir)
    monkeypatch.setattr(logprobs, "LOGIT_CHUNK_ELEMENTS", 7 * model.config.vocab_size)  # 7 positions a chunk
    batch = pack_pairs(pairs[:2])
    mask = batch.targets != -100
    with torch.no_grad():
        got = logprobs.selected_logprobs(model, batch.input_ids, batch.position_ids, batch.targets, mask)
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits.float()
    want = torch.log_softmax(logits, -1).gather(-1, batch.targets.clamp(min=0)[..., None])[..., 0]
    assert got.shape == (int(mask.sum()),) and int(mask.sum()) > 7
    assert torch.allclose(got, want[mask], atol=1e-5)


def test_token_budget_keeps_each_pair_whole_and_within_budget(pairs):
    pairs, _ = pairs
    many = pairs * 5
    batches = pair_batches(many, 400, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(many)))
    for b in batches:  # the budget is of positions the model runs: the prompt once per pair
        assert len(b) == 1 or sum(many[i].packed_tokens for i in b) <= 400
    assert any(sum(many[i].num_tokens for i in b) > 400 for b in batches)  # rows' tokens (prompt twice) may exceed it
    packed = pack_pairs([many[i] for i in batches[0]])
    assert packed.input_ids.shape[1] == sum(many[i].packed_tokens for i in batches[0])
    assert packed.real_tokens == sum(many[i].num_tokens for i in batches[0])


def _run(kind, tiny_model_dir, out, **kw):
    from rlaif.train.dpo import train_dpo
    from rlaif.train.rm import train_rm

    base = dict(data=str(ASSETS), model=tiny_model_dir, out=str(out), lr=2e-3, batch_size=4, max_steps=4,
                warmup_ratio=0.0, save_steps=0, logging_steps=1, progress=False, seed=1)
    if kind == "rm":
        summary = train_rm(RMConfig(**{**base, **kw}))
    else:
        summary = train_dpo(DPOConfig(**{**base, **kw}))
    lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return summary, [x for x in lines if "train/loss" in x]


@pytest.mark.parametrize("kind", ["rm", "dpo"])
def test_a_packed_run_follows_the_padded_run_step_by_step(tmp_path, tiny_model_dir, kind):
    """Same micro-batches (batch_size pairs, same order): only float summation order differs."""
    from safetensors.torch import load_file

    padded, padded_steps = _run(kind, tiny_model_dir, tmp_path / "padded", packing=False)
    packed, packed_steps = _run(kind, tiny_model_dir, tmp_path / "packed")
    assert padded["padding_fraction"] > 0 and packed["padding_fraction"] == 0
    assert len(packed_steps) == len(padded_steps) == 4
    for a, b in zip(packed_steps, padded_steps):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-5)
        assert a["train/tokens"] == b["train/tokens"]
        assert "train/memory/rss_growth_gib" in a
    wa, wb = load_file(tmp_path / "packed" / "model.safetensors"), load_file(tmp_path / "padded" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


def test_a_token_budget_run_packs_several_pairs_and_resumes_bit_identical(tmp_path, tiny_model_dir, pairs,
                                                                          monkeypatch):
    import shutil

    from safetensors.torch import load_file

    from rlaif.train import packing

    widths = []

    def spy(batch_pairs):
        packed = pack_pairs(batch_pairs)
        widths.append(packed.input_ids.shape[1])
        return packed

    monkeypatch.setattr(packing, "pack_pairs", spy)
    kw = dict(max_tokens_per_batch=700, batch_size=1, save_steps=2)
    whole, steps = _run("dpo", tiny_model_dir, tmp_path / "whole", **kw)
    biggest = max(p.num_tokens for p in pairs[0])
    assert max(s["train/tokens"] for s in steps) > biggest  # the budget, not batch_size=1, sets the micro-batch
    assert widths and max(widths) <= 700  # positions the model ran per micro-batch
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    for name in ("summary.json", "model.safetensors", "config.json"):
        (cut / name).unlink()
    resumed, _ = _run("dpo", tiny_model_dir, cut, **kw)
    assert resumed["resumed_from"] == 2
    wa, wb = load_file(tmp_path / "whole" / "model.safetensors"), load_file(cut / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
