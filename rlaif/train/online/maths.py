"""The maths of online RL as pure tensor functions: advantages, KL estimators and controllers,
PPO-clip policy and value losses, whitening, masked means.

Shapes: B sequences (B = prompts x k for the group estimators, a prompt's k completions
consecutive), T completion positions. ``mask`` (B, T) is 1 on completion tokens and 0 on padding
(float or bool). Log-probs are per token, taken with logits / temperature (the sampling temperature).

Papers: PPO (Schulman et al. 2017), GAE (Schulman et al. 2016), "The N+ implementation details of
RLHF with PPO" (Huang et al. 2024, arXiv 2403.17031), KL controller (Ziegler et al. 2019, arXiv
1909.08593), RLOO (Ahmadian et al. 2024, arXiv 2402.14740), GRPO (Shao et al. 2024, arXiv
2402.03300), DAPO (Yu et al. 2025, arXiv 2503.14476), Dr. GRPO (Liu et al. 2025, arXiv
2503.20783), k1/k3 (J. Schulman, "Approximating KL divergence", 2020), GSPO (Zheng et al. 2025,
arXiv 2507.18071), CISPO (MiniMax-M1, arXiv 2506.13585), adaptive entropy (Skywork-OR1, He et al.
2025, arXiv 2505.22312).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

GROUP_STD_EPS = 1e-4  # GRPO: (r - mean) / (std + 1e-4), as TRL
WHITEN_EPS = 1e-8


# ----------------------------------------------------------------------------- masked statistics

def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x * m) / sum(m) over ``dim`` (all elements if None); 0 where the mask is all zero."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked elements (scalar), with Bessel's correction n / (n - 1) if unbiased."""
    m = mask.to(x.dtype)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    n = m.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) with mean and (unbiased) var over masked elements only.

    With ``shift_mean=False`` the mean is added back (only the scale changes; N+ details use it
    for rewards). Padding positions come out 0, so their values never matter. x, mask: (B, T).
    """
    m = mask.to(x.dtype)
    mean, var = masked_mean(x, m), masked_var(x, m)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * m


# ----------------------------------------------------------------------------- KL estimators

def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi(y_t) - log pi_ref(y_t) per token (B, T): unbiased for KL(pi || ref), can be < 0."""
    return logp - ref_logp


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(d) - d - 1 with d = log pi_ref - log pi, per token (B, T).

    Unbiased for KL(pi || ref) under samples from pi and always >= 0 (e^d >= 1 + d), 0 iff equal
    (Schulman 2020; GRPO's KL term, Shao et al. 2024 eq. 4).
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


# ----------------------------------------------------------------------------- group advantages

def _groups(rewards: Tensor, k: int, valid: Tensor | None, name: str) -> tuple[Tensor, Tensor]:
    """rewards (B*k,) -> (B, k) rewards (0 where invalid) and (B, k) float validity."""
    if k < 2:
        raise ValueError(f"{name} needs k >= 2 samples per prompt (got k={k}): with one sample the "
                         f"group baseline equals the reward and every advantage is 0, nothing trains")
    if rewards.dim() != 1 or rewards.numel() % k:
        raise ValueError(f"{name}: rewards must be 1-D with a multiple of k={k} entries, "
                         f"got shape {tuple(rewards.shape)}")
    v = torch.ones_like(rewards) if valid is None else valid.to(rewards.dtype)
    v = v.view(-1, k)
    return torch.where(v > 0, rewards.view(-1, k), 0.0), v              # NaN stand-ins for None -> 0


def rloo_advantages(rewards: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    """REINFORCE leave-one-out: A_i = r_i - (sum_group r - r_i) / (k - 1)   (Ahmadian et al. 2024).

    rewards (B*k,), a prompt's k samples consecutive -> advantages (B*k,). Equivalently
    A_i = k / (k - 1) * (r_i - mean_group r). ``valid`` (B*k,) optional: samples with no reward
    (masked) are left out of the baseline and get 0; a group with fewer than 2 valid samples gets 0.
    """
    r, v = _groups(rewards, k, valid, "rloo")
    n = v.sum(1, keepdim=True)                                          # (B, 1) valid per group
    baseline = (r.sum(1, keepdim=True) - r) / (n - 1).clamp(min=1)      # (B, k)
    adv = (r - baseline) * v * (n >= 2)
    return adv.reshape(-1)


def grpo_advantages(rewards: Tensor, k: int, scale: Literal["group", "batch", "none"] = "group",
                    valid: Tensor | None = None) -> Tensor:
    """GRPO: A_i = (r_i - mean_group r) / (std + 1e-4)   (Shao et al. 2024, outcome supervision).

    std is the group's (unbiased, as TRL) for ``group``, the whole batch's for ``batch``; ``none``
    skips the division (Dr. GRPO, Liu et al. 2025: the std term up-weights too-easy/too-hard
    prompts). A group whose rewards are all equal gets 0 (0 / 1e-4), never NaN. rewards (B*k,)
    -> (B*k,); ``valid`` as in :func:`rloo_advantages`.
    """
    r, v = _groups(rewards, k, valid, "grpo")
    n = v.sum(1, keepdim=True)
    centred = (r - r.sum(1, keepdim=True) / n.clamp(min=1)) * v * (n >= 2)    # (B, k)
    if scale == "group":
        std = (centred.pow(2).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        centred = centred / (std + GROUP_STD_EPS)
    elif scale == "batch":
        std = masked_var(r, v).sqrt()
        centred = centred / (std + GROUP_STD_EPS)
    elif scale != "none":
        raise ValueError(f"grpo: scale must be group, batch or none, got {scale!r}")
    return centred.reshape(-1)


# ----------------------------------------------------------------------------- PPO: GAE and rewards

def gae(rewards_per_token: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
        ) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), right-padded sequences.

    delta_t = r_t + gamma V_{t+1} - V_t  (V past the last real token = 0: the episode ends there),
    A_t = delta_t + gamma lam A_{t+1},  returns R_t = A_t + V_t.  Inputs (B, T); outputs
    (advantages, returns), each (B, T), 0 on padding. Advantages are not whitened here.
    """
    m = mask.to(values.dtype)
    r, v = rewards_per_token * m, values * m
    T = r.shape[1]
    advantages = torch.zeros_like(v)
    last = torch.zeros_like(v[:, 0])                                    # A_{t+1}, (B,)
    for t in reversed(range(T)):
        next_value = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_value - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + v) * m


def last_token_index(mask: Tensor) -> Tensor:
    """Index of each row's last position with mask 1, (B,); from the mask, never from a pad id."""
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * mask.long()).argmax(-1)


def ppo_token_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token PPO reward r_t = -beta (log pi - log pi_ref)_t, plus the score on the last real token.

    Ziegler et al. 2019 / N+ details: the KL penalty (k1) on every completion token, the sequence
    score (B,) on the last token the mask marks (the EOS when the model stopped), found from the
    mask so pad == eos tokenizers cannot move it to a pad (TRL #3750). Rows with an all-zero mask
    get nothing. The missing-EOS penalty is the caller's: pass the already-penalised score.
    logp, ref_logp, mask (B, T) -> (B, T), 0 on padding.
    """
    m = mask.to(logp.dtype)
    rewards = -beta * kl_k1(logp, ref_logp) * m
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has_tokens = m.sum(-1) > 0
    rewards[rows, last_token_index(mask)] += score.to(rewards.dtype) * has_tokens
    return rewards


# ----------------------------------------------------------------------------- KL controllers

class FixedKLController:
    """Constant KL coefficient beta; ``update`` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (same signature as the adaptive controller)."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Adaptive beta of Ziegler et al. 2019 (sec. 2.2), a proportional controller on the KL:

        e = clip(KL / target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        super().__init__(init_kl_coef)
        self.target, self.horizon = float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


# ----------------------------------------------------------------------------- losses

LossType = Literal["grpo", "dapo", "dr_grpo", "token_mean", "cispo"]


def aggregate_loss(losses: Tensor, m: Tensor, loss_type: str, max_completion_length: int | None,
                   normalizer: float | None = None) -> Tensor:
    """Per-token losses (B, T) -> scalar, by ``loss_type`` as in :func:`policy_loss` (also for GRPO's
    k3 KL term, aggregated like the policy loss)."""
    total = (losses * m).sum()
    if loss_type == "grpo":
        lengths = m.sum(-1)                                             # (B,)
        per_sequence = (losses * m).sum(-1) / lengths.clamp(min=1)       # (B,)
        return per_sequence.sum() / (normalizer or (lengths > 0).sum().clamp(min=1))
    if loss_type in ("dapo", "token_mean", "cispo"):
        return total / (normalizer or m.sum().clamp(min=1))
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("dr_grpo needs max_completion_length (the max_tokens of the rollouts)")
        return total / (normalizer or losses.shape[0] * max_completion_length)
    raise ValueError(f"loss_type must be grpo, dapo, dr_grpo, cispo or token_mean, got {loss_type!r}")


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
                level: Literal["token", "sequence"] = "token", loss_type: LossType = "dapo",
                max_completion_length: int | None = None, normalizer: float | None = None,
                clip_eps_high: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip (Schulman et al. 2017): l = max(-rho A, -clip(rho, 1 - eps, 1 + eps) A) = -min(...).

    logp, old_logp, mask (B, T); advantages (B,) per sequence (GRPO/RLOO, broadcast over tokens) or
    (B, T) per token (PPO). ``level``:
    - token: rho_t = exp(logp_t - old_logp_t), then ``loss_type`` sums the (B, T) losses:
      grpo     mean over each sequence's tokens, then mean over sequences (Shao et al. 2024);
               a token of a long sequence weighs less: long wrong answers are penalised less
      dapo     sum over all active tokens / number of active tokens in the batch (Yu et al. 2025)
      dr_grpo  sum / (B * max_completion_length), a constant: no length bias (Liu et al. 2025)
      token_mean  same as dapo (PPO's masked mean, N+ details)
    - sequence: rho = exp(sum_t (logp_t - old_logp_t)), the ratio of sequence probabilities, one
      term per sequence (the completion as one action, Ahmadian et al. 2024), mean over sequences
      with tokens; ``loss_type`` is not used. advantages must be (B,).
    ``normalizer`` replaces the divisor (sequences, tokens, or B * L) when the caller splits a
    batch into micro-batches and sums their losses. ``clip_eps_high`` (None = ``clip_eps``) is the
    upper clip 1 + eps_high (DAPO's clip-higher, Yu et al. 2025). Stats (floats): clip_fraction (share of terms
    where the clipped branch is taken, so its gradient is 0), approx_kl = mean 0.5 (log rho)^2,
    ratio_mean.
    """
    m = mask.to(logp.dtype)
    log_ratio = (logp - old_logp) * m                                   # (B, T)
    if level == "sequence":
        if advantages.dim() != 1:
            raise ValueError("sequence-level policy loss needs one advantage per sequence, shape (B,)")
        log_ratio, adv, weights = log_ratio.sum(-1), advantages, (m.sum(-1) > 0).to(m.dtype)  # (B,)
    elif level == "token":
        adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
        weights = m
    else:
        raise ValueError(f"level must be token or sequence, got {level!r}")
    ratio = torch.exp(log_ratio)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_eps, 1 + high)
    losses = torch.maximum(unclipped, clipped)
    if level == "sequence":
        loss = (losses * weights).sum() / (normalizer or weights.sum().clamp(min=1))
    else:
        loss = aggregate_loss(losses, m, loss_type, max_completion_length, normalizer)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped > unclipped).to(m.dtype), weights).item(),
                 "approx_kl": masked_mean(0.5 * log_ratio ** 2, weights).item(),
                 "ratio_mean": masked_mean(ratio, weights).item()}
    return loss, stats


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
               ) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss (PPO as in N+ details): 0.5 * masked mean of max((V - R)^2, (V_clip - R)^2),
    V_clip = V_old + clip(V - V_old, -c, c). All inputs (B, T). Stats: value_clip_fraction (share
    of tokens where the clipped branch is taken), value_mean.
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped, clipped = (values - returns) ** 2, (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped > unclipped).to(values.dtype), mask).item(),
                 "value_mean": masked_mean(values, mask).item()}
    return loss, stats


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 = perfect values, 0 = no better than a
    constant, < 0 worse. NaN when the returns do not vary (undefined)."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return (1 - masked_var(returns - values, mask) / var_returns).item()


# ----------------------------------------------------------------------------- GSPO and CISPO

def _clip_stats(ratio: Tensor, log_ratio: Tensor, clipped: Tensor, weights: Tensor) -> dict[str, float]:
    """clip_fraction, approx_kl = mean 0.5 (log ratio)^2 and ratio_mean over ``weights``."""
    with torch.no_grad():
        w = weights.to(ratio.dtype)
        return {"clip_fraction": masked_mean(clipped.to(ratio.dtype), w).item(),
                "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, w).item(),
                "ratio_mean": masked_mean(ratio.detach(), w).item()}


def gspo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
              clip_eps_high: float, token: bool = False, loss_type: LossType = "grpo",
              max_completion_length: int | None = None, normalizer: float | None = None
              ) -> tuple[Tensor, dict[str, float]]:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): the importance ratio of the whole sequence,
    length-normalised, clipped per sequence:

        s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|) = exp(mean_t (logp_t - old_logp_t))
        l_i = max(-A_i s_i, -A_i clip(s_i, 1 - eps_low, 1 + eps_high)),  loss = mean_i l_i (eq. 5)

    Its clip range is small (the paper: 3e-4 / 4e-4), since s_i is a geometric mean of token ratios.
    ``token`` (GSPO-token, eq. 13): s_i,t = sg(s_i) * pi(y_t) / sg(pi(y_t)), equal to s_i in value
    and gradient with one advantage per sequence, allowing (B, T) advantages; its (B, T) losses are
    summed by ``loss_type`` (:func:`aggregate_loss`). logp, old_logp, mask (B, T); advantages (B,)
    (or (B, T) with ``token``). ``normalizer`` as in :func:`policy_loss` (sequences for the
    sequence form). Stats as :func:`policy_loss`'s, per sequence (per token with ``token``).
    """
    m = mask.to(logp.dtype)
    lengths = m.sum(-1)
    seq_log_ratio = ((logp - old_logp) * m).sum(-1) / lengths.clamp(min=1)        # (B,) log s_i
    if token:
        log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach()     # (B, T)
        adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
        weights = m
    else:
        if advantages.dim() != 1:
            raise ValueError("gspo needs one advantage per sequence, shape (B,) (or token=True)")
        log_ratio, adv, weights = seq_log_ratio, advantages, (lengths > 0).to(m.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps_high)
    losses = torch.maximum(unclipped, clipped)
    if token:
        loss = aggregate_loss(losses, m, loss_type, max_completion_length, normalizer)
    else:
        loss = (losses * weights).sum() / (normalizer or weights.sum().clamp(min=1))
    return loss, _clip_stats(ratio, log_ratio, clipped > unclipped, weights)


def cispo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
               clip_eps_high: float, loss_type: LossType = "cispo", max_completion_length: int | None = None,
               normalizer: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4): clip the importance-sampling weight, not the
    update, so every token keeps its gradient:

        r_t = exp(logp_t - old_logp_t),   l_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A * logp_t

    summed by ``loss_type`` (cispo = dapo: over the batch's tokens, as the paper). PPO-clip zeroes
    the gradient of a token whose ratio left the range in the advantage's direction; here its
    gradient is -w A grad logp_t with w the clipped weight. On-policy (r = 1) the gradient equals
    PPO-clip's. MiniMax set eps_low large (no lower bound: clip_eps = 1) and tuned eps_high.
    logp, old_logp, mask (B, T); advantages (B,) or (B, T). clip_fraction = share of tokens whose
    weight was clipped (they still learn).
    """
    m = mask.to(logp.dtype)
    log_ratio = (logp - old_logp) * m
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps_high).detach()
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    losses = -weight * adv * logp
    loss = aggregate_loss(losses, m, loss_type, max_completion_length, normalizer)
    return loss, _clip_stats(ratio, log_ratio, weight != ratio.detach(), m)


# ----------------------------------------------------------------------------- overlong penalty

def overlong_penalty(lengths: Tensor, max_length: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), per completion of length L:

        0                        if L <= L_max - L_c
        ((L_max - L_c) - L) / L_c   if L_max - L_c < L <= L_max
        -1                       if L > L_max

    so a completion cut at max_tokens (L = L_max) gets -1. lengths (B,) -> (B,) in [-1, 0];
    ``buffer`` L_c = 0: all zeros (off).
    """
    lengths = lengths.to(torch.float32)
    if buffer <= 0:
        return torch.zeros_like(lengths)
    start = max_length - buffer
    return torch.clamp((start - lengths) / buffer, min=-1.0, max=0.0)


# ----------------------------------------------------------------------------- entropy bonus

class AdaptiveEntropyController(FixedKLController):
    """Coefficient of the entropy bonus (-coef * mean token entropy in the loss), stepped towards a
    target entropy, after Skywork-OR1's adaptive entropy control (He et al. 2025, arXiv 2505.22312):

        coef <- max(coef + delta, 0) if H < target else max(coef - delta, 0)

    ``value``, ``state_dict`` and ``load_state_dict`` as the KL controllers; `FixedKLController`
    serves as the static coefficient.
    """

    def __init__(self, init_coef: float, target: float, delta: float) -> None:
        if target <= 0 or delta <= 0:
            raise ValueError(f"adaptive entropy needs target > 0 and delta > 0, got {target}, {delta}")
        super().__init__(init_coef)
        self.target, self.delta = float(target), float(delta)

    def update(self, current_entropy: float, n_steps: int = 1) -> None:
        step = self.delta if current_entropy < self.target else -self.delta
        self.value = max(self.value + step, 0.0)
