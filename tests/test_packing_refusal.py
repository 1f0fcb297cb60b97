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
