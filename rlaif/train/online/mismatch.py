"""Training-inference mismatch: importance weights from the engine's sampling log-probs to the
trainer's old-policy log-probs, as pure tensor functions.

The engine samples y ~ mu (its own kernels, dtype, or weights one step stale under
``async_generation``); the trainer's PPO ratio is pi_theta / pi_old with pi_old the trainer's
old-policy log-probs. The policy gradient is an expectation under pi_old, so each term carries the
importance weight pi_old(y) / mu(y) (Yao et al. 2025, "Your efficient RL framework secretly brings
you off-policy RL training", fengyao.notion.site/off-policy-rl; the masked sequence variant:
Liu, Li et al. 2025, "When speed kills stability: demystifying RL collapse from the
training-inference mismatch", richardli.xyz/rl-collapse; verl's ``rollout_correction`` uses
the same bounds, upper default 2).

With log r_t = old_logp_t - engine_logp_t on completion token t:

- token (TIS): w_t = min(exp(log r_t), C), the truncated per-token ratio (C = ``is_cap``);
- sequence (MIS): rho = exp(sum_t log r_t), the ratio of the sequence probabilities; the weight
  is rho on every token of the sample when ``is_min <= rho <= C``, and the sample is masked out
  (weight 0) otherwise.

The weights are constants (no gradient). Since w >= 0, w * max(-A rho_t, -A clip(rho_t)) =
max(-(wA) rho_t, -(wA) clip(rho_t)): weighting the PPO-clip loss term is weighting its advantage,
which is how `weigh_advantages` applies them. Rows without completion tokens get weight 0 and are
left out of every statistic.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Correction = Literal["none", "token", "sequence"]


def log_ratio(old_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> Tensor:
    """log r_t = (old_logp_t - engine_logp_t) * mask_t, (B, T), in float32."""
    return (old_logp.float() - engine_logp.float()) * mask.float()


def token_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """TIS: w_t = min(exp(log r_t), cap) on completion tokens (0 on padding), and the bool (B, T) of
    tokens whose ratio exceeded the cap (clipped)."""
    m = mask.float()
    lr = log_ratio(old_logp, engine_logp, m)
    clipped = (lr > math.log(cap)) & (m > 0)
    weights = torch.exp(lr.clamp(max=math.log(cap))) * m
    return weights, clipped


def sequence_weights(old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float, low: float
                     ) -> tuple[Tensor, Tensor]:
    """MIS: rho = exp(sum_t log r_t) per sequence, kept when low <= rho <= cap; returns the weight
    (B,) (rho where kept, 0 where masked or empty) and the bool (B,) of masked samples (rows with
    tokens only). Compared in log space, so a huge or tiny rho never overflows."""
    m = mask.float()
    seq = log_ratio(old_logp, engine_logp, m).sum(-1)
    has_tokens = m.sum(-1) > 0
    above = seq > math.log(cap)
    below = seq < math.log(low) if low > 0 else torch.zeros_like(above)
    masked = (above | below) & has_tokens
    weights = torch.where(masked | ~has_tokens, torch.zeros_like(seq), torch.exp(seq.clamp(max=math.log(cap))))
    return weights, masked


def token_level_weights(kind: Correction, old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float,
                        low: float) -> Tensor:
    """The weight of every completion token (B, T) for ``kind`` (none: 1 on tokens)."""
    if kind == "none":
        return mask.float()
    if kind == "token":
        return token_weights(old_logp, engine_logp, mask, cap)[0]
    if kind == "sequence":
        return sequence_weights(old_logp, engine_logp, mask, cap, low)[0].unsqueeze(-1) * mask.float()
    raise ValueError(f"is_correction must be none, token or sequence, got {kind!r}")


def weigh_advantages(kind: Correction, advantages: Tensor, old_logp: Tensor, engine_logp: Tensor, mask: Tensor,
                     cap: float, low: float, level: Literal["token", "sequence"]) -> Tensor:
    """The advantages times the (detached) IS weights, for the PPO-clip loss. ``level`` is the loss's:
    token -> (B, T) advantages; sequence (one term per sample, RLOO) -> (B,), which needs a
    sequence weight (``kind`` sequence). ``none`` returns ``advantages`` unchanged."""
    if kind == "none":
        return advantages
    with torch.no_grad():
        if level == "sequence":
            if kind != "sequence":
                raise ValueError("a sequence-level loss takes one weight per sample: is_correction=sequence")
            weights = sequence_weights(old_logp, engine_logp, mask, cap, low)[0]
            return advantages * weights.to(advantages.dtype)
        weights = token_level_weights(kind, old_logp, engine_logp, mask, cap, low).to(advantages.dtype)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    return adv * weights


def mismatch_kl(old_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> float:
    """KL(mu || pi_old) per token by k3 on the engine's samples: mean_t (r_t - 1 - log r_t) with
    r_t = pi_old / mu (Schulman 2020; >= 0, 0 when the two agree)."""
    m = mask.float()
    lr = log_ratio(old_logp, engine_logp, m).clamp(max=20.0)
    k3 = (torch.exp(lr) - 1 - lr) * m
    return float(k3.sum() / m.sum().clamp(min=1))


def mismatch_metrics(kind: Correction, old_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float,
                     low: float) -> dict[str, float]:
    """A step's mismatch metrics: ``mismatch/kl_k3`` always; with a correction, the share of tokens
    clipped (token) or of samples masked (sequence) and the mean weight over tokens (token) or
    samples (sequence), rows without tokens left out."""
    out = {"mismatch/kl_k3": mismatch_kl(old_logp, engine_logp, mask)}
    m = mask.float()
    if kind == "token":
        weights, clipped = token_weights(old_logp, engine_logp, m, cap)
        tokens = m.sum().clamp(min=1)
        out.update({"mismatch/clipped": float(clipped.float().sum() / tokens),
                    "mismatch/weight_mean": float(weights.sum() / tokens)})
    elif kind == "sequence":
        weights, masked = sequence_weights(old_logp, engine_logp, m, cap, low)
        rows = (m.sum(-1) > 0).float()
        count = rows.sum().clamp(min=1)
        out.update({"mismatch/masked": float(masked.float().sum() / count),
                    "mismatch/weight_mean": float((weights * rows).sum() / count)})
    return out
