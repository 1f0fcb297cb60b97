"""Log-probabilities of chosen tokens with only the logits that are needed.

    log pi(y_t | y_<t) = z_t[y_t] / tau - logsumexp_v(z_t[v] / tau)      z_t = W h_t  (the LM head)

Only the M positions a caller asks for (``mask``) reach the LM head: a pre-hook on the model's
output layer takes their hidden states (M, H) and hands the layer an empty input, so the model's
own forward (DDP/peft wrappers included) never builds (B, T, V) logits. The M rows then go through
the head in chunks of ``chunk`` positions, each chunk's logits upcast to float32 on their own
(``chunk x V`` floats, never ``M x V``); when a pass needs gradients and has more than one chunk,
each chunk is recomputed in backward (activation checkpointing), so peak memory stays one chunk's
logits. Final-logit soft-capping (Gemma 2) is applied as the model would.

The offline trainers (dpo) and the online ones share ``response_logprobs``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 2048


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                    softcap: float | None) -> torch.Tensor:
    logits = head.forward(hidden).float()                               # (c, V), one chunk in float32
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  chunk: int = DEFAULT_CHUNK, softcap: float | None = None) -> torch.Tensor:
    """Log-prob of ``targets`` (M,) under ``head(hidden)`` (hidden: (M, H)), float32, chunked over positions."""
    chunk = max(int(chunk), 1)
    if hidden.shape[0] <= chunk:
        return _chunk_logprobs(head, hidden, targets, temperature, softcap)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for s in range(0, hidden.shape[0], chunk):
        h, t = hidden[s:s + chunk], targets[s:s + chunk]
        parts.append(checkpoint(_chunk_logprobs, head, h, t, temperature, softcap, use_reentrant=False) if recompute
                     else _chunk_logprobs(head, h, t, temperature, softcap))
    return torch.cat(parts)


def selected_logprobs(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor | None, targets: torch.Tensor,
                      mask: torch.Tensor, temperature: float = 1.0, chunk: int = DEFAULT_CHUNK,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs (M,) of ``targets[mask]``, in the row-major order of ``mask`` (B, T); ``targets[b, t]``
    is the token position t predicts (already shifted)."""
    from rlaif.train.modeling import unwrap

    inner = unwrap(model)
    head = inner.get_output_embeddings()
    config = getattr(inner, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    select = mask.bool()
    wanted = targets[select]
    result: list[torch.Tensor] = []

    def pre(_module: Any, args: tuple) -> tuple:
        hidden = args[0][select]                                         # (M, H)
        result.append(head_logprobs(head, hidden, wanted, temperature, chunk, softcap))
        return (args[0][:, :0], *args[1:])                               # the head itself computes nothing

    handle = head.register_forward_pre_hook(pre)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    finally:
        handle.remove()
    return result[-1]


def response_logprobs(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor | None, targets: torch.Tensor,
                      mask: torch.Tensor, temperature: float = 1.0, chunk: int = DEFAULT_CHUNK,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position log-probs (B, T), float32: ``log softmax(logits[b, t] / temperature)[targets[b, t]]``
    where ``mask[b, t]``, 0 elsewhere. ``position_ids`` restarting inside a row of one (1, T) sequence
    mark packed rows (attention_mask None); padded rows pass their ``attention_mask``."""
    values = selected_logprobs(model, input_ids, position_ids, targets, mask, temperature, chunk, attention_mask)
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(mask.bool(), values)
