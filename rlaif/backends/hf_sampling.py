"""The transformers engine's sampling maths: one step's draw from the logits, the grammar mask,
and the per-row state of a batch (see `rlaif.backends.hf` for the loop around them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlaif.backends.base import SamplingParams

# top-p candidates looked at before falling back to a full sort: the nucleus almost always fits
TOP_P_CANDIDATES = 256


def sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor | None,
           with_logprobs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B,) next tokens from (B, V) logits and, if asked, (B,) their log-probs under the
    distribution they were drawn from.

    ``temperature == 0``: argmax, log-prob ``log_softmax(logits)`` at it. Otherwise inverse-CDF
    sampling of ``p = softmax(logits / T)``, restricted to the top-p nucleus (the smallest head of
    tokens, by probability, whose mass reaches ``top_p``; Holtzman et al. 2020) and renormalized:
    row i's token is the first whose cumulative kept probability exceeds ``u[i] * kept mass``, so
    ``u[i] ~ U(0, 1)`` (drawn from row i's own generator) alone decides it, and a token of
    probability 0 (e.g. masked by a grammar) is never picked. The nucleus is looked for among the
    top ``TOP_P_CANDIDATES`` tokens (a top-k, not a sort of the vocabulary); exact whenever their
    mass reaches ``top_p``, else the full sort is used.
    """
    if params.temperature <= 0:
        tokens = logits.argmax(dim=-1)
        if not with_logprobs:
            return tokens, None
        logp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float() - logits.float().logsumexp(-1)
        return tokens, logp
    assert u is not None
    scaled = logits.float() / params.temperature  # (B, V)
    if params.top_p >= 1.0:
        probs = torch.softmax(scaled, dim=-1)
        cum = probs.cumsum(dim=-1)
        idx = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(-1), right=True).clamp(max=cum.shape[-1] - 1)
        tokens = idx.squeeze(-1)
        if not with_logprobs:
            return tokens, None
        return tokens, scaled.gather(-1, idx).squeeze(-1) - scaled.logsumexp(-1)
    lse = scaled.logsumexp(-1, keepdim=True)  # (B, 1)
    candidates = min(TOP_P_CANDIDATES, scaled.shape[-1])
    head, order = scaled.topk(candidates, dim=-1)  # sorted, descending
    probs = (head - lse).exp()
    if candidates < scaled.shape[-1] and bool((probs.sum(-1) < params.top_p).any()):
        head, order = scaled.sort(dim=-1, descending=True)
        probs = (head - lse).exp()
    probs = probs * (probs.cumsum(dim=-1) - probs < params.top_p)  # always keeps the top token
    cum = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(-1), right=True).clamp(max=cum.shape[-1] - 1)
    tokens = order.gather(-1, idx).squeeze(-1)
    if not with_logprobs:
        return tokens, None
    return tokens, (probs.gather(-1, idx).squeeze(-1) / cum[:, -1]).log()


@dataclass
class RowState:
    """Per-row state of one sampling batch: token budget, sampled tokens and log-probs, finish."""

    room: list[int]
    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish: list[str | None]
    stop_text: list[str | None]  # text cut before a stop string

    @classmethod
    def start(cls, prompts: list[list[int]], max_tokens: int, max_model_len: int | None) -> "RowState":
        # per-row budget, so a row's result never depends on its batch companions
        room = [max_tokens if max_model_len is None else min(max_tokens, max_model_len - len(prompt))
                for prompt in prompts]
        return cls(room, [[] for _ in prompts], [[] for _ in prompts],
                   ["length" if budget <= 0 else None for budget in room], [None] * len(prompts))


def constrain(logits: torch.Tensor, matchers: list[Any], bitmask: Any) -> torch.Tensor:
    """Mask the logits of each active row (in order) to the tokens its grammar allows next."""
    import xgrammar

    for slot, matcher in enumerate(matchers):
        matcher.fill_next_token_bitmask(bitmask, slot)
    logits = logits.float()
    xgrammar.apply_token_bitmask_inplace(logits, bitmask[:len(matchers)].to(logits.device))
    return logits
