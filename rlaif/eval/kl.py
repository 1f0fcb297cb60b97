"""KL(pi_K || pi_0) of a round's policy from the starting one, measured on its own eval responses.

For each eval prompt x with pi_K's response y (from the eval's candidates; the reply tokens as
`rlaif.backends.turns.reply_token_ids` splits them, end-of-turn marker included)::

    KL_x = sum_t  sum_v pi_K(v | x, y_<t) * (log pi_K(v | x, y_<t) - log pi_0(v | x, y_<t))

the exact next-token KL at every position of the policy's own response, summed over the response
(plain logits, temperature 1). The round's figure is the mean of KL_x over prompts. Unlike the
single-sample estimate ``log pi_K(y) - log pi_0(y)`` it needs no sampling at temperature 1 and is
never negative; it reads the divergence on the states pi_K itself visits.
"""

from __future__ import annotations

from typing import Any

import torch


def _logprobs(model: Any, prompt_ids: list[int], reply_ids: list[int], device: str) -> torch.Tensor:
    """(len(reply), V) log-softmax of the logits that predict each reply token."""
    ids = torch.tensor([prompt_ids + reply_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()  # (T, V)
    return torch.log_softmax(logits, dim=-1)


def policy_kl(policy: str, reference: str, rows: list[dict[str, Any]]) -> float | None:
    """Mean over ``rows`` (``{"messages", "responses"}``; the first response) of KL_x above."""
    from transformers import AutoModelForCausalLM

    from rlaif.backends.turns import reply_token_ids
    from rlaif.models import resolve_model
    from rlaif.train.modeling import load_tokenizer

    if not rows:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(resolve_model(policy))
    pairs = [reply_token_ids(tokenizer, r["messages"], r["responses"][0]) for r in rows]
    models = [AutoModelForCausalLM.from_pretrained(resolve_model(m), dtype=torch.float32).to(device).eval()
              for m in (policy, reference)]  # both at once: a (T, V) table per response would not fit for long runs
    total = 0.0
    for p, y in pairs:
        lp, lq = (_logprobs(m, p, y, device) for m in models)
        total += float((lp.exp() * (lp - lq)).sum())
    del models
    return total / len(rows)
