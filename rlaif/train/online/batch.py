"""A step's rollouts as tensors, and the forwards that read them.

Sequences are ``prompt_ids + completion_ids``, right-padded (EOS and PAD distinct: the mask comes
from the lengths, never from the pad id). Completion token j of row i is predicted at position
``len(prompt_i) - 1 + j``; every log-prob is ``log_softmax(logits / T)`` with the sampling
temperature T (the logits soft-capped first where the model does it, Gemma 2), for the policy, the old
policy and the reference alike (`rlaif.train.logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from rlaif.train.logprobs import HeadTransform, head_logprobs, head_transform_of, logits_logprobs
from rlaif.train.modeling import position_ids
from rlaif.train.packing import attends_per_row, pack_sharing_prefixes, packing_refusal
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


def token_logprobs(model: Any, batch: RolloutBatch, temperature: float, entropy: bool = False, *,
                   entropy_grad: bool = False, top_p: float = 1.0, top_k: int = 0, packed: bool | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_j | x, y_<j) per completion token, (N, T) (0 off the mask); and the mean entropy over
    the mask (detached, unless ``entropy_grad``: then it carries the gradient, for an entropy bonus).
    pi is ``softmax(logits / T)`` (logits soft-capped as the model does) restricted to the top-k / top-p
    nucleus and renormalised (`rlaif.train.logprobs.nucleus_logits`, the engine's sampling distribution;
    all of it at top_p 1, top_k 0).

    Lean path (a causal LM with ``get_decoder`` and ``get_output_embeddings``): the backbone runs once,
    the LM head runs only at the positions that predict a completion token, and the log-softmax and
    entropy go over chunks of those positions (`rlaif.train.logprobs.head_logprobs`). With ``packed``
    (the default, unless `rlaif.train.packing.packing_refusal` finds layers that would mix packed rows,
    e.g. a Mamba hybrid's: those rows run padded) the rows are one sequence, position ids restarting per
    row and ``attention_mask=None``. The online trainers' models attend per row
    (`rlaif.train.packing.use_varlen_attention`), and then a row that starts like an earlier one, a
    group's prompt, runs only its own tokens, as a branch of that row
    (`rlaif.train.packing.pack_sharing_prefixes`); other attention implementations build the
    block-diagonal causal mask. Other models: padded forward."""
    entropy = entropy or entropy_grad
    parts = _decoder_and_head(model)
    if parts is None:
        return _padded_logprobs(model, batch, temperature, entropy, top_p, top_k, entropy_grad)
    decoder, head = parts
    keep = batch.mask > 0
    if packed is None:
        packed = packing_refusal(decoder.config) is None
    if packed:
        device = batch.input_ids.device
        pack = pack_sharing_prefixes(batch.input_ids.cpu(), batch.attention_mask.cpu(), attends_per_row(decoder))
        hidden = decoder(input_ids=pack.input_ids.to(device), attention_mask=None,
                         position_ids=pack.position_ids.to(device), use_cache=False).last_hidden_state[0]  # (S, H)
        rows = torch.arange(batch.positions.shape[0], device=device).unsqueeze(-1).expand_as(batch.positions)
        hidden = hidden[pack.index.to(device)[rows, batch.positions][keep]]            # (M, H)
    else:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state
        rows = torch.arange(batch.positions.shape[0], device=batch.positions.device).unsqueeze(-1)
        hidden = hidden[rows.expand_as(batch.positions)[keep], batch.positions[keep]]
    logp_kept, entropy_kept = head_logprobs(head, hidden, batch.targets[keep], temperature,
                                            transform=head_transform_of(model), top_p=top_p, top_k=top_k,
                                            entropy=entropy, entropy_grad=entropy_grad)
    logp = torch.zeros(batch.mask.shape, dtype=logp_kept.dtype, device=logp_kept.device)
    logp = logp.masked_scatter(keep, logp_kept)
    mean_entropy = None
    if entropy_kept is not None:
        mean_entropy = entropy_kept.sum() / max(int(keep.sum()), 1) if entropy_kept.numel() else \
            torch.tensor(0.0, device=logp.device)
    return logp, mean_entropy


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """The backbone (returns ``last_hidden_state``) and the LM head of a transformers causal LM (peft
    wrappers pass the calls through), or None for anything else."""
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


def _padded_logprobs(model: Any, batch: RolloutBatch, temperature: float, entropy: bool, top_p: float,
                     top_k: int, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The padded forward (any model that returns ``logits``): the positions from the earliest
    completion on go through the LM head (logits_to_keep)."""
    first = int(batch.positions.min())
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask), logits_to_keep=batch.input_ids.shape[1] - first,
                use_cache=False)
    rows = torch.arange(batch.positions.shape[0], device=batch.positions.device).unsqueeze(-1)
    logits = out.logits[rows, batch.positions - first]                                 # (N, T, V), soft-capped
    logp, per_token = logits_logprobs(logits, batch.targets, temperature, HeadTransform(), top_p, top_k, entropy,
                                      entropy_grad)
    return logp * batch.mask, (maths.masked_mean(per_token, batch.mask) if per_token is not None else None)


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
