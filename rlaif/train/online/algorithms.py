"""What sets GRPO, RLOO and PPO apart in a step, one small class each (maths.py has the formulas).

- advantages: GRPO normalises each reward by its group (Shao et al. 2024); RLOO subtracts the
  mean of the other k - 1 samples from r - beta * sum_t k1 (Ahmadian et al. 2024); PPO puts
  -beta * k1 on every token and the score on the last one, then GAE and whitening (Huang et al. 2024).
- loss level and normaliser: GRPO clips per token and sums by ``loss_type``; RLOO clips the
  sequence ratio, one term per sequence; PPO clips per token, mean over the batch's tokens.
- KL placement: GRPO adds beta * k3 to the loss; RLOO and PPO put k1 in the reward, so their
  advantages read the old-policy log-probs when beta > 0.
- extra losses: GRPO's k3 KL; PPO's clipped value loss (its value model comes with PPOConfig).
- GRPO's policy loss: PPO-clip per token, GSPO's sequence ratio (importance_sampling_level) or
  CISPO's clipped IS weight (loss_type=cispo); every algorithm may add an entropy bonus.

The config type picks the class: :func:`strategy`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from rlaif.train.online import maths
from rlaif.train.online.batch import MicroBatch, Scored, token_values
from rlaif.train.online.config import GRPOConfig, OnlineConfig, PPOConfig, RLOOConfig

Level = Literal["token", "sequence"]


class Algorithm:
    """The rules of one online algorithm; ``cfg`` is its config."""

    level: ClassVar[Level] = "token"    # where the PPO-clip ratio is taken

    def __init__(self, cfg: OnlineConfig) -> None:
        self.cfg = cfg

    @property
    def loss_type(self) -> maths.LossType:
        """How the per-token losses are summed (maths.aggregate_loss)."""
        return "token_mean"

    @property
    def missing_eos_score(self) -> float | None:
        """Score of a completion cut by max_tokens (no EOS); None: its reward stands."""
        return None

    def uses_reference(self) -> bool:
        """Whether a KL term needs the reference model."""
        return self.cfg.beta != 0

    def advantages_need_old_logp(self, kl_coef: float) -> bool:
        """Whether the advantages read the old-policy log-probs (a k1 KL in the reward)."""
        return kl_coef != 0

    def kl_controller(self) -> maths.FixedKLController:
        """The KL coefficient over the run (fixed unless PPO's adaptive_kl)."""
        return maths.FixedKLController(self.cfg.beta)

    def entropy_controller(self) -> maths.FixedKLController:
        """The entropy bonus coefficient over the run: static ``entropy_coef``, or adapted towards
        ``entropy_target`` (maths.AdaptiveEntropyController)."""
        if self.cfg.entropy_target is not None:
            return maths.AdaptiveEntropyController(self.cfg.entropy_coef, self.cfg.entropy_target,
                                                   self.cfg.entropy_coef_delta)
        return maths.FixedKLController(self.cfg.entropy_coef)

    def normalizer(self, mask: torch.Tensor) -> float:
        """The divisor of a whole minibatch's loss, so that summed micro-batch losses equal its loss."""
        return max(float(mask.sum()), 1.0)

    def weight_level(self) -> Level:
        """Where the loss takes its ratio, so where an importance weight applies (mismatch.py)."""
        return self.level

    def policy_loss(self, logp: torch.Tensor, old_logp: torch.Tensor, micro: MicroBatch
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of the policy loss and its stats (PPO-clip at ``level``)."""
        return maths.policy_loss(logp, old_logp, micro.advantages, micro.rows.mask, self.cfg.clip_eps,
                                 level=self.level, loss_type=self.loss_type,
                                 max_completion_length=self.cfg.max_tokens, normalizer=micro.normalizer)

    def advantages(self, scores: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor,
                   scored: Scored, kl_coef: float, critic_from_policy: bool) -> dict[str, torch.Tensor]:
        """``adv`` (N,) or (N, T), and ``returns`` for PPO; ``mask`` (N, T) has the masked samples zeroed,
        ``kl`` (N,) is the sequence k1 KL to the reference."""
        raise NotImplementedError

    def extra_loss(self, logp: torch.Tensor, micro: MicroBatch, value_model: Any
                   ) -> tuple[torch.Tensor, dict[str, float]] | None:
        """A loss added to the policy loss for ``micro``, and its stats; None: none."""
        return None


class GRPO(Algorithm):
    """Group-normalised advantages, token-level clip aggregated by ``loss_type``, beta * k3 in the loss."""

    cfg: GRPOConfig

    @property
    def loss_type(self) -> maths.LossType:
        return self.cfg.loss_type

    def advantages_need_old_logp(self, kl_coef: float) -> bool:
        return False  # the KL is in the loss

    def normalizer(self, mask: torch.Tensor) -> float:
        if self.cfg.loss_type == "grpo" or self.cfg.importance_sampling_level == "sequence":  # sequences with tokens
            return max(float((mask.sum(-1) > 0).sum()), 1.0)
        if self.cfg.loss_type == "dr_grpo":  # a constant: rows x max_tokens
            return float(mask.shape[0] * self.cfg.max_tokens)
        return max(float(mask.sum()), 1.0)

    def advantages(self, scores: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor,
                   scored: Scored, kl_coef: float, critic_from_policy: bool) -> dict[str, torch.Tensor]:
        return {"adv": maths.grpo_advantages(scores, self.cfg.k, self.cfg.scale_rewards, valid), "kl": kl}

    def weight_level(self) -> Level:
        """GSPO (importance_sampling_level sequence or sequence_token) takes one ratio per sample."""
        return "token" if self.cfg.importance_sampling_level == "token" else "sequence"

    def policy_loss(self, logp: torch.Tensor, old_logp: torch.Tensor, micro: MicroBatch
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO-clip per token (clip-higher with clip_eps_high), GSPO (importance_sampling_level) or CISPO."""
        low, high = self.cfg.clip_range()
        common = dict(loss_type=self.loss_type, max_completion_length=self.cfg.max_tokens, normalizer=micro.normalizer)
        level = self.cfg.importance_sampling_level
        if level != "token":
            return maths.gspo_loss(logp, old_logp, micro.advantages, micro.rows.mask, low, high,
                                   token=level == "sequence_token", **common)  # type: ignore[arg-type]
        if self.loss_type == "cispo":
            return maths.cispo_loss(logp, old_logp, micro.advantages, micro.rows.mask, low, high,
                                    **common)  # type: ignore[arg-type]
        return maths.policy_loss(logp, old_logp, micro.advantages, micro.rows.mask, low, clip_eps_high=high,
                                 **common)  # type: ignore[arg-type]

    def extra_loss(self, logp: torch.Tensor, micro: MicroBatch, value_model: Any
                   ) -> tuple[torch.Tensor, dict[str, float]] | None:
        """beta * k3 KL, aggregated like the policy loss (TRL GRPO)."""
        if self.cfg.beta <= 0:
            return None
        per_token = maths.kl_k3(logp, micro.ref_logp) * micro.rows.mask
        per_sequence = self.cfg.importance_sampling_level == "sequence"  # GSPO: its normaliser counts sequences
        kl_loss = maths.aggregate_loss(per_token, micro.rows.mask, "grpo" if per_sequence else self.loss_type,
                                       self.cfg.max_tokens, micro.normalizer)
        return self.cfg.beta * kl_loss, {}


class RLOO(Algorithm):
    """Leave-one-out baseline on r - beta * sum_t k1, sequence-level clip, mean over sequences."""

    cfg: RLOOConfig
    level: ClassVar[Level] = "sequence"

    def normalizer(self, mask: torch.Tensor) -> float:
        return max(float((mask.sum(-1) > 0).sum()), 1.0)

    def advantages(self, scores: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor,
                   scored: Scored, kl_coef: float, critic_from_policy: bool) -> dict[str, torch.Tensor]:
        penalised = scores - kl_coef * kl if kl_coef else scores
        return {"adv": maths.rloo_advantages(penalised, self.cfg.k, valid), "kl": kl}


class PPO(Algorithm):
    """Per-token k1 KL in the reward, GAE over a value model, whitened advantages, clipped value loss."""

    cfg: PPOConfig

    @property
    def missing_eos_score(self) -> float | None:
        return self.cfg.missing_eos_score

    def uses_reference(self) -> bool:
        return self.cfg.beta != 0 or self.cfg.adaptive_kl

    def advantages_need_old_logp(self, kl_coef: float) -> bool:
        return kl_coef != 0 or self.cfg.adaptive_kl

    def kl_controller(self) -> maths.FixedKLController:
        if self.cfg.adaptive_kl:
            return maths.AdaptiveKLController(self.cfg.beta, self.cfg.kl_target, self.cfg.kl_horizon)
        return maths.FixedKLController(self.cfg.beta)

    def advantages(self, scores: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor,
                   scored: Scored, kl_coef: float, critic_from_policy: bool) -> dict[str, torch.Tensor]:
        """``critic_from_policy``: the value model started from the policy (picks the default GAE lambda)."""
        logp = scored.old_logp if scored.old_logp is not None else torch.zeros_like(mask)  # skipped: beta is 0
        ref_logp = scored.ref_logp if scored.ref_logp is not None else logp               # no reference: KL 0
        token_rewards = maths.ppo_token_rewards(scores, logp, ref_logp, mask, kl_coef)
        lam = self.cfg.gae_lambda(critic_from_policy)
        adv, returns = maths.gae(token_rewards, scored.old_values, mask, self.cfg.gamma, lam)
        if self.cfg.whiten_advantages:
            adv = maths.masked_whiten(adv, mask) * mask
        return {"adv": adv, "returns": returns, "kl": kl}

    def extra_loss(self, logp: torch.Tensor, micro: MicroBatch, value_model: Any
                   ) -> tuple[torch.Tensor, dict[str, float]] | None:
        """vf_coef x the clipped value loss, weighted by the micro-batch's share of the minibatch's tokens."""
        values = token_values(value_model, micro.rows)
        value_loss, value_stats = maths.value_loss(values, micro.old_values, micro.returns, micro.rows.mask,
                                                   self.cfg.value_clip)
        share = float(micro.rows.mask.sum()) / micro.value_normalizer
        return self.cfg.vf_coef * value_loss * share, {"value_loss": value_loss.item(), **value_stats}


def strategy(cfg: OnlineConfig) -> Algorithm:
    """The algorithm of ``cfg``'s type (GRPOConfig -> GRPO, RLOOConfig -> RLOO, PPOConfig -> PPO)."""
    if isinstance(cfg, GRPOConfig):
        return GRPO(cfg)
    if isinstance(cfg, RLOOConfig):
        return RLOO(cfg)
    if isinstance(cfg, PPOConfig):
        return PPO(cfg)
    raise TypeError(f"{type(cfg).__name__} is not the config of an online algorithm")
