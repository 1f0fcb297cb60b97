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

rm / dpo pack a micro-batch's pairs with the prompt computed once per pair (``pack_pairs``; a pair
never straddles two micro-batches): the row prompt+chosen, then a *branch* holding the prompt's last
token and the rejected response, whose position ids continue the prompt (p-1, p, ...). A segment of
the sequence whose positions restart at q > 0 is such a branch: it attends to the first q tokens of
the row before it and causally to itself, which is exactly what the row prompt+rejected alone would
compute (the prompt's keys and values depend only on the prompt). Attention over a packed sequence
runs per row (``varlen_attention``: one causal SDPA call per row, a masked one per branch), not
transformers' block-diagonal mask, which costs (T x T) over the whole sequence and knows no branches.
A layer with a sliding window w (Mistral, Qwen2/3 ``use_sliding_window``, Gemma2/3, ``sliding_window``)
lets position i see keys i-w < j <= i only; a row longer than w then gets that band as its mask, so
packed rows equal padded ones under the model's own sliding-window mask (tests/test_packing_window.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from rlaif.errors import UserError
from rlaif.train.data import IGNORE_INDEX, TokenizedPair
from rlaif.train.modeling import text_config

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
    """B pairs in one sequence, pair i as the row prompt+chosen then the branch [prompt[-1]]+rejected
    (module docstring); ``row_of`` numbers chosen rows 0..B-1 and rejected ones B..2B-1, and
    ``real_tokens`` counts the rows' tokens (the prompt twice, as a padded batch does; the model runs
    ``TokenizedPair.packed_tokens`` positions per pair)."""
    margins: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (B,)
    last: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (2B,) each row's last token

    def to(self, device: torch.device | str) -> "PackedPairs":
        super().to(device)
        self.margins, self.last = self.margins.to(device), self.last.to(device)
        return self


def pack_pairs(pairs: list[TokenizedPair]) -> PackedPairs:
    """The pairs as rows prompt+chosen, each followed by its rejected branch (see :class:`PackedPairs`);
    targets on response tokens (the branch's first token, the prompt's last, predicts rejected[0])."""
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    row_of: list[int] = []
    ends = [0] * (2 * len(pairs))
    for i, p in enumerate(pairs):
        trunk = p.prompt_ids + p.chosen_ids
        shared = max(len(p.prompt_ids) - 1, 0)       # prompt tokens the branch reads from the row (all but the last)
        branch = p.prompt_ids[shared:] + p.rejected_ids
        for seq, start, learn_from, row in ((trunk, 0, len(p.prompt_ids), i),
                                             (branch, shared, len(p.prompt_ids) - shared, len(pairs) + i)):
            ids += seq
            positions += range(start, start + len(seq))
            targets += shifted_targets(seq, [False] * learn_from + [True] * (len(seq) - learn_from))
            row_of += [row] * len(seq)
            ends[row] = len(ids) - 1
    return PackedPairs(torch.tensor([ids]), torch.tensor([positions]), torch.tensor([targets]), torch.tensor(row_of),
                       indices=[p.index for p in pairs], real_tokens=sum(p.num_tokens for p in pairs),
                       margins=torch.tensor([p.margin for p in pairs], dtype=torch.float32),
                       last=torch.tensor(ends))


def pair_batches(pairs: list[TokenizedPair], max_tokens: int, seed: int) -> list[list[int]]:
    """One epoch of pair-index batches within a token budget of positions the model runs
    (``TokenizedPair.packed_tokens``: the prompt once)."""
    return budget_batches([p.packed_tokens for p in pairs], max_tokens, seed)


# ----------------------------------------------------------------------------- rows sharing a prefix

MIN_SHARED = 8  # a shorter common prefix is not worth a branch (a masked attention call instead of a causal one)


@dataclass
class PrefixPack:
    """Right-padded rows (N, L) as one sequence in which rows share their common prefixes."""
    input_ids: torch.Tensor     # (1, S)
    position_ids: torch.Tensor  # (1, S): a row from 0, a branch from its first own position
    index: torch.Tensor         # (N, L): the packed position whose hidden state token (i, t) has (0 on padding)


def pack_sharing_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, share: bool = True) -> PrefixPack:
    """Pack right-padded rows; with ``share``, a row whose first n >= MIN_SHARED tokens are those of an
    earlier row (a GRPO group's prompt, often more) becomes a branch of that row: only its tokens from
    n on are packed, after the row, with positions n, n+1, ... so ``varlen_attention`` lets them attend
    to the row's first n tokens (hidden states of a shared prefix are the row's, by causality). Rows
    keep their order; a row's branches follow it. Without ``share``: plain packing, ``index`` the
    concatenation order."""
    lengths = attention_mask.sum(-1).tolist()
    rows = [ids[:n] for ids, n in zip(input_ids.tolist(), lengths)]
    branches: dict[int, list[tuple[int, int]]] = {}  # row -> its branches (row index, shared tokens)
    for i, row in enumerate(rows):
        best, shared = -1, 0
        for t in branches if share else ():
            n = _common_prefix(row, rows[t], min(len(row) - 1, len(rows[t])))
            if n > shared:
                best, shared = t, n
        if shared >= MIN_SHARED:
            branches[best].append((i, shared))
        else:
            branches[i] = []
    ids: list[int] = []
    positions: list[int] = []
    index = torch.zeros(input_ids.shape, dtype=torch.long)
    for t, own in branches.items():
        index[t, :len(rows[t])] = torch.arange(len(ids), len(ids) + len(rows[t]))
        ids += rows[t]
        positions += range(len(rows[t]))
        for i, shared in own:
            if shared == positions[-1] + 1:  # would read as the previous segment going on: share one less
                shared -= 1
            index[i, :shared] = index[t, :shared]
            index[i, shared:len(rows[i])] = torch.arange(len(ids), len(ids) + len(rows[i]) - shared)
            ids += rows[i][shared:]
            positions += range(shared, len(rows[i]))
    return PrefixPack(torch.tensor([ids]), torch.tensor([positions]), index)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


ATTENTION_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "attention"})
RECURRENT_MODEL_TYPES = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm", "recurrent_gemma"})


def packing_refusal(config: Any) -> str | None:
    """Why rows of a model with ``config`` cannot share one packed sequence exactly, or None.

    Packing is exact when every layer mixes tokens by attention alone, with positions from
    ``position_ids`` (restarting per row). Refused: layers of any other kind in ``layer_types`` /
    ``layers_block_type`` / ``block_types`` (state-space "mamba", "linear_attention", "conv",
    Llama 4's "chunked_attention"), Mamba blocks (``mamba_*`` settings), recurrent model types, and
    chunked attention (``attention_chunk_size``): a recurrent state or a chunk boundary runs across the
    whole sequence, so one row would see the rows before it."""
    text = text_config(config)
    kind = getattr(text, "model_type", None) or getattr(config, "model_type", "?")
    for name in ("layer_types", "layers_block_type", "block_types"):
        other = sorted(set(getattr(text, name, None) or ()) - ATTENTION_LAYER_TYPES)
        if other:
            return f"model type {kind!r} has {other[0]!r} layers ({name})"
    if kind in RECURRENT_MODEL_TYPES or any(key.startswith("mamba_") for key in vars(text)):
        return f"model type {kind!r} has recurrent (state-space) layers"
    if getattr(text, "attention_chunk_size", None):
        return f"model type {kind!r} attends in chunks of {text.attention_chunk_size} tokens (attention_chunk_size)"
    return None


def attends_per_row(model: Any) -> bool:
    """Whether ``model`` (or its backbone) runs ``varlen_attention``: only then may packed rows branch."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == VARLEN


# ----------------------------------------------------------------------------- attention per row

def row_segments(position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """The segments of a packed (1, T) sequence as (start, end, shared): a segment starts where the
    positions do not continue the previous ones; one starting at position 0 is a row (shared 0), one
    starting at q > 0 a branch that attends to the first ``shared`` = q tokens of the row before it."""
    pos = position_ids[0]
    starts = [0] + ((pos[1:] - pos[:-1]) != 1).nonzero()[:, 0].add(1).tolist()
    firsts = pos[starts].tolist()
    ends = starts[1:] + [pos.shape[0]]
    return [(start, end, first) for start, end, first in zip(starts, ends, firsts)]


def sliding_window(config: Any, layer: int | None = None) -> int | None:
    """The window w of ``config``'s sliding-attention layers (position i attends to keys i-w < j <= i),
    None if every layer attends to the whole row; with ``layer``, that layer's window. Layers slide
    where ``layer_types`` says "sliding_attention" (Gemma2/3, whose ``sliding_window_pattern`` and
    Qwen2/3, whose ``use_sliding_window`` / ``max_window_layers`` their configs turn into layer_types),
    else all of them when ``sliding_window`` is set (Mistral; None: no window)."""
    config = text_config(config)
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types is None:
        return window
    sliding = "sliding_attention" in types if layer is None else types[layer] == "sliding_attention"
    return window if sliding else None


def _row_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int | None,
                   dropout: float, scaling: float | None, shared: int = 0) -> torch.Tensor:
    """Causal SDPA over one row, or a branch whose keys are ``shared`` prefix keys then its own: query
    i (position shared + i) sees key j (position j) when 0 <= shared + i - j, and < ``window`` w
    when the layer slides."""
    n, keys = query.shape[2], key.shape[2]
    if shared == 0 and (window is None or n <= window):
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling,
                                                                is_causal=True)
    back = torch.arange(shared, shared + n, device=query.device)[:, None] - torch.arange(keys, device=query.device)
    allowed = back >= 0 if window is None else (back >= 0) & (back < window)
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed,
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
    segments = row_segments(pos) if pos is not None and query.shape[0] == 1 else [(0, query.shape[2], 0)]
    # split, not one slice per row: a slice's backward zero-fills a full-size gradient per row and sums them
    sizes = [end - start for start, end, _ in segments]
    outs = []
    row_key = row_value = None
    for (_, _, shared), q, k, v in zip(segments, query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2)):
        if shared == 0:
            row_key, row_value = k, v
        elif row_key is None or shared > row_key.shape[2]:
            raise ValueError(f"packed sequence: a branch at position {shared} follows no row that long")
        else:  # a branch: the row's first `shared` keys, then its own
            k, v = torch.cat([row_key[:, :, :shared], k], 2), torch.cat([row_value[:, :, :shared], v], 2)
        outs.append(_row_attention(q, k, v, window, dropout, scaling, shared))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _varlen_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for a packed or plain causal sequence (rows come from position ids); SDPA's otherwise."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(*args, **kwargs)


def use_varlen_attention(model: Any) -> None:
    """Route ``model``'s attention through ``varlen_attention`` (registered once with transformers).
    The setting lives in the in-memory config only: a saved config does not carry it. Every trainer
    that packs rows calls this first, so a model whose rows cannot be packed (`packing_refusal`) is
    refused here, with a `UserError`."""
    reason = packing_refusal(model.config)
    if reason is not None:
        raise UserError(f"{reason}: rlaif's trainers pack several rows into one sequence, and such layers would "
                        f"mix them; train rm and train dpo can pad the rows instead (packing=false)")
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
