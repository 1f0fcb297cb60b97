"""What a judge method works on: an item (a prompt and its responses) and one judge request."""

from __future__ import annotations

from dataclasses import dataclass

from rlaif.backends.base import Conversation


@dataclass
class JudgeItem:
    id: str
    messages: list[dict[str, str]]  # the prompt conversation
    responses: list[str]
    finish_reasons: list[str] | None = None  # the policy engine's, per response (rules: ends_with_eos)
    num_tokens: list[int] | None = None  # the policy engine's token counts (rules: tokens)
    metadata: dict | None = None  # the prompt row's other fields (criteria:FIELD reads its criteria there)


@dataclass
class Request:
    """One judge conversation: response ``i`` alone, or the ordered pair (``i`` as A, ``j`` as B)."""

    item: int
    i: int
    j: int | None
    conversation: Conversation
    reply: str = ""  # likelihood: the response scored as the judge's reply
    neutral: Conversation | None = None  # likelihood with contrast: the neutral chat
