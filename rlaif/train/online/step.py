"""One online-RL step's tensors: scoring passes, advantages per algorithm, and the update.

Sequences are ``prompt_ids + completion_ids``, right-padded (EOS and PAD distinct: the mask comes
from the lengths, never from the pad id). Completion token j of row i is predicted at position
``len(prompt_i) - 1 + j``; every log-prob is ``log_softmax(logits / T)`` with the sampling
temperature T, for the policy, the old policy and the reference alike.

Advantages (see maths.py for the formulas and papers):
- grpo: group-normalised reward (Shao et al. 2024), token-level PPO-clip aggregated by
  ``loss_type``, plus ``beta * k3`` KL in the loss when beta > 0;
- rloo: r - beta * sum_t k1, leave-one-out baseline (Ahmadian et al. 2024), sequence-level clip;
- ppo: per-token -beta * k1 with the score on the last real token, GAE, whitened (N+ details).
A masked sample (no reward) is left out of the baselines and of the loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from rlaif.io.seeds import stable_seed
from rlaif.train.modeling import position_ids
from rlaif.train.online import maths
from rlaif.train.online.config import OnlineConfig, gae_lambda
from rlaif.train.online.distributed import Dist, mine


@dataclass
class RolloutBatch:
    """A step's rollouts as right-padded tensors (CPU until `to`)."""

    input_ids: torch.Tensor      # (N, L)
    attention_mask: torch.Tensor  # (N, L)
    positions: torch.Tensor      # (N, T) position whose logits predict completion token j
    targets: torch.Tensor        # (N, T) completion ids (pad where masked)
    mask: torch.Tensor           # (N, T) float, 1 on completion tokens
    engine_logp: torch.Tensor    # (N, T) the engine's sampling log-probs

    def rows(self, idx: list[int] | torch.Tensor) -> "RolloutBatch":
        """Rows ``idx``, trimmed to their own longest sequence and completion."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        am = self.attention_mask[idx]
        length = int(am.sum(-1).max())
        width = max(int(self.mask[idx].sum(-1).max()), 1)
        return RolloutBatch(self.input_ids[idx, :length], am[:, :length], self.positions[idx, :width],
                            self.targets[idx, :width], self.mask[idx, :width], self.engine_logp[idx, :width])

    def to(self, device: Any) -> "RolloutBatch":
        return RolloutBatch(*(t.to(device) for t in vars(self).values()))


def build_batch(rollouts: list[Any], pad_id: int) -> RolloutBatch:
    """Right-padded tensors from `rollouts.Rollout`s (prompt_ids, completion_ids, engine_logprobs)."""
    n = len(rollouts)
    lengths = [len(r.prompt_ids) + len(r.completion_ids) for r in rollouts]
    width = max(max((len(r.completion_ids) for r in rollouts), default=1), 1)
    input_ids = torch.full((n, max(lengths)), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, max(lengths)), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width))
    engine = torch.zeros((n, width))
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        input_ids[i, :p + c] = torch.tensor(list(r.prompt_ids) + list(r.completion_ids), dtype=torch.long)
        attention_mask[i, :p + c] = 1
        positions[i] = p - 1 + torch.arange(width).clamp(max=max(c - 1, 0))
        targets[i, :c] = torch.tensor(r.completion_ids, dtype=torch.long)
        mask[i, :c] = 1
        engine[i, :c] = torch.tensor(r.engine_logprobs[:c], dtype=torch.float)
    return RolloutBatch(input_ids, attention_mask, positions, targets, mask, engine)


def token_logprobs(model: Any, b: RolloutBatch, temperature: float, entropy: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_j | x, y_<j) per completion token with logits / T, (n, T); and the mean entropy.
    Only the positions from the earliest completion on go through the LM head (logits_to_keep)."""
    first = int(b.positions.min())
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=position_ids(b.attention_mask),
                logits_to_keep=b.input_ids.shape[1] - first, use_cache=False)
    rows = torch.arange(b.positions.shape[0], device=b.positions.device).unsqueeze(-1)
    logits = out.logits[rows, b.positions - first].float() / temperature          # (n, T, V)
    logp = logits.gather(-1, b.targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    ent = maths.entropy_from_logits(logits.detach(), b.mask) if entropy else None
    return logp * b.mask, ent


def token_values(value_model: Any, b: RolloutBatch) -> torch.Tensor:
    """V(s_j) at the state before completion token j, (n, T)."""
    values = value_model(b.input_ids, b.attention_mask)                           # (n, L)
    rows = torch.arange(b.positions.shape[0], device=b.positions.device).unsqueeze(-1)
    return values[rows, b.positions].float() * b.mask


def micro_batches(n: int, size: int) -> Iterator[list[int]]:
    for s in range(0, n, size):
        yield list(range(s, min(s + size, n)))


@dataclass
class Scored:
    """What the no-grad passes give, per completion token (N, T). ``old_logp`` is None when the
    old-policy pass was skipped (:func:`reuses_current_logp`); `update` then fills it and ``entropy``."""

    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    old_values: torch.Tensor | None
    entropy: float


def reuses_current_logp(cfg: OnlineConfig, n: int, kl_coef: float) -> bool:
    """Whether the old-policy pass can be skipped: the batch is used for exactly one optimizer
    update (one epoch, one minibatch), so every forward of the update runs on the weights that
    sampled the batch and old_logp = logp.detach() (ratio exp(logp - logp.detach()) = 1, gradient
    of logp: the on-policy policy gradient, as TRL GRPO with num_iterations = 1). The advantages
    must not need old_logp before the update: GRPO's never do (its KL is in the loss); RLOO's and
    PPO's do when beta > 0 (the k1 KL is in the reward)."""
    single = cfg.epochs_per_step == 1 and (cfg.minibatch_size == 0 or cfg.minibatch_size >= n)
    return single and (cfg.algorithm == "grpo" or (kl_coef == 0 and not getattr(cfg, "adaptive_kl", False)))


@torch.no_grad()
def score_batch(cfg: OnlineConfig, batch: RolloutBatch, policy: Any, reference: Any, value_model: Any,
                device: Any, autocast: Any, old_policy: bool = True, dist: Dist | None = None) -> Scored:
    """Old-policy (unless ``old_policy`` is False) and reference log-probs, and PPO values, in
    micro-batches, full width (N, T). Several processes: micro-batch j on rank j % W, the results
    summed over ranks (each row is filled by one rank, zeros elsewhere: the sum is exact)."""
    dist = dist or Dist()
    n, width = batch.mask.shape
    old = torch.zeros(n, width) if old_policy else None
    ref = torch.zeros(n, width) if reference is not None else None
    values = torch.zeros(n, width) if value_model is not None else None
    if old is None and ref is None and values is None:
        return Scored(None, None, None, float("nan"))
    entropy = torch.zeros(2, dtype=torch.float64)  # sum of entropy x tokens, tokens
    for j, idx in enumerate(micro_batches(n, cfg.micro_batch_size)):
        if not mine(j, dist.world, dist.rank):
            continue
        mb = batch.rows(idx).to(device)
        w = mb.mask.shape[1]
        with autocast():
            if old is not None:
                logp, ent = token_logprobs(policy, mb, cfg.temperature, entropy=True)
                old[idx, :w] = logp.float().cpu()
                count = float(mb.mask.sum())
                entropy += torch.tensor([float(ent) * count, count], dtype=torch.float64)
            if reference is not None:
                with reference() as ref_model:
                    ref[idx, :w] = token_logprobs(ref_model, mb, cfg.temperature)[0].float().cpu()
            if value_model is not None:
                values[idx, :w] = token_values(value_model, mb).float().cpu()
    for t in (old, ref, values, entropy):
        if t is not None:
            dist.sum_(t)
    return Scored(old, ref, values, float(entropy[0] / max(float(entropy[1]), 1.0)))


def advantages(cfg: OnlineConfig, batch: RolloutBatch, scores: torch.Tensor, valid: torch.Tensor,
               scored: Scored, kl_coef: float, critic_from_policy: bool = False) -> dict[str, torch.Tensor]:
    """Per-algorithm advantages: ``adv`` (N,) for grpo/rloo, (N, T) for ppo; ``returns`` (ppo);
    ``kl`` (N,) the sequence k1 KL to the reference (0 without one; NaN until `update` fills
    ``scored.old_logp`` when the old-policy pass was skipped, see :func:`sequence_kl`).
    ``critic_from_policy``: PPO's value model started from the policy (picks the default GAE lambda,
    `config.gae_lambda`)."""
    mask = batch.mask * valid.unsqueeze(-1)
    kl = sequence_kl(scored, batch.mask)
    if cfg.algorithm == "grpo":
        scale = cfg.scale_rewards  # type: ignore[attr-defined]
        return {"adv": maths.grpo_advantages(scores, cfg.k, scale, valid), "kl": kl}
    if cfg.algorithm == "rloo":
        penalised = scores - kl_coef * kl if kl_coef else scores
        return {"adv": maths.rloo_advantages(penalised, cfg.k, valid), "kl": kl}
    logp = scored.old_logp if scored.old_logp is not None else torch.zeros_like(mask)  # skipped: beta is 0
    ref_logp = scored.ref_logp if scored.ref_logp is not None else logp               # no reference: KL 0
    token_rewards = maths.ppo_token_rewards(scores, logp, ref_logp, mask, kl_coef)
    lam = gae_lambda(cfg, critic_from_policy)
    adv, returns = maths.gae(token_rewards, scored.old_values, mask, cfg.gamma, lam)  # type: ignore[attr-defined]
    if cfg.whiten_advantages:  # type: ignore[attr-defined]
        adv = maths.masked_whiten(adv, mask) * mask
    return {"adv": adv, "returns": returns, "kl": kl}


def sequence_kl(scored: Scored, mask: torch.Tensor) -> torch.Tensor:
    """sum_t k1(old_logp, ref_logp) per sequence (N,): 0 without a reference, NaN without old_logp."""
    if scored.old_logp is None:
        return torch.full((mask.shape[0],), float("nan"))
    if scored.ref_logp is None:
        return torch.zeros(mask.shape[0])
    return (maths.kl_k1(scored.old_logp, scored.ref_logp) * mask).sum(-1)


def _normalizer(cfg: OnlineConfig, mask: torch.Tensor) -> float:
    """The divisor of a whole minibatch's loss, so that summed micro-batch losses equal its loss."""
    loss_type = getattr(cfg, "loss_type", "token_mean")
    if cfg.algorithm == "rloo" or (cfg.algorithm == "grpo" and loss_type == "grpo"):
        return max(float((mask.sum(-1) > 0).sum()), 1.0)
    if cfg.algorithm == "grpo" and loss_type == "dr_grpo":
        return float(mask.shape[0] * cfg.max_tokens)
    return max(float(mask.sum()), 1.0)


def micro_loss(cfg: OnlineConfig, mb: RolloutBatch, policy: Any, value_model: Any, t: dict[str, torch.Tensor],
               norm: float, value_norm: float, grpo_beta: float
               ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None]:
    """The loss of one micro-batch (its share of the minibatch loss), its stats, the detached
    log-probs (n, T) and, when ``t`` has no ``old_logp`` (pass skipped: old = current, detached),
    the mean entropy (else None)."""
    fresh = "old_logp" not in t
    logp, ent = token_logprobs(policy, mb, cfg.temperature, entropy=fresh)
    old_logp = logp.detach() if fresh else t["old_logp"]
    level = "sequence" if cfg.algorithm == "rloo" else "token"
    loss_type = getattr(cfg, "loss_type", "token_mean") if cfg.algorithm == "grpo" else "token_mean"
    loss, stats = maths.policy_loss(logp, old_logp, t["adv"], mb.mask, cfg.clip_eps, level=level,
                                    loss_type=loss_type, max_completion_length=cfg.max_tokens, normalizer=norm)
    if grpo_beta > 0:  # k3 KL in the loss, aggregated like the policy loss (TRL GRPO)
        per_token = maths.kl_k3(logp, t["ref_logp"]) * mb.mask
        loss = loss + grpo_beta * maths.aggregate_loss(per_token, mb.mask, loss_type, cfg.max_tokens, norm)
    if value_model is not None:
        values = token_values(value_model, mb)
        clip = cfg.value_clip  # type: ignore[attr-defined]
        vloss, vstats = maths.value_loss(values, t["old_values"], t["returns"], mb.mask, clip)
        share = float(mb.mask.sum()) / value_norm
        loss = loss + cfg.vf_coef * vloss * share  # type: ignore[attr-defined]
        stats = {**stats, "value_loss": vloss.item(), **vstats}
    return loss, stats, logp.detach(), ent


def _grad_norm(params: Any) -> float:
    """L2 norm of the gradients of ``params`` (those that have one)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _merge_stats(dist: Dist, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Micro-batch stat sums and counts over ranks; the per-update grad norms are already global
    (taken after `Dist.sum_grads`), so they stay this rank's."""
    if dist.world == 1:
        return sums, count
    per_update = ("grad_norm", "value_grad_norm", "policy_grad_norm")
    merged = {k: v for k, v in sums.items() if k in per_update}
    total = 0
    for part, part_count in dist.gather(({k: v for k, v in sums.items() if k not in per_update}, count)):
        for k, v in part.items():
            merged[k] = merged.get(k, 0.0) + v
        total += part_count
    return merged, total


def update(cfg: OnlineConfig, step: int, batch: RolloutBatch, scored: Scored, adv: dict[str, torch.Tensor],
           valid: torch.Tensor, policy: Any, value_model: Any, optimizer: torch.optim.Optimizer,
           params: list[torch.nn.Parameter], device: Any, autocast: Any, dist: Dist | None = None
           ) -> dict[str, float]:
    """``epochs_per_step`` passes of shuffled minibatches; gradients accumulate over micro-batches.

    Several processes (``dist``): micro-batch j of the step (one process's order) runs on rank
    j % W; each micro-loss keeps the whole minibatch's normaliser, and the gradients are summed
    over ranks before the clip and the step, so the update is one process's (up to summation order).

    When the old-policy pass was skipped (``scored.old_logp`` None, see :func:`reuses_current_logp`)
    the update's own detached log-probs are the old ones: it writes them and the entropy into
    ``scored`` for the step's metrics (the stale-weights gap, the KL). Logs the gradient norms of
    the policy and the value model apart (before the joint clip)."""
    dist = dist or Dist()
    n = batch.mask.shape[0]
    mini = cfg.minibatch_size or n
    sums: dict[str, float] = {}
    count = 0
    fresh = torch.zeros_like(batch.mask) if scored.old_logp is None else None
    entropy, tokens = 0.0, 0.0
    j = -1  # micro-batch counter of the step, the same on every rank
    for epoch in range(cfg.epochs_per_step):
        order = list(range(n))
        random.Random(stable_seed(cfg.seed, "minibatch", step, epoch)).shuffle(order)
        for start in range(0, n, mini):
            rows = order[start:start + mini]
            mask = batch.mask[rows] * valid[rows].unsqueeze(-1)
            norm, value_norm = _normalizer(cfg, mask), max(float(mask.sum()), 1.0)
            if float(mask.sum()) == 0:
                continue
            for m in micro_batches(len(rows), cfg.micro_batch_size):
                j += 1
                if not mine(j, dist.world, dist.rank):
                    continue
                idx = [rows[i] for i in m]
                mb = batch.rows(idx)
                w = mb.mask.shape[1]
                mb.mask = mb.mask * valid[idx].unsqueeze(-1)
                if float(mb.mask.sum()) == 0:  # only masked samples: nothing to learn, no stats
                    continue
                t = {"adv": adv["adv"][idx] if adv["adv"].dim() == 1 else adv["adv"][idx, :w]}
                if fresh is None:
                    t["old_logp"] = scored.old_logp[idx, :w]
                if scored.ref_logp is not None:
                    t["ref_logp"] = scored.ref_logp[idx, :w]
                if value_model is not None:
                    t.update(old_values=scored.old_values[idx, :w], returns=adv["returns"][idx, :w])
                mb, t = mb.to(device), {k: v.to(device) for k, v in t.items()}
                with autocast():
                    loss, stats, logp, ent = micro_loss(cfg, mb, policy, value_model, t, norm, value_norm,
                                                        cfg.beta if cfg.algorithm == "grpo" else 0.0)
                loss.backward()
                if fresh is not None and ent is not None:
                    fresh[idx, :w] = logp.float().cpu()
                    count_tokens = float(mb.mask.sum())
                    entropy, tokens = entropy + float(ent) * count_tokens, tokens + count_tokens
                for k, v in {"loss": loss.item(), **stats}.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            dist.sum_grads(params)
            if value_model is not None:
                sums["value_grad_norm"] = sums.get("value_grad_norm", 0.0) + _grad_norm(value_model.parameters())
                sums["policy_grad_norm"] = sums.get("policy_grad_norm", 0.0) + _grad_norm(policy.parameters())
            if cfg.max_grad_norm > 0:
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sums["updates"] = sums.get("updates", 0.0) + 1
    if fresh is not None:
        ent = dist.sum_(torch.tensor([entropy, tokens], dtype=torch.float64))
        scored.old_logp, scored.entropy = dist.sum_(fresh), float(ent[0] / max(float(ent[1]), 1.0))
    updates = max(sums.pop("updates", 0.0), 1.0)
    sums, count = _merge_stats(dist, sums, count)
    per_update = ("grad_norm", "value_grad_norm", "policy_grad_norm")
    out = {k: v / max(count, 1) for k, v in sums.items() if k not in per_update}
    out.update({k: sums[k] / updates for k in per_update if k in sums})
    out["loss"] = out.get("loss", 0.0) * count / updates  # micro losses sum to the minibatch loss
    return out
