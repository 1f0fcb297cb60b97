"""Split a conversation plus an assistant reply into prompt tokens and reply tokens.

The rule every engine shares for ``response_logprobs`` (likelihood judging, GPTScore):

* prompt ids: the chat template rendered with ``add_generation_prompt=True``, tokenized without
  extra special tokens (the template already writes them);
* reply ids: the tokens of the reply text followed by the template's end-of-turn marker, i.e. the
  text the template writes after the generation prompt when the reply is appended as an
  assistant message (``<|im_end|>`` for ChatML), with trailing whitespace after the marker
  dropped. Scoring the end-of-turn marker makes an empty reply well defined (one token) and makes
  a reply cut off mid-sentence unlikely, as it should be.

Where the template does not render the reply as a plain continuation of the generation prompt
(templates that rewrite earlier turns), the reply is tokenized on its own and the tokenizer's
EOS token is appended.
"""

from __future__ import annotations

from typing import Any

from rlaif.backends.base import Conversation


def _ids(encoded: Any) -> list[int]:
    """apply_chat_template / encode return a list, or a BatchEncoding in transformers 5."""
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    return list(encoded)


def reply_token_ids(tokenizer: Any, conversation: Conversation, reply: str) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids incl. the end-of-turn marker) for scoring ``reply`` after ``conversation``."""
    messages = list(conversation)
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}],
                                              tokenize=False)
    prompt_ids = _ids(tokenizer.encode(prompt_text, add_special_tokens=False))
    if full_text.startswith(prompt_text):
        tail = full_text[len(prompt_text):].rstrip()
        reply_ids = _ids(tokenizer.encode(tail, add_special_tokens=False))
    else:
        reply_ids = _ids(tokenizer.encode(reply, add_special_tokens=False))
        if tokenizer.eos_token_id is not None:
            reply_ids.append(int(tokenizer.eos_token_id))
    return prompt_ids, reply_ids
