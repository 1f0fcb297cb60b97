"""Per-token log-probabilities of completions, log pi(y_j | x, y_<j) = z_y - logsumexp(z), z = logits / T,
without full-vocabulary copies of the logits.

The logits come from the model's own forward (``logits_to_keep``: only the positions from the earliest
completion on go through the LM head; the (n, T, V) gather of each row's positions is kept, see below).
`SelectiveLogSoftmax` then reads them in row chunks: log-prob, logsumexp and the (no-grad) entropy
H = logsumexp(z) - sum_v softmax(z)_v z_v in one pass, and its backward writes
d log p_y / d z_v = (1[v = y] - softmax(z)_v) * grad / T straight into one gradient buffer, instead of the
full-size copies of ``/ T``, ``logsumexp``, ``gather`` and the entropy's softmax and their backwards (as TRL's
``selective_log_softmax`` does, for the same reason). Values and gradients equal the plain formula to float
rounding (tests/test_online_logprobs.py).

Not done, measured: gathering the backbone's hidden states at the scored positions and running the LM head
on those n x T rows only (no (n, T, V) gather copy, fewer head rows) made a token's log-prob differ by one
ulp (4.8e-7) between micro-batches [a, b] and [b, a] on the tiny test Llama, where this path gives equal
values; that breaks the exact equality of the skipped old-policy pass with the separate one
(tests/test_online_step.py, whose micro-batches are shuffled).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlaif.train.modeling import position_ids
from rlaif.train.online.maths import masked_mean

CHUNK_ELEMENTS = 1 << 21  # logits per row chunk (8 MiB in fp32): the chunk's temporaries stay in cache


class SelectiveLogSoftmax(torch.autograd.Function):
    """(logits (N, V), targets (N,), T, entropy?) -> log_softmax(logits / T)[targets] (N,) float32, and the
    entropy of softmax(logits / T) (N,) float32 (not differentiable) or None."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, temperature: float, entropy: bool
                ) -> tuple[Tensor, Tensor | None]:
        n, vocab = logits.shape
        step = max(1, CHUNK_ELEMENTS // vocab)
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        ent = torch.empty(n, dtype=torch.float32, device=logits.device) if entropy else None
        for s in range(0, n, step):
            z = _scaled(logits[s:s + step], temperature)
            lse[s:s + step] = torch.logsumexp(z, -1)
            if ent is not None:
                p = torch.exp(z - lse[s:s + step, None])
                ent[s:s + step] = lse[s:s + step] - torch.linalg.vecdot(p, z)
        target = _scaled(logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1), temperature)
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return target - lse, ent

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, _grad_ent: Tensor | None) -> tuple[Tensor, None, None, None]:
        logits, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        n, vocab = logits.shape
        step = max(1, CHUNK_ELEMENTS // vocab)
        grad = torch.empty_like(logits)
        g = grad_logp.float()
        for s in range(0, n, step):
            z = _scaled(logits[s:s + step], t)
            gz = torch.exp(z - lse[s:s + step, None]).mul_(-g[s:s + step, None])           # -g p_v
            gz.scatter_add_(-1, targets[s:s + step, None], g[s:s + step, None])            # + g 1[v = y]
            grad[s:s + step] = gz.div_(t) if t != 1.0 else gz
        return grad, None, None, None


def _scaled(x: Tensor, temperature: float) -> Tensor:
    """x as float32, / T (a new tensor only where needed)."""
    x = x.float()
    return x / temperature if temperature != 1.0 else x


def token_logprobs(model: Any, b: Any, temperature: float, entropy: bool = False
                   ) -> tuple[Tensor, Tensor | None]:
    """log pi(y_j | x, y_<j) with logits / T per completion token, (n, T), 0 on padding; and the mean entropy
    over ``b.mask`` (a 0-dim tensor, no grad) when ``entropy``. ``b``: a `step.RolloutBatch` (input_ids,
    attention_mask, positions, targets, mask)."""
    rows = torch.arange(b.positions.shape[0], device=b.positions.device).unsqueeze(-1)
    first = int(b.positions.min())
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=position_ids(b.attention_mask),
                logits_to_keep=b.input_ids.shape[1] - first, use_cache=False)
    logits = out.logits[rows, b.positions - first]                                    # (n, T, V)
    n, width, vocab = logits.shape
    logp, ent = SelectiveLogSoftmax.apply(logits.reshape(n * width, vocab), b.targets.reshape(-1),
                                          float(temperature), entropy)
    mean_ent = masked_mean(ent.view(n, width), b.mask) if ent is not None else None
    return logp.view(n, width) * b.mask, mean_ent
