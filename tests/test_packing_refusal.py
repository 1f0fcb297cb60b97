"""Models whose layers would mix packed rows (state-space, linear or chunked attention, conv) are
refused before training, in one line; attention-only models (sliding windows included) pack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from rlaif.train.packing import packing_refusal

ASSETS = Path(__file__).parent / "assets" / "prefs"


def _config(name: str, **kwargs):
    return getattr(transformers, name)(**kwargs)


@pytest.mark.parametrize("name, kwargs", [
    ("LlamaConfig", {}),
    ("MistralConfig", {"sliding_window": 4}),
    ("Qwen2Config", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
    ("Gemma3TextConfig", {}),
])
def test_attention_only_models_pack(name: str, kwargs: dict) -> None:
    assert packing_refusal(_config(name, num_hidden_layers=2, **kwargs)) is None


@pytest.mark.parametrize("name, expected, kwargs", [
    ("Qwen3NextConfig", "'linear_attention' layers", {}),   # gated delta net layers
    ("Lfm2Config", "'conv' layers", {"num_hidden_layers": 2, "full_attn_idxs": [1]}),  # short convolutions
    ("JambaConfig", "'linear_attention' layers", {}),       # transformers' name for its mamba layers
    ("BambaConfig", "'linear_attention' layers", {}),
    ("FalconH1Config", "'hybrid' layers", {}),
    ("RwkvConfig", "recurrent (state-space) layers", {}),     # no layer list: known recurrent model types
    ("xLSTMConfig", "recurrent (state-space) layers", {}),
    ("RecurrentGemmaConfig", "'recurrent' layers", {}),     # block_types
    ("Llama4TextConfig", "chunk", {}),                      # chunked attention across the packed sequence
])
def test_models_whose_layers_mix_rows_are_refused(name: str, expected: str, kwargs: dict) -> None:
    reason = packing_refusal(_config(name, **kwargs))
    assert reason is not None and expected in reason, reason


def test_a_config_with_mamba_settings_and_no_layer_list_is_refused() -> None:
    """As a remote-code hybrid (or an older transformers' Bamba) describes itself."""
    config = transformers.PretrainedConfig(mamba_d_state=16, num_hidden_layers=2)
    assert "recurrent (state-space) layers" in packing_refusal(config)


def test_a_multimodal_config_is_judged_by_its_text_model() -> None:
    assert "chunk" in packing_refusal(transformers.Llama4Config())


def test_train_dpo_refuses_a_conv_model_in_one_line_and_pads_with_packing_off(
        tmp_path: Path, tiny_tokenizer_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoTokenizer, Lfm2Config, Lfm2ForCausalLM

    from rlaif.cli import main

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = Lfm2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, full_attn_idxs=[1],
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model_dir = tmp_path / "lfm2"
    Lfm2ForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    capsys.readouterr()  # the save's progress bars
    common = ["--data", str(ASSETS), "--model", str(model_dir), "batch_size=2", "max_steps=2", "progress=false",
              "save_steps=0"]

    assert main(["train", "dpo", *common, "--out", str(tmp_path / "packed")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("rlaif: error:")]
    assert len(errors) == 1 and "model type 'lfm2' has 'conv' layers" in errors[0], err
    assert "packing=false" in errors[0] and "Traceback" not in err

    assert main(["train", "dpo", *common, "--out", str(tmp_path / "padded"), "packing=false"]) == 0
    assert (tmp_path / "padded" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- online trainers pad such models

@pytest.fixture
def lfm2_dir(tmp_path: Path, tiny_tokenizer_dir: str) -> str:
    """A tiny random LFM2 (a short-convolution layer, then attention) with the tiny ChatML tokenizer."""
    from transformers import AutoTokenizer, Lfm2Config, Lfm2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = Lfm2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, full_attn_idxs=[1],
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        initializer_range=0.5)  # not near-uniform: rows mixed by packing show in the log-probs
    torch.manual_seed(0)
    Lfm2ForCausalLM(config).save_pretrained(tmp_path / "lfm2")
    tok.save_pretrained(tmp_path / "lfm2")
    return str(tmp_path / "lfm2")


def test_online_log_probs_of_a_conv_model_are_each_rows_own(lfm2_dir: str) -> None:
    """token_logprobs pads an LFM2's rows by default: each row's log-probs are those of the row run alone.
    Packed, the convolution would carry one row into the next (the assertion below shows they differ)."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from rlaif.train.online.batch import build_batch, token_logprobs

    model = AutoModelForCausalLM.from_pretrained(lfm2_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    rows = []
    for prompt_len, completion_len in [(5, 7), (9, 3), (3, 11)]:
        ids = torch.randint(3, model.config.vocab_size, (prompt_len + completion_len,), generator=g).tolist()
        rows.append(SimpleNamespace(prompt_ids=ids[:prompt_len], completion_ids=ids[prompt_len:],
                                    engine_logprobs=[0.0] * completion_len))
    batch = build_batch(rows, pad_id=0)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, temperature=1.0)
        packed, _ = token_logprobs(model, batch, temperature=1.0, packed=True)
        for i, row in enumerate(rows):
            alone, _ = token_logprobs(model, build_batch([row], pad_id=0), temperature=1.0)
            n = len(row.completion_ids)
            torch.testing.assert_close(logp[i, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
    assert (packed - logp).abs().max() > 1e-3


def test_grpo_trains_a_conv_model_with_padded_rows(tmp_path: Path, lfm2_dir: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`rlaif train grpo` on an LFM2 says once that it pads, trains, and its log-probs match the hf
    engine's sampling ones (a packed update would see rows mixed by the convolution)."""
    import json

    from rlaif.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {i}."}) + "\n" for i in range(2)))
    rewards = Path(__file__).parent / "assets" / "rewards_trainer.py"
    out = tmp_path / "out"
    assert main(["train", "grpo", "--prompts", str(prompts), "--model", lfm2_dir, "--out", str(out),
                 "--reward", f"python:{rewards}:short", "engine=hf", "prompts_per_step=2", "k=2", "steps=2",
                 "max_tokens=8", "lr=1e-3", "progress=false", "save_steps=0", "log_rollouts_every=0"]) == 0
    err = capsys.readouterr().err
    assert err.count("model type 'lfm2' has 'conv' layers (layer_types): the update pads its rows") == 1, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["logprob_gap"] < 1e-4 for r in rows), rows
