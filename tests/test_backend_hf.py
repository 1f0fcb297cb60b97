"""The transformers engine on a tiny random Llama (fast) and on the embedded model (slow)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlaif.backends.base import BackendConfig, SamplingParams
from rlaif.backends.choices import choice_token_ids, combine, render_prompt
from rlaif.backends.hf import HFBackend
from rlaif.errors import UserError

CONVS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Write a long and careful explanation of why the sky is blue."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "Name three fruits that are red and grow on trees, please."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: str) -> HFBackend:
    return HFBackend(BackendConfig(engine="hf", model=tiny_model_dir, batch_size=4))


def _texts(gens):
    return [[c.text for c in g.completions] for g in gens]


def test_greedy_batched_equals_unbatched(tiny: HFBackend, tiny_model_dir: str) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12)
    one = HFBackend(BackendConfig(engine="hf", model=tiny_model_dir, batch_size=1))
    batched = tiny.chat(CONVS, params, progress=False)
    single = one.chat(CONVS, params, progress=False)
    assert _texts(batched) == _texts(single)
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]


def test_left_padding_matches_unpadded_forward(tiny: HFBackend) -> None:
    # the shortest prompt gets the most padding in a batch of 4; its next-token distribution
    # must equal an unpadded forward pass of that prompt alone
    ids = tiny.tokenizer.encode(render_prompt(tiny.tokenizer, CONVS[0]), add_special_tokens=False)
    with torch.inference_mode():
        ref = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    choices = ["A", "B", "Yes", "No", "1", "2"]
    got = tiny.choice_logprobs(CONVS, choices, progress=False)[0]
    want = combine(dict(enumerate(ref.tolist())), choice_token_ids(tiny.tokenizer, choices))
    for c in choices:
        assert got[c] == pytest.approx(want[c], abs=1e-4)


def test_choice_logprobs_match_direct_forward_and_sum_below_one(tiny: HFBackend) -> None:
    choices = ["1", "2", "3", "4", "5"]
    prefix = "Score: "
    got = tiny.choice_logprobs(CONVS, choices, assistant_prefix=prefix, progress=False)
    ids_by_choice = choice_token_ids(tiny.tokenizer, choices)
    for conv, row in zip(CONVS, got):
        assert set(row) == set(choices)
        assert sum(math.exp(v) for v in row.values()) <= 1.0 + 1e-6
        ids = tiny.tokenizer.encode(render_prompt(tiny.tokenizer, conv, prefix), add_special_tokens=False)
        with torch.inference_mode():
            logp = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0, -1].float(), -1)
        for c in choices:
            direct = torch.logsumexp(logp[ids_by_choice[c]], 0).item()
            assert row[c] == pytest.approx(direct, abs=1e-4)


def test_choice_spellings_with_and_without_space(tiny: HFBackend) -> None:
    ids = choice_token_ids(tiny.tokenizer, ["A", " B", "Yes", "7"])
    assert len(ids["A"]) == 2  # "A" and " A" are both single tokens in SmolLM2's vocabulary
    assert ids[" B"] == choice_token_ids(tiny.tokenizer, ["B"])["B"]  # the choice is stripped
    assert len(ids["7"]) == 1  # " 7" starts with a bare space token, which is not a spelling
    with pytest.raises(UserError, match="same token"):
        choice_token_ids(tiny.tokenizer, ["1", "10"])


def test_seeds_reproduce_and_differ(tiny: HFBackend) -> None:
    params = SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=7)
    a = tiny.chat(CONVS[:2], params, progress=False)
    b = tiny.chat(CONVS[:2], params, progress=False)
    c = tiny.chat(CONVS[:2], SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=8), progress=False)
    assert _texts(a) == _texts(b)
    assert _texts(a) != _texts(c)
    assert a[0].completions[0].text != a[0].completions[1].text  # the n samples differ


def test_per_conversation_seed_ignores_batch_companions(tiny: HFBackend) -> None:
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=10)
    together = tiny.chat(CONVS, params, seeds=[11, 12, 13, 14], progress=False)
    alone = tiny.chat([CONVS[2]], params, seeds=[13], progress=False)
    reordered = tiny.chat([CONVS[3], CONVS[2]], params, seeds=[14, 13], progress=False)
    assert _texts(together)[2] == _texts(alone)[0] == _texts(reordered)[1]
    assert _texts(together)[3] == _texts(reordered)[0]


def test_length_stop_string_and_eos(tiny: HFBackend, tiny_model_dir: str) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8)
    first = tiny.chat([CONVS[1]], params, progress=False)[0].completions[0]
    assert (first.finish_reason, first.num_tokens) == ("length", 8)

    stop = first.text[3:6]
    cut = tiny.chat([CONVS[1]], SamplingParams(temperature=0.0, max_tokens=8, stop=[stop]), progress=False)
    comp = cut[0].completions[0]
    assert comp.finish_reason == "stop"
    assert comp.text == first.text[: first.text.find(stop)]
    assert comp.num_tokens < 8

    # make the first greedy token an end-of-sequence token: generation ends at once, without it
    own = HFBackend(BackendConfig(engine="hf", model=tiny_model_dir))
    ids = own.tokenizer.encode(render_prompt(own.tokenizer, CONVS[1]), add_special_tokens=False)
    with torch.inference_mode():
        greedy = own.model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False)[0, -1].item()
    own.eos_ids = {greedy}
    comp = own.chat([CONVS[1]], params, progress=False)[0].completions[0]
    assert (comp.finish_reason, comp.num_tokens, comp.text) == ("stop", 1, "")


def test_max_model_len_caps_each_row_alone(tiny: HFBackend, tiny_model_dir: str) -> None:
    lengths = [g.prompt_tokens for g in tiny.chat(CONVS, SamplingParams(max_tokens=1), progress=False)]
    capped = HFBackend(BackendConfig(engine="hf", model=tiny_model_dir, max_model_len=max(lengths) + 3))
    params = SamplingParams(temperature=0.0, max_tokens=8)
    gens = capped.chat(CONVS, params, progress=False)
    longest = lengths.index(max(lengths))
    assert (gens[longest].completions[0].num_tokens, gens[longest].completions[0].finish_reason) == (3, "length")
    shortest = lengths.index(min(lengths))
    assert gens[shortest].completions[0].num_tokens == min(8, max(lengths) + 3 - min(lengths))
    assert _texts(gens)[shortest] == _texts(tiny.chat([CONVS[shortest]], params, progress=False))[0]
    with pytest.raises(UserError, match="max_model_len"):
        HFBackend(BackendConfig(engine="hf", model=tiny_model_dir, max_model_len=5)).chat(
            CONVS[:1], params, progress=False)


def test_greedy_matches_transformers_generate(tiny: HFBackend) -> None:
    ids = tiny.tokenizer.encode(render_prompt(tiny.tokenizer, CONVS[2]), add_special_tokens=False)
    with torch.inference_mode():
        ref = tiny.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):]
    got = tiny.chat([CONVS[2]], SamplingParams(temperature=0.0, max_tokens=6), progress=False)
    assert got[0].completions[0].text == tiny.tokenizer.decode(ref, skip_special_tokens=True)


def test_sampler_follows_softmax_and_top_p() -> None:
    from rlaif.backends.hf_sampling import sample

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0]).repeat(6000, 1)  # (B, V)
    u = torch.rand(6000, generator=torch.Generator().manual_seed(0))
    want = torch.softmax(logits[0] / 0.7, -1)
    got = torch.bincount(sample(logits, SamplingParams(temperature=0.7), u)[0], minlength=5) / 6000
    assert torch.allclose(got, want, atol=0.02) and got[4] == 0
    # top_p=0.8 keeps the smallest head reaching 0.8: tokens 0 and 1 (p = 0.76, 0.18 at T=0.7)
    got = torch.bincount(sample(logits, SamplingParams(temperature=0.7, top_p=0.8), u)[0], minlength=5) / 6000
    head = want[:2] / want[:2].sum()
    assert torch.allclose(got[:2], head, atol=0.02) and got[2:].sum() == 0


def test_top_p_nucleus_wider_than_the_candidates_falls_back_to_a_full_sort() -> None:
    from rlaif.backends.hf_sampling import TOP_P_CANDIDATES, sample

    V = 4 * TOP_P_CANDIDATES  # flat logits: the 0.9 nucleus is 0.9 V tokens, beyond the top-k candidates
    logits = torch.zeros(2000, V)
    logits[:, : V // 2] = 0.01  # the first half is slightly likelier: all of it is in the nucleus
    u = torch.rand(2000, generator=torch.Generator().manual_seed(1))
    tokens, logp = sample(logits, SamplingParams(temperature=1.0, top_p=0.9), u, with_logprobs=True)
    kept = int(0.9 * V) + 1  # smallest count of (near-uniform) tokens whose mass reaches 0.9
    assert len(set(tokens.tolist())) > TOP_P_CANDIDATES
    assert (tokens < V // 2).float().mean() == pytest.approx(0.5 * V / kept, abs=0.04)
    assert torch.allclose(logp.exp() * kept, torch.ones_like(logp), atol=0.02)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.3, 0.8), (0.0, 1.0)])
def test_token_ids_and_logprobs_match_a_forward_pass(tiny: HFBackend, temperature: float, top_p: float) -> None:
    """The returned ids are what was sampled (they decode to the text) and each log-prob is the
    sampled token's log-prob under softmax(logits / T), top-p filtered and renormalized."""
    params = SamplingParams(n=2, temperature=temperature, top_p=top_p, max_tokens=10, seed=4, logprobs=True)
    gens = tiny.chat(CONVS[:2], params, progress=False)
    plain = tiny.chat(CONVS[:2], dataclasses.replace(params, logprobs=False), progress=False)
    assert _texts(plain) == _texts(gens)  # asking for log-probs changes no sample
    assert all(c.logprobs is None and c.token_ids for g in plain for c in g.completions)
    for conv, g in zip(CONVS[:2], gens):
        prompt = tiny.tokenizer.encode(render_prompt(tiny.tokenizer, conv), add_special_tokens=False)
        for c in g.completions:
            assert len(c.token_ids) == len(c.logprobs) == c.num_tokens
            assert tiny.tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
            with torch.inference_mode():
                logits = tiny.model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1:-1].float()
            logp = torch.log_softmax(logits / (temperature or 1.0), -1)  # (T, V)
            if top_p < 1.0:
                probs, order = logp.exp().sort(-1, descending=True)
                outside = probs.cumsum(-1) - probs >= top_p  # sorted order -> vocabulary order:
                drop = torch.zeros_like(outside).scatter(-1, order, outside)
                logp = torch.log_softmax(logp.masked_fill(drop, -math.inf), -1)
            want = logp.gather(-1, torch.tensor(c.token_ids).unsqueeze(-1)).squeeze(-1)
            assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4), (c.logprobs, want.tolist())


def test_missing_model_path_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        HFBackend(BackendConfig(engine="hf", model=str(tmp_path / "nope")))


def test_non_causal_model_is_a_user_error(tmp_path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="not a causal language model"):
        HFBackend(BackendConfig(engine="hf", model=str(tmp_path)))


def test_auto_engine_falls_back_to_hf_without_vllm(tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from rlaif.backends import load_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    backend = load_backend(BackendConfig(engine="auto", model=tiny_model_dir))
    assert isinstance(backend, HFBackend) and backend.model_id == f"hf:{tiny_model_dir}"


@pytest.mark.slow
def test_embedded_model_answers_and_judges(embedded_model_dir: str) -> None:
    hf = HFBackend(BackendConfig(engine="hf", model="smollm2-135m", batch_size=8))
    conv = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    gen = hf.chat([conv], SamplingParams(n=2, temperature=0.0, max_tokens=16), progress=False)[0]
    assert "paris" in gen.completions[0].text.lower()
    assert gen.completions[0].text == gen.completions[1].text  # greedy
    assert gen.completions[0].finish_reason == "stop"
    lp = hf.choice_logprobs([conv], ["Paris", "London"], progress=False)[0]
    assert lp["Paris"] > lp["London"]
    hf.close()


def _forward_batch_sizes(backend: HFBackend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every forward pass the engine makes."""
    sizes: list[int] = []
    real = backend._forward

    def spy(ids, mask, *args, **kwargs):
        sizes.append(ids.shape[0])
        return real(ids, mask, *args, **kwargs)

    monkeypatch.setattr(backend, "_forward", spy)
    return sizes


def test_samples_share_one_prefill_and_finished_rows_stop_stepping(tiny_model_dir: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = [len(tiny.tokenizer.encode(render_prompt(tiny.tokenizer, c), add_special_tokens=False))
               for tiny in [HFBackend(BackendConfig(engine="hf", model=tiny_model_dir))] for c in CONVS]
    # max_model_len gives each prompt a different budget: rows finish ("length") at different steps
    engine = HFBackend(BackendConfig(engine="hf", model=tiny_model_dir, batch_size=16, max_model_len=max(lengths) + 4))
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=5)
    sizes = _forward_batch_sizes(engine, monkeypatch)
    gens = engine.chat(CONVS, params, progress=False)
    assert sizes[0] == len(CONVS)  # the prefill: one row per prompt, not per sample
    room = [min(12, max(lengths) + 4 - n) for n in lengths]
    # decode step s (1-based) runs exactly the rows that still have budget after s tokens
    assert sizes[1:] == [3 * sum(r > s for r in room) for s in range(1, max(room))]
    assert [c.num_tokens for g in gens for c in g.completions] == [r for r in room for _ in range(3)]
    # and the samples are those of one row per batch (no shared prefill, no pruning)
    alone = HFBackend(BackendConfig(engine="hf", model=tiny_model_dir, batch_size=1, max_model_len=max(lengths) + 4))
    assert _texts(alone.chat(CONVS, params, progress=False)) == _texts(gens)


def test_response_logprobs_match_a_per_row_forward(tiny: HFBackend) -> None:
    from rlaif.backends.turns import reply_token_ids

    replies = ["Blue light scatters more.", "", "4", "Apples, cherries and plums are red tree fruits, I think."]
    got = tiny.response_logprobs(CONVS, replies, progress=False)
    for conv, reply, row in zip(CONVS, replies, got):
        prompt, ids = reply_token_ids(tiny.tokenizer, conv, reply)
        with torch.inference_mode():
            logp = torch.log_softmax(tiny.model(torch.tensor([prompt + ids])).logits[0].float(), -1)
        want = logp[len(prompt) - 1:-1].gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1)
        assert len(row) == len(ids) >= 1  # an empty reply still scores its end-of-turn marker
        assert torch.allclose(torch.tensor(row), want, atol=1e-4), (row, want.tolist())
    assert tiny.response_logprobs([], [], progress=False) == []
    with pytest.raises(ValueError, match="responses"):
        tiny.response_logprobs(CONVS, replies[:2], progress=False)


VERDICT = {"type": "object", "additionalProperties": False, "required": ["rationale", "score"],
           "properties": {"rationale": {"type": "string", "maxLength": 12},
                          "score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}}}


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_json_schema_makes_even_a_random_model_reply_valid_json(tiny: HFBackend, temperature: float) -> None:
    import json

    import jsonschema

    params = SamplingParams(n=3, temperature=temperature, max_tokens=48, seed=3, json_schema=VERDICT, logprobs=True)
    gens = tiny.chat(CONVS, params, progress=False)
    for g in gens:
        for c in g.completions:
            assert c.finish_reason == "stop" and c.token_ids[-1] in tiny.eos_ids, c
            jsonschema.validate(json.loads(c.text), VERDICT)
            assert c.text.startswith('{"rationale": "') and c.text.endswith("}")  # no free whitespace
            assert len(c.logprobs) == c.num_tokens and all(math.isfinite(v) for v in c.logprobs)
    free = tiny.chat(CONVS, dataclasses.replace(params, json_schema=None), progress=False)
    with pytest.raises(json.JSONDecodeError):  # without the grammar the random model writes no JSON
        [json.loads(c.text) for g in free for c in g.completions]


def test_json_schema_that_xgrammar_cannot_compile_is_a_user_error(tiny: HFBackend) -> None:
    with pytest.raises(UserError, match="json_schema"):
        tiny.chat(CONVS[:1], SamplingParams(max_tokens=4, json_schema={"type": "no-such-type"}), progress=False)


@pytest.mark.slow
def test_embedded_model_response_logprobs_agree_with_vllm_and_verdicts_parse(embedded_model_dir: str) -> None:
    import json

    import jsonschema

    pytest.importorskip("vllm")
    from rlaif.backends.vllm import VLLMBackend

    replies = ["The sky looks blue because air scatters short blue wavelengths of sunlight more than red ones.",
               "", "4", "Cherries, apples and plums."]
    hf = HFBackend(BackendConfig(engine="hf", model="smollm2-135m", dtype="float32", batch_size=3))
    ours = hf.response_logprobs(CONVS, replies, progress=False)
    schema = {**VERDICT, "properties": {**VERDICT["properties"], "rationale": {"type": "string", "maxLength": 60}}}
    judge = [[{"role": "user", "content": f"Rate this answer from 1 to 5 as JSON: {r or '(empty)'}"}] for r in replies]
    params = SamplingParams(temperature=0.7, max_tokens=48, seed=1, json_schema=schema)
    verdicts = hf.chat(judge, params, progress=False)
    hf.close()
    for g in verdicts:
        assert g.completions[0].finish_reason == "stop"
        jsonschema.validate(json.loads(g.completions[0].text), schema)
    # float32 on both: in bf16 (vLLM's default where the CPU has it) tokens differ by up to ~0.2 nats
    vllm_engine = VLLMBackend(BackendConfig(engine="vllm", model="smollm2-135m", dtype="float32",
                                            gpu_memory_utilization=0.1, max_model_len=1024))
    try:
        theirs = vllm_engine.response_logprobs(CONVS, replies, progress=False)
    finally:
        vllm_engine.close()
    for a, b in zip(ours, theirs):
        assert len(a) == len(b) >= 1
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3, (a, b)  # measured 4e-5
