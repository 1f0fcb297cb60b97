"""Shared pieces of ``choice_logprobs`` for engines that own a tokenizer (vllm, hf).

How a choice string becomes next tokens (the same rule on every engine):

* The context is the chat template rendered with ``add_generation_prompt=True`` followed by
  ``assistant_prefix`` verbatim, tokenized without extra special tokens.
* A choice ``c`` is spelled by the first token of ``c`` and by the first token of ``" " + c``
  (the choice is stripped first). Where the leading-space spelling starts with a bare
  whitespace token (digits in SmolLM2's tokenizer: ``" 1"`` -> ``[" ", "1"]``) it is dropped.
  The choice's probability is the sum over its spellings: they are different next tokens, so
  the sum is still a probability, and the result does not depend on whether the prefix ends in
  a space (``"Score: "`` makes ``"1"`` likely, ``"Answer:"`` makes ``" A"`` likely).
* Choices should be single tokens (``"1"``..``"5"``, ``"A"``/``"B"``, ``"Yes"``/``"No"``): then
  all engines (the openai engine matches whole token strings) agree. A multi-token choice is
  scored by its first token, and two choices sharing a token are an error (e.g. ``"1"``/``"10"``
  with a digit-splitting tokenizer), because their probabilities would be counted twice.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from rlaif.backends.base import Conversation
from rlaif.errors import UserError


def render_prompt(tokenizer: Any, conversation: Conversation, assistant_prefix: str = "") -> str:
    """Chat template with the assistant turn opened, then ``assistant_prefix`` verbatim."""
    text = tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def choice_token_ids(tokenizer: Any, choices: Sequence[str]) -> dict[str, list[int]]:
    """Map each choice to the token ids that spell its start (see the module docstring)."""
    if not choices:
        raise UserError("choice_logprobs: no choices given")
    out: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for choice in choices:
        word = choice.strip()
        if not word:
            raise UserError(f"choice_logprobs: choice {choice!r} is empty or only whitespace")
        ids: list[int] = []
        for spelling in (word, " " + word):
            toks = tokenizer.encode(spelling, add_special_tokens=False)
            if toks and tokenizer.decode(toks[:1]).strip() and toks[0] not in ids:
                ids.append(toks[0])
        for t in ids:
            if t in owner and owner[t] != choice:
                raise UserError(f"choice_logprobs: choices {owner[t]!r} and {choice!r} start with the "
                                f"same token {tokenizer.decode([t])!r}; use choices that are single "
                                f"tokens and differ in their first token")
            owner[t] = choice
        out[choice] = ids
    return out


def logsumexp(values: Sequence[float]) -> float:
    finite = [v for v in values if v != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log(sum(math.exp(v - m) for v in finite))


def combine(token_logprobs: Mapping[int, float], ids_by_choice: Mapping[str, list[int]]) -> dict[str, float]:
    """log p(choice) = logsumexp over its spellings' token log-probs (absent token: -inf)."""
    return {c: logsumexp([token_logprobs.get(t, -math.inf) for t in ids]) for c, ids in ids_by_choice.items()}
