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


def token_logprobs(model: Any, batch: RolloutBatch, temperature: float, entropy: bool = False, *,
                   entropy_grad: bool = False, top_p: float = 1.0, top_k: int = 0, packed: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_j | x, y_<j) per completion token, (N, T) (0 off the mask); and the mean entropy over
    the mask (detached, unless ``entropy_grad``: then it carries the gradient, for an entropy bonus).
    pi is ``softmax(logits / T)`` restricted to the top-k / top-p nucleus and renormalised
    (:func:`nucleus_logits`, the engine's sampling distribution; all of it at top_p 1, top_k 0).

    Lean path (a causal LM with ``get_decoder`` and ``get_output_embeddings``): the rows are packed into
    one sequence (``packed``: position ids restarting per row, ``attention_mask=None``; the online
    trainers' models attend per row, `rlaif.train.packing.use_varlen_attention`; other attention
    implementations build the block-diagonal causal mask), the backbone runs once, the
    LM head runs only at the positions that predict a completion token, and the log-softmax and
    entropy go over chunks of those positions (:func:`head_logprobs`). Other models: padded forward."""
    entropy = entropy or entropy_grad
    parts = _decoder_and_head(model)
    if parts is None:
        return _padded_logprobs(model, batch, temperature, entropy, top_p, top_k, entropy_grad)
    decoder, head = parts
    keep = batch.mask > 0
    if packed:
        real = batch.attention_mask.bool()
        lengths = batch.attention_mask.sum(-1)
        offsets = (lengths.cumsum(0) - lengths).unsqueeze(-1)                          # (N, 1)
        hidden = decoder(input_ids=batch.input_ids[real].unsqueeze(0), attention_mask=None,
                         position_ids=position_ids(batch.attention_mask)[real].unsqueeze(0),
                         use_cache=False).last_hidden_state[0]                         # (sum len, H)
        hidden = hidden[(offsets + batch.positions)[keep]]                             # (M, H)
    else:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=position_ids(batch.attention_mask), use_cache=False).last_hidden_state
        rows = torch.arange(batch.positions.shape[0], device=batch.positions.device).unsqueeze(-1)
        hidden = hidden[rows.expand_as(batch.positions)[keep], batch.positions[keep]]
    logp_kept, entropy_kept = head_logprobs(head, hidden, batch.targets[keep], temperature, entropy, top_p, top_k,
                                            entropy_grad)
    logp = torch.zeros(batch.mask.shape, dtype=logp_kept.dtype, device=logp_kept.device)
    logp = logp.masked_scatter(keep, logp_kept)
    mean_entropy = None
    if entropy:
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


LOGIT_CHUNK_ELEMENTS = 1 << 25  # float32 logits per chunk of positions (128 MiB)


def head_logprobs(head: Any, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: bool,
                  top_p: float = 1.0, top_k: int = 0, entropy_grad: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position of ``hidden`` (M, H): log softmax(z)[target] and, with ``entropy``, the entropy
    -sum_v p_v log p_v (detached unless ``entropy_grad``), where z = nucleus(head(h) / T). The LM head and the float32 softmax
    run over chunks of positions; with gradients and several chunks, each chunk is recomputed in
    backward (torch.utils.checkpoint), so no (M, V) float32 tensor is ever held whole."""
    vocab = int(head.weight.shape[0])
    size = max(1, LOGIT_CHUNK_ELEMENTS // vocab)
    chunks = list(zip(hidden.split(size), targets.split(size)))
    recompute = torch.is_grad_enabled() and hidden.requires_grad and len(chunks) > 1
    logps, entropies = [], []
    for h, y in chunks:
        if recompute:
            from torch.utils.checkpoint import checkpoint

            logp, ent = checkpoint(_chunk_logp, head, h, y, temperature, top_p, top_k, entropy, entropy_grad,
                                   use_reentrant=False)
        else:
            logp, ent = _chunk_logp(head, h, y, temperature, top_p, top_k, entropy, entropy_grad)
        logps.append(logp)
        entropies.append(ent)
    empty = hidden.new_zeros(0, dtype=torch.float32)
    return (torch.cat(logps) if logps else empty), (torch.cat(entropies) if entropy and entropies else empty)


def _chunk_logp(head: Any, h: torch.Tensor, y: torch.Tensor, temperature: float, top_p: float, top_k: int,
                entropy: bool, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's log-probs of ``y`` and (``entropy``) entropies, detached unless ``entropy_grad``,
    from one head matmul."""
    z = nucleus_logits(head(h).float() / temperature, top_p, top_k, y)
    logp = z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, -1)
    ent = _entropy(z if entropy_grad else z.detach()) if entropy else z.new_zeros(0)
    return logp, ent


def _entropy(z: torch.Tensor) -> torch.Tensor:
    """-sum_v p_v log p_v of softmax(z) per row; -inf logits (outside the nucleus) contribute 0."""
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * logp.masked_fill(torch.isinf(z), 0.0)).sum(-1)


def nucleus_logits(z: torch.Tensor, top_p: float = 1.0, top_k: int = 0, targets: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """``z`` (.., V) with every token outside the top-k and the top-p nucleus set to -inf, as vLLM's
    sampler does it (`apply_top_k_top_p_pytorch`: sort ascending, drop tokens below the k-th largest,
    then those whose ascending cumulative probability is <= 1 - p, the largest always kept), so
    log_softmax of the result is the renormalised distribution the engine samples from and returns
    log-probs of (``logprobs_mode="processed_logprobs"``). ``targets``: ids kept whatever the
    boundary says (the engine sampled them, so they were in its nucleus; a float round-off at the
    boundary must not give -inf). No-op at top_p 1 and top_k 0 (or >= V)."""
    vocab = z.shape[-1]
    if top_p >= 1.0 and (top_k <= 0 or top_k >= vocab):
        return z
    ordered, order = z.sort(-1)
    if 0 < top_k < vocab:
        ordered = ordered.masked_fill(ordered < ordered[..., vocab - top_k:vocab - top_k + 1], float("-inf"))
    if top_p < 1.0:
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        ordered = ordered.masked_fill(drop, float("-inf"))
    out = torch.empty_like(z).scatter_(-1, order, ordered)
    if targets is not None:
        target = targets.unsqueeze(-1)
        out = out.scatter(-1, target, z.gather(-1, target))
    return out


def _padded_logprobs(model: Any, batch: RolloutBatch, temperature: float, entropy: bool, top_p: float,
                     top_k: int, entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The padded forward (any model that returns ``logits``): the positions from the earliest
    completion on go through the LM head (logits_to_keep)."""
    first = int(batch.positions.min())
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask), logits_to_keep=batch.input_ids.shape[1] - first,
                use_cache=False)
    rows = torch.arange(batch.positions.shape[0], device=batch.positions.device).unsqueeze(-1)
    logits = out.logits[rows, batch.positions - first].float() / temperature          # (N, T, V)
    logits = nucleus_logits(logits, top_p, top_k, batch.targets)
    logp = logits.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    mean_entropy = maths.masked_mean(_entropy(logits if entropy_grad else logits.detach()), batch.mask) \
        if entropy else None
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
