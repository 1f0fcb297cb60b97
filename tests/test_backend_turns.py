"""Prompt / reply token split shared by every engine's response_logprobs."""

from __future__ import annotations

from transformers import AutoTokenizer

from rlaif.backends.turns import reply_token_ids


def test_reply_ids_continue_the_generation_prompt_and_end_with_the_turn_marker(tiny_tokenizer_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    conv = [{"role": "user", "content": "What is two plus two?"}]
    prompt, reply = reply_token_ids(tok, conv, "Four.")
    full = tok.apply_chat_template(conv + [{"role": "assistant", "content": "Four."}], tokenize=False)
    assert tok.decode(prompt + reply) == full.rstrip()
    assert tok.decode(reply).startswith("Four.")
    assert reply[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_empty_reply_is_the_turn_marker_alone(tiny_tokenizer_dir: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    _, reply = reply_token_ids(tok, [{"role": "user", "content": "hi"}], "")
    assert reply == [tok.convert_tokens_to_ids("<|im_end|>")]
