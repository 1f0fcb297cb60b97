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
makes resume exact.

rm / dpo pack a micro-batch's pairs the same way (``pack_pairs``: every chosen row, then every
rejected row; a pair never straddles two micro-batches). Attention over a packed sequence runs per
row (``varlen_attention``: one causal SDPA call per row, or the same rows as
transformers' block-diagonal mask would allow, without its (T x T) cost over the whole sequence).
A layer with a sliding window w (Mistral, Qwen2/3 ``use_sliding_window``, Gemma2/3, ``sliding_window``)
lets position i see keys i-w < j <= i only; a row longer than w then gets that band as its mask, so
packed rows equal padded ones under the model's own sliding-window mask (tests/test_packing_window.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from rlaif.train.data import IGNORE_INDEX, TokenizedPair

VARLEN = "rlaif_varlen"  # attention implementation name registered with transformers


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


# ----------------------------------------------------------------------------- preference pairs

@dataclass
class PackedPairs(PackedBatch):
    """B pairs packed as rows [chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}] in one sequence."""
    margins: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (B,)
    last: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (2B,) each row's last token

    def to(self, device: torch.device | str) -> "PackedPairs":
        super().to(device)
        self.margins, self.last = self.margins.to(device), self.last.to(device)
        return self


def pack_pairs(pairs: list[TokenizedPair]) -> PackedPairs:
    """The pairs' prompt+chosen and prompt+rejected rows in one sequence; targets on response tokens."""
    rows = []
    for side in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            response = getattr(p, side)
            ids = p.prompt_ids + response
            rows.append(PackedRow(ids, shifted_targets(ids, [False] * len(p.prompt_ids) + [True] * len(response)),
                                  p.index))
    packed = pack(rows)
    ends = torch.tensor([len(r.input_ids) for r in rows]).cumsum(0) - 1
    return PackedPairs(packed.input_ids, packed.position_ids, packed.targets, packed.row_of,
                       indices=[p.index for p in pairs], real_tokens=packed.real_tokens,
                       margins=torch.tensor([p.margin for p in pairs], dtype=torch.float32), last=ends)


def pair_batches(pairs: list[TokenizedPair], max_tokens: int, seed: int) -> list[list[int]]:
    """One epoch of pair-index batches within a token budget (a pair counts prompt twice: two rows)."""
    return budget_batches([p.num_tokens for p in pairs], max_tokens, seed)


# ----------------------------------------------------------------------------- attention per row

def row_bounds(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the rows of a packed (1, T) sequence, plus T (rows start at position 0)."""
    starts = (position_ids[0] == 0).nonzero()[:, 0].tolist()
    return (starts if starts and starts[0] == 0 else [0] + starts) + [position_ids.shape[-1]]


def sliding_window(config: Any, layer: int | None = None) -> int | None:
    """The window w of ``config``'s sliding-attention layers (position i attends to keys i-w < j <= i),
    None if every layer attends to the whole row; with ``layer``, that layer's window. Layers slide
    where ``layer_types`` says "sliding_attention" (Gemma2/3, whose ``sliding_window_pattern`` and
    Qwen2/3, whose ``use_sliding_window`` / ``max_window_layers`` their configs turn into layer_types),
    else all of them when ``sliding_window`` is set (Mistral; None: no window)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types is None:
        return window
    sliding = "sliding_attention" in types if layer is None else types[layer] == "sliding_attention"
    return window if sliding else None


def _row_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int | None,
                   dropout: float, scaling: float | None) -> torch.Tensor:
    """Causal SDPA over one row; a row longer than ``window`` w masks key j from query i unless i-w < j <= i."""
    n = query.shape[2]
    if window is None or n <= window:
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling,
                                                                is_causal=True)
    back = torch.arange(n, device=query.device)
    back = back[:, None] - back[None, :]  # i - j
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=(back >= 0) & (back < window),
                                                            dropout_p=dropout, scale=scaling)


def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention within each row of a packed (1, T) sequence (rows from ``position_ids``; a (B, T)
    batch without a mask: each of its B rows), within the layer's sliding window: the rows' outputs
    equal those of the rows alone. The window is the one the model hands attention functions
    (``sliding_window``, as to flash-attention), else the config's (``sliding_window``). Anything else
    (a padding mask, a KV cache) goes to transformers' SDPA attention unchanged."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if attention_mask is not None or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    window = kwargs.get("sliding_window", sliding_window(module.config, getattr(module, "layer_idx", None)))
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    pos = kwargs.get("position_ids")
    bounds = row_bounds(pos) if pos is not None and query.shape[0] == 1 else [0, query.shape[2]]
    # split, not one slice per row: a slice's backward zero-fills a full-size gradient per row and sums them
    sizes = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    outs = [_row_attention(q, k, v, window, dropout, scaling)
            for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2))]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _varlen_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for a packed or plain causal sequence (rows come from position ids); SDPA's otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(*args, **kwargs)


def use_varlen_attention(model: Any) -> None:
    """Route ``model``'s attention through ``varlen_attention`` (registered once with transformers).
    The setting lives in the in-memory config only: a saved config does not carry it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, _varlen_mask)
    model.config._attn_implementation = VARLEN


# ----------------------------------------------------------------------------- rm / dpo micro-batches

def pair_micro_batches(cfg: Any, pairs: list[TokenizedPair], pad_token_id: int, accelerator: Any) -> Any:
    """The runtime's micro-batch schedule for rm / dpo: with ``cfg.packing`` each micro-batch is packed
    (``pack_pairs``), and with ``max_tokens_per_batch > 0`` it holds the pairs a token budget admits
    instead of ``batch_size`` pairs. Same global order for any number of processes, exact resume."""
    from rlaif.train.runtime import MicroBatches

    class PairMicroBatches(MicroBatches):
        def _epoch(self, epoch: int) -> list[list[int]]:
            c = self.cfg
            if not (c.packing and c.max_tokens_per_batch > 0):
                return super()._epoch(epoch)
            batches = pair_batches(self.pairs, c.max_tokens_per_batch, c.seed + epoch)
            per_step = self.world * c.grad_accum
            return batches[:(len(batches) // per_step) * per_step or len(batches)]

        def collate(self, idx: list[int]) -> Any:
            return pack_pairs([self.pairs[i] for i in idx]) if self.cfg.packing else super().collate(idx)

    return PairMicroBatches(cfg, pairs, pad_token_id, accelerator)


def pair_eval_batches(cfg: Any, pairs: list[TokenizedPair], batch_size: int, pad_token_id: int, device: Any,
                      progress: bool, desc: str) -> Any:
    """Length-sorted evaluation / reference batches of ``batch_size`` pairs: packed with ``cfg.packing``."""
    from tqdm.auto import tqdm

    from rlaif.train.runtime import batched_eval

    if not cfg.packing:
        yield from batched_eval(pairs, batch_size, pad_token_id, device, progress, desc)
        return
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].max_len)
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        yield pack_pairs([pairs[i] for i in idx]).to(device)
