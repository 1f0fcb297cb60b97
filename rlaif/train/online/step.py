"""One online-RL step on a batch of rollouts (batch.py): the no-grad scoring passes, the
advantages, and the update (minibatch steps of accumulated micro-batch losses).

What differs between GRPO, RLOO and PPO (advantages, loss level, KL placement, extra losses) is
in algorithms.py. A masked sample (no reward) is left out of the baselines and of the loss.
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import torch

from rlaif.io.seeds import stable_seed
from rlaif.train.online import maths, mismatch
from rlaif.train.online.algorithms import strategy
from rlaif.train.online.batch import MicroBatch, RolloutBatch, Scored, micro_batches, token_logprobs, token_values
from rlaif.train.online.config import OnlineConfig, is_low
from rlaif.train.online.distributed import Dist, mine
from rlaif.train.online.value import riding_values
from rlaif.train.nonfinite import NonFiniteGuard


def reuses_current_logp(cfg: OnlineConfig, count: int, kl_coef: float) -> bool:
    """Whether the old-policy pass can be skipped: the batch of ``count`` completions is used for
    exactly one optimizer update (one epoch, one minibatch), so every forward of the update runs on
    the weights that sampled the batch and old_logp = logp.detach() (ratio exp(logp - logp.detach())
    = 1, gradient of logp: the on-policy policy gradient, as TRL GRPO with num_iterations = 1). The
    advantages must not need old_logp before the update (`Algorithm.advantages_need_old_logp`)."""
    single = cfg.epochs_per_step == 1 and (cfg.minibatch_size == 0 or cfg.minibatch_size >= count)
    return single and not strategy(cfg).advantages_need_old_logp(kl_coef)


@torch.no_grad()
def score_batch(cfg: OnlineConfig, batch: RolloutBatch, policy: Any, reference: Any, value_model: Any,
                device: Any, autocast: Any, old_policy: bool = True, dist: Dist | None = None) -> Scored:
    """Old-policy (unless ``old_policy`` is False) and reference log-probs, and PPO values, in
    micro-batches, full width (N, T). Several processes: micro-batch i on rank i % W, the results
    summed over ranks (each row is filled by one rank, zeros elsewhere: the sum is exact)."""
    dist = dist or Dist()
    count, width = batch.mask.shape
    old = torch.zeros(count, width) if old_policy else None
    ref = torch.zeros(count, width) if reference is not None else None
    values = torch.zeros(count, width) if value_model is not None else None
    if old is None and ref is None and values is None:
        return Scored(None, None, None, float("nan"))
    entropy = torch.zeros(2, dtype=torch.float64)  # sum of entropy x tokens, tokens
    for micro_index, idx in enumerate(micro_batches(count, cfg.micro_batch_size)):
        if not mine(micro_index, dist.world, dist.rank):
            continue
        micro = batch.rows(idx).to(device)
        micro_width = micro.mask.shape[1]
        with autocast():
            # a shared value head rides on the old-policy forward (one forward, two heads)
            with riding_values(value_model) if old is not None else nullcontext(value_model) as values_of:
                if old is not None:
                    logp, micro_entropy = token_logprobs(policy, micro, cfg.temperature, entropy=True,
                                                         top_p=cfg.top_p)
                    old[idx, :micro_width] = logp.float().cpu()
                    tokens = float(micro.mask.sum())
                    entropy += torch.tensor([float(micro_entropy) * tokens, tokens], dtype=torch.float64)
                if value_model is not None:
                    values[idx, :micro_width] = token_values(values_of, micro).float().cpu()
            if reference is not None:
                with reference() as ref_model:
                    ref[idx, :micro_width] = token_logprobs(ref_model, micro, cfg.temperature,
                                                             top_p=cfg.top_p)[0].float().cpu()
    for tensor in (old, ref, values, entropy):
        if tensor is not None:
            dist.sum_(tensor)
    return Scored(old, ref, values, float(entropy[0] / max(float(entropy[1]), 1.0)))


def advantages(cfg: OnlineConfig, batch: RolloutBatch, scores: torch.Tensor, valid: torch.Tensor,
               scored: Scored, kl_coef: float, critic_from_policy: bool = False) -> dict[str, torch.Tensor]:
    """The algorithm's advantages: ``adv`` (N,) for grpo/rloo, (N, T) for ppo; ``returns`` (ppo);
    ``kl`` (N,) the sequence k1 KL to the reference (0 without one; NaN until `update` fills
    ``scored.old_logp`` when the old-policy pass was skipped, see :func:`sequence_kl`).
    ``critic_from_policy``: PPO's value model started from the policy (`PPOConfig.gae_lambda`)."""
    mask = batch.mask * valid.unsqueeze(-1)
    kl = sequence_kl(scored, batch.mask)
    return strategy(cfg).advantages(scores, valid, mask, kl, scored, kl_coef, critic_from_policy)


def sequence_kl(scored: Scored, mask: torch.Tensor) -> torch.Tensor:
    """sum_t k1(old_logp, ref_logp) per sequence (N,): 0 without a reference, NaN without old_logp."""
    if scored.old_logp is None:
        return torch.full((mask.shape[0],), float("nan"))
    if scored.ref_logp is None:
        return torch.zeros(mask.shape[0])
    return (maths.kl_k1(scored.old_logp, scored.ref_logp) * mask).sum(-1)


# ----------------------------------------------------------------------------- the update

@dataclass
class Learner:
    """What an update trains and where: the models, their optimizer and parameters, the device, the
    autocast context and the processes (`setup.Run` is one)."""

    policy: Any
    value_model: Any
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    device: Any
    autocast: Callable[[], ContextManager[Any]]
    dist: Dist = field(default_factory=Dist)
    guard: NonFiniteGuard | None = None  # the run's NaN/inf check (made from cfg.nonfinite on first use)
    entropy_coef: Any = None  # the entropy bonus coefficient (`Algorithm.entropy_controller`); None: off


def micro_loss(cfg: OnlineConfig, micro: MicroBatch, policy: Any, value_model: Any, entropy_coef: float = 0.0
               ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None]:
    """The loss of one micro-batch (its share of the minibatch loss: the algorithm's policy loss,
    plus its extra loss, minus ``entropy_coef`` x the mean token entropy weighted by the micro-batch's
    share of the minibatch's tokens), its stats, the detached log-probs (n, T) and, when the
    old-policy pass was skipped (old = current, detached), the mean entropy (else None).
    ``cfg.is_correction`` weighs each term by pi_old / pi_engine (mismatch.py); with the pass skipped
    pi_old is the current detached policy, which is the old policy then (the weights have not moved yet)."""
    algorithm = strategy(cfg)
    fresh = micro.old_logp is None
    bonus = entropy_coef > 0
    with riding_values(value_model) as values_of:  # a shared value head: values from this same forward
        logp, mean_entropy = token_logprobs(policy, micro.rows, cfg.temperature, entropy=fresh, entropy_grad=bonus,
                                            top_p=cfg.top_p)
    old_logp = logp.detach() if micro.old_logp is None else micro.old_logp
    adv = mismatch.weigh_advantages(cfg.is_correction, micro.advantages, old_logp, micro.rows.engine_logp,
                                    micro.rows.mask, cfg.is_cap, is_low(cfg), algorithm.weight_level())
    loss, stats = algorithm.policy_loss(logp, old_logp, dataclasses.replace(micro, advantages=adv))
    extra = algorithm.extra_loss(logp, micro, values_of)
    if extra is not None:
        loss, stats = loss + extra[0], {**stats, **extra[1]}
    if bonus and mean_entropy is not None:
        share = float(micro.rows.mask.sum()) / micro.value_normalizer
        loss = loss - entropy_coef * mean_entropy * share
        mean_entropy = mean_entropy.detach()
    return loss, stats, logp.detach(), mean_entropy if fresh else None


PER_UPDATE = ("grad_norm", "value_grad_norm", "policy_grad_norm")  # stats taken once per optimizer step


class _Tally:
    """An update's running stat sums, its micro-batch counter (the same on every rank) and, when the
    old-policy pass was skipped, the log-probs and entropy its forwards give."""

    def __init__(self, fresh: torch.Tensor | None) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0           # micro-batches with a loss, on this rank
        self.updates = 0.0       # optimizer steps
        self.micro_index = -1    # micro-batch counter of the step
        self.fresh = fresh
        self.entropy, self.tokens = 0.0, 0.0
        self.step_loss = 0.0     # this rank's loss sum of the current optimizer update (NaN/inf check)

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def keep_logprobs(self, idx: list[int], logp: torch.Tensor, mean_entropy: torch.Tensor, tokens: float) -> None:
        """The skipped pass's old log-probs of rows ``idx`` and their entropy (weighted by tokens)."""
        assert self.fresh is not None
        self.fresh[idx, :logp.shape[1]] = logp.float().cpu()
        self.entropy, self.tokens = self.entropy + float(mean_entropy) * tokens, self.tokens + tokens

    def finish(self, scored: Scored, dist: Dist) -> dict[str, float]:
        """Fill ``scored`` (skipped pass) and return the mean stats: per micro-batch, per update for
        the gradient norms; the loss is the mean minibatch loss (micro losses sum to it)."""
        if self.fresh is not None:
            entropy = dist.sum_(torch.tensor([self.entropy, self.tokens], dtype=torch.float64))
            scored.old_logp, scored.entropy = dist.sum_(self.fresh), float(entropy[0] / max(float(entropy[1]), 1.0))
        updates = max(self.updates, 1.0)
        sums, count = _merge_stats(dist, self.sums, self.count)
        out = {key: value / max(count, 1) for key, value in sums.items() if key not in PER_UPDATE}
        out.update({key: sums[key] / updates for key in PER_UPDATE if key in sums})
        out["loss"] = out.get("loss", 0.0) * count / updates
        return out


def _grad_norm(params: Any) -> float:
    """L2 norm of the gradients of ``params`` (those that have one)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _merge_stats(dist: Dist, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Micro-batch stat sums and counts over ranks; the per-update grad norms are already global
    (taken after `Dist.sum_grads`), so they stay this rank's."""
    if dist.world == 1:
        return sums, count
    merged = {key: value for key, value in sums.items() if key in PER_UPDATE}
    total = 0
    for part, part_count in dist.gather(({key: value for key, value in sums.items() if key not in PER_UPDATE},
                                         count)):
        for key, value in part.items():
            merged[key] = merged.get(key, 0.0) + value
        total += part_count
    return merged, total


def _minibatches(cfg: OnlineConfig, step: int, count: int) -> Iterator[list[int]]:
    """Row lists of each optimizer update: ``epochs_per_step`` seeded shuffles of the batch's
    ``count`` rows, cut into minibatches of ``minibatch_size`` (0: the whole batch)."""
    size = cfg.minibatch_size or count
    for epoch in range(cfg.epochs_per_step):
        order = list(range(count))
        random.Random(stable_seed(cfg.seed, "minibatch", step, epoch)).shuffle(order)
        for start in range(0, count, size):
            yield order[start:start + size]


def _micro_batch(batch: RolloutBatch, scored: Scored, adv: dict[str, torch.Tensor], valid: torch.Tensor,
                 idx: list[int], normalizers: tuple[float, float]) -> MicroBatch:
    """Rows ``idx`` of the step with their slices of the scored tensors and advantages."""
    rows = batch.rows(idx)
    width = rows.mask.shape[1]
    rows.mask = rows.mask * valid[idx].unsqueeze(-1)
    step_adv = adv["adv"]
    return MicroBatch(rows, step_adv[idx] if step_adv.dim() == 1 else step_adv[idx, :width],
                      scored.old_logp[idx, :width] if scored.old_logp is not None else None,
                      scored.ref_logp[idx, :width] if scored.ref_logp is not None else None,
                      scored.old_values[idx, :width] if scored.old_values is not None else None,
                      adv["returns"][idx, :width] if "returns" in adv else None, *normalizers)


def _optimizer_step(cfg: OnlineConfig, learner: Learner, tally: _Tally, where: str) -> None:
    """Sum the gradients over ranks, check loss and gradient norm are finite (`rlaif.train.nonfinite`:
    stop, or skip the update), log the norms, clip, step."""
    learner.dist.sum_grads(learner.params)
    loss = float(learner.dist.sum_(torch.tensor([tally.step_loss], dtype=torch.float64))[0])  # same on every rank
    tally.step_loss = 0.0
    norms: dict[str, float] = {}
    if learner.value_model is not None:  # before the joint clip
        norms = {"value_grad_norm": _grad_norm(learner.value_model.parameters()),
                 "policy_grad_norm": _grad_norm(learner.policy.parameters())}
    if cfg.max_grad_norm > 0:
        norms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(learner.params, cfg.max_grad_norm))
    if not _guard(cfg, learner).allows(where, loss, norms["grad_norm"] if "grad_norm" in norms
                                       else _grad_norm(learner.params)):
        learner.optimizer.zero_grad(set_to_none=True)
        return
    tally.add(norms)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    tally.updates += 1


def _guard(cfg: OnlineConfig, learner: Learner) -> NonFiniteGuard:
    """The run's NaN/inf check, made on first use."""
    if learner.guard is None:
        learner.guard = NonFiniteGuard(cfg.nonfinite)
    return learner.guard


def _micro_step(cfg: OnlineConfig, micro: MicroBatch, idx: list[int], learner: Learner, tally: _Tally) -> None:
    """Forward and backward of one micro-batch (rows ``idx``); its stats go to ``tally``."""
    micro = micro.to(learner.device)
    with learner.autocast():
        coef = learner.entropy_coef.value if learner.entropy_coef is not None else 0.0
        loss, stats, logp, mean_entropy = micro_loss(cfg, micro, learner.policy, learner.value_model, coef)
    loss.backward()
    if tally.fresh is not None and mean_entropy is not None:
        tally.keep_logprobs(idx, logp, mean_entropy, float(micro.rows.mask.sum()))
    tally.add({"loss": loss.item(), **stats})
    tally.step_loss += loss.item()
    tally.count += 1


def _minibatch_step(cfg: OnlineConfig, rows: list[int], batch: RolloutBatch, scored: Scored,
                    adv: dict[str, torch.Tensor], valid: torch.Tensor, learner: Learner, tally: _Tally,
                    where: str) -> None:
    """One optimizer update on minibatch ``rows``: this rank's micro-batches, each loss divided by
    the whole minibatch's normaliser so their gradients sum to the minibatch's, then the step. A
    minibatch of masked samples only is skipped."""
    mask = batch.mask[rows] * valid[rows].unsqueeze(-1)
    normalizers = strategy(cfg).normalizer(mask), max(float(mask.sum()), 1.0)
    if float(mask.sum()) == 0:
        return
    for part in micro_batches(len(rows), cfg.micro_batch_size):
        tally.micro_index += 1
        if not mine(tally.micro_index, learner.dist.world, learner.dist.rank):
            continue
        idx = [rows[i] for i in part]
        micro = _micro_batch(batch, scored, adv, valid, idx, normalizers)
        if float(micro.rows.mask.sum()) > 0:  # only masked samples: nothing to learn, no stats
            _micro_step(cfg, micro, idx, learner, tally)
    _optimizer_step(cfg, learner, tally, where)


def update(cfg: OnlineConfig, step: int, batch: RolloutBatch, scored: Scored, adv: dict[str, torch.Tensor],
           valid: torch.Tensor, learner: Learner) -> dict[str, float]:
    """``epochs_per_step`` passes of shuffled minibatches, one optimizer step each (`_minibatch_step`);
    returns the update's mean stats.

    Several processes (``learner.dist``): micro-batch i of the step (one process's order) runs on
    rank i % W, and the gradients are summed over ranks before the clip and the step, so the update
    is one process's (up to summation order). When the old-policy pass was skipped
    (``scored.old_logp`` None, :func:`reuses_current_logp`) the update's own detached log-probs are
    the old ones: it writes them and the entropy into ``scored``. Logs the gradient norms of the
    policy and the value model apart (before the joint clip)."""
    tally = _Tally(torch.zeros_like(batch.mask) if scored.old_logp is None else None)
    skipped = _guard(cfg, learner).skipped
    for update_index, rows in enumerate(_minibatches(cfg, step, batch.mask.shape[0]), 1):
        _minibatch_step(cfg, rows, batch, scored, adv, valid, learner, tally, f"step {step + 1}, update {update_index}")
    stats = tally.finish(scored, learner.dist)
    if cfg.nonfinite == "skip":
        stats["nonfinite_skipped"] = float(_guard(cfg, learner).skipped - skipped)
    return stats
