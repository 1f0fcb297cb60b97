"""Shared fixtures: the embedded 135M model and tiny random models built from a config."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    """Local safetensors folder of the embedded SmolLM2-135M-Instruct (converted once, cached)."""
    from rlaif.models import resolve_model

    return resolve_model("smollm2-135m")


def build_tiny_model(out: Path, tokenizer_dir: str, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """Save a random Llama (hidden ``hidden``, ``layers`` layers) with the given tokenizer to ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: str) -> str:
    """A 2-layer, hidden-32 random Llama with the embedded model's tokenizer and chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_model_dir)
