"""A step's rollouts as tensors, and the forwards that read them.

Sequences are ``prompt_ids + completion_ids``, right-padded (EOS and PAD distinct: the mask comes
from the lengths, never from the pad id). Completion token j of row i is predicted at position
``len(prompt_i) - 1 + j``; every log-prob is ``log_softmax(logits / T)`` with the sampling
temperature T, for the policy, the old policy and the reference alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from rlaif.train.modeling import position_ids
from rlaif.train.online import maths


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
        attention = self.attention_mask[idx]
        length = int(attention.sum(-1).max())
        width = max(int(self.mask[idx].sum(-1).max()), 1)
        return RolloutBatch(self.input_ids[idx, :length], attention[:, :length], self.positions[idx, :width],
                            self.targets[idx, :width], self.mask[idx, :width], self.engine_logp[idx, :width])

    def to(self, device: Any) -> "RolloutBatch":
        return RolloutBatch(*(tensor.to(device) for tensor in vars(self).values()))


def build_batch(rollouts: list[Any], pad_id: int) -> RolloutBatch:
    """Right-padded tensors from `rollouts.Rollout`s (prompt_ids, completion_ids, engine_logprobs)."""
    count = len(rollouts)
    lengths = [len(r.prompt_ids) + len(r.completion_ids) for r in rollouts]
    width = max(max((len(r.completion_ids) for r in rollouts), default=1), 1)
    input_ids = torch.full((count, max(lengths)), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((count, max(lengths)), dtype=torch.long)
    positions = torch.zeros((count, width), dtype=torch.long)
    targets = torch.full((count, width), pad_id, dtype=torch.long)
    mask = torch.zeros((count, width))
    engine = torch.zeros((count, width))
    for i, rollout in enumerate(rollouts):
        prompt_len, completion_len = len(rollout.prompt_ids), len(rollout.completion_ids)
        total = prompt_len + completion_len
        input_ids[i, :total] = torch.tensor(list(rollout.prompt_ids) + list(rollout.completion_ids), dtype=torch.long)
        attention_mask[i, :total] = 1
        positions[i] = prompt_len - 1 + torch.arange(width).clamp(max=max(completion_len - 1, 0))
        targets[i, :completion_len] = torch.tensor(rollout.completion_ids, dtype=torch.long)
        mask[i, :completion_len] = 1
        engine[i, :completion_len] = torch.tensor(rollout.engine_logprobs[:completion_len], dtype=torch.float)
    return RolloutBatch(input_ids, attention_mask, positions, targets, mask, engine)


def token_logprobs(model: Any, batch: RolloutBatch, temperature: float, entropy: bool = False,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_j | x, y_<j) per completion token with logits / T, (N, T); and the mean entropy
    (detached, unless ``entropy_grad``: then it carries the gradient, for an entropy bonus).
    Only the positions from the earliest completion on go through the LM head (logits_to_keep)."""
    first = int(batch.positions.min())
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask), logits_to_keep=batch.input_ids.shape[1] - first,
                use_cache=False)
    rows = torch.arange(batch.positions.shape[0], device=batch.positions.device).unsqueeze(-1)
    logits = out.logits[rows, batch.positions - first].float() / temperature          # (N, T, V)
    logp = logits.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    mean_entropy = maths.entropy_from_logits(logits if entropy_grad else logits.detach(), batch.mask) \
        if entropy or entropy_grad else None
    return logp * batch.mask, mean_entropy


def token_values(value_model: Any, batch: RolloutBatch) -> torch.Tensor:
    """V(s_j) at the state before completion token j, (N, T)."""
    values = value_model(batch.input_ids, batch.attention_mask)                       # (N, L)
    rows = torch.arange(batch.positions.shape[0], device=batch.positions.device).unsqueeze(-1)
    return values[rows, batch.positions].float() * batch.mask


def micro_batches(count: int, size: int) -> Iterator[list[int]]:
    """Consecutive index lists of ``size`` (the last may be shorter) covering range(count)."""
    for start in range(0, count, size):
        yield list(range(start, min(start + size, count)))


@dataclass
class Scored:
    """What the no-grad passes give, per completion token (N, T). ``old_logp`` is None when the
    old-policy pass was skipped (:func:`reuses_current_logp`); `update` then fills it and ``entropy``."""

    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    old_values: torch.Tensor | None
    entropy: float


@dataclass
class MicroBatch:
    """One micro-batch of a minibatch: its rows (masked samples zeroed in ``rows.mask``), their
    slices of the step's tensors, and the minibatch's divisors (policy loss, value loss)."""

    rows: RolloutBatch
    advantages: torch.Tensor
    old_logp: torch.Tensor | None  # None: the old-policy pass was skipped (old = current, detached)
    ref_logp: torch.Tensor | None
    old_values: torch.Tensor | None
    returns: torch.Tensor | None
    normalizer: float
    value_normalizer: float

    def to(self, device: Any) -> "MicroBatch":
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return tensor.to(device) if tensor is not None else None
        return MicroBatch(self.rows.to(device), self.advantages.to(device), move(self.old_logp),
                          move(self.ref_logp), move(self.old_values), move(self.returns), self.normalizer,
                          self.value_normalizer)
