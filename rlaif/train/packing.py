"""Padding-free packing: rows of token ids -> one sequence per micro-batch, no padding.

The rows of a micro-batch are concatenated into one ``(1, T)`` sequence whose ``position_ids``
restart at 0 at every row, and the model is called with ``attention_mask=None``. transformers then
derives a block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``
for sdpa / eager / flex attention; flash-attention runs varlen on the same boundaries), so no token
attends across rows and each row's logits equal those of the row alone (tests/test_train_sft.py
checks per-row losses packed == padded to 1e-5 in float32).

Targets are per row and already shifted (``targets[t]`` is the token at ``t + 1`` or IGNORE_INDEX),
so a row's last position never predicts the next row's first token.

Micro-batches fill a token budget: rows in a seeded shuffled order are added while the sum of their
lengths stays within ``max_tokens`` (first fit over the open batches of a window of rows, so few
tokens of budget go unused), then the batches are shuffled. Deterministic in the seed, which is what
makes resume exact. rm/dpo could pack the same way: their chosen and rejected rows are rows here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from rlaif.train.data import IGNORE_INDEX


@dataclass
class PackedRow:
    """One row: its token ids and, per position, the token it must predict (IGNORE_INDEX: none)."""
    input_ids: list[int]
    targets: list[int]
    index: int = 0  # position in its split

    @property
    def max_len(self) -> int:
        return len(self.input_ids)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor     # (1, T)
    position_ids: torch.Tensor  # (1, T), restarting at 0 at each row
    targets: torch.Tensor       # (1, T), IGNORE_INDEX where nothing is learnt
    row_of: torch.Tensor        # (T,), which row of the batch each position belongs to
    indices: list[int] = field(default_factory=list)
    real_tokens: int = 0
    padded_tokens: int = 0      # always 0: nothing is padded

    def to(self, device: torch.device | str) -> "PackedBatch":
        for name in ("input_ids", "position_ids", "targets", "row_of"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def shifted_targets(ids: list[int], learn: list[bool]) -> list[int]:
    """Per position t, the token t+1 when ``learn[t+1]`` (a token the loss is taken on), else IGNORE_INDEX."""
    return [ids[t + 1] if learn[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


def pack(rows: list[PackedRow]) -> PackedBatch:
    """Concatenate ``rows`` into one sequence with per-row position ids."""
    ids = [t for row in rows for t in row.input_ids]
    positions = [p for row in rows for p in range(len(row.input_ids))]
    targets = [t for row in rows for t in row.targets]
    row_of = [i for i, row in enumerate(rows) for _ in row.input_ids]
    return PackedBatch(torch.tensor([ids]), torch.tensor([positions]), torch.tensor([targets]), torch.tensor(row_of),
                       indices=[row.index for row in rows], real_tokens=len(ids))


def budget_batches(lengths: list[int], max_tokens: int, seed: int, window: int = 256) -> list[list[int]]:
    """One epoch of index batches whose lengths sum to at most ``max_tokens`` (a longer row alone).
    Shuffle with ``seed``; within each window of rows, longest first, first fit into the open
    batches; then shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        open_batches: list[tuple[int, list[int]]] = []  # (tokens used, indices)
        for i in sorted(order[start:start + window], key=lambda j: -lengths[j]):
            for k, (used, idx) in enumerate(open_batches):
                if used + lengths[i] <= max_tokens:
                    open_batches[k] = (used + lengths[i], idx + [i])
                    break
            else:
                open_batches.append((lengths[i], [i]))
        batches += [idx for _, idx in open_batches]
    rng.shuffle(batches)
    return batches
