"""Preference pairs -> token ids, once and correctly; length-grouped padded batches.

Reads DIR/preferences/{train,test}.jsonl (or DIR/{train,test}.jsonl) in TRL's conversational
preference format (see /work/notes/interfaces.md):
``{"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...], "margin": ...}``.

Tokenization: the chat template is applied once, to the *full* conversation (prompt + response),
exactly as the model will see it at inference; the prompt/response boundary is the length of the
templated prompt with ``add_generation_prompt=True``. Tokenizing the pieces separately and
concatenating them is how BOS/EOS get doubled (TRL issues); here ``prompt_ids + chosen_ids`` is
by construction ``apply_chat_template(prompt + chosen)``.

Truncation policy (counted, reported, never a silent drop), for a pair longer than ``max_length``:
1. the prompt keeps its last ``max_prompt_length`` tokens (left truncation: the question's end
   and the assistant header survive, the system prompt goes first);
2. each response keeps its first ``max_length - len(prompt)`` tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlaif.errors import UserError, where
from rlaif.io.records import iter_jsonl

IGNORE_INDEX = -100
SPLITS = ("train", "test")


# ----------------------------------------------------------------------------- reading

@dataclass
class PreferenceRow:
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    margin: float = 0.0
    id: str = ""


def _messages(value: Any, path: Path, line: int, name: str, allow_str: bool) -> list[dict[str, str]]:
    if allow_str and isinstance(value, str):
        return [{"role": "user" if name == "prompt" else "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise UserError(f"{where(path, line, name)}expected a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where(path, line, f'{name}[{i}]')}expected {{\"role\": str, \"content\": str}}")
    return value


def read_preferences(path: str | Path) -> list[PreferenceRow]:
    """Read one preference JSONL file; a bad line is a one-line UserError ``file:line: field``."""
    path = Path(path)
    rows = []
    for line_no, obj in iter_jsonl(path, objects_only=True):
        for key in ("prompt", "chosen", "rejected"):
            if key not in obj:
                raise UserError(f"{where(path, line_no, key)}missing")
        margin = obj.get("margin", 0.0)
        if margin is None:
            margin = 0.0
        if not isinstance(margin, (int, float)) or isinstance(margin, bool):
            raise UserError(f"{where(path, line_no, 'margin')}expected a number, got {margin!r}")
        rows.append(PreferenceRow(
            prompt=_messages(obj["prompt"], path, line_no, "prompt", allow_str=True),
            chosen=_messages(obj["chosen"], path, line_no, "chosen", allow_str=True),
            rejected=_messages(obj["rejected"], path, line_no, "rejected", allow_str=True),
            margin=float(margin), id=str(obj.get("id", f"{path.name}:{line_no}")),
        ))
    return rows


def find_split_files(data_dir: str | Path) -> dict[str, Path]:
    """``{"train": path, "test": path or absent}`` from DIR/preferences/ or DIR/ itself."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder (expected the output folder of `rlaif run`, "
                        f"holding preferences/train.jsonl)")
    for base in (root / "preferences", root):
        if (base / "train.jsonl").is_file():
            out = {"train": base / "train.jsonl"}
            if (base / "test.jsonl").is_file():
                out["test"] = base / "test.jsonl"
            return out
    raise UserError(f"--data {root}: neither {root}/preferences/train.jsonl nor {root}/train.jsonl exists")


def load_splits(data_dir: str | Path) -> dict[str, list[PreferenceRow]]:
    """Read the train split (required, non-empty) and the test split (optional, may be empty)."""
    files = find_split_files(data_dir)
    splits = {name: read_preferences(p) for name, p in files.items()}
    if not splits["train"]:
        raise UserError(f"{files['train']}: empty train split (no preference pairs)")
    return splits


# ----------------------------------------------------------------------------- tokenizing

@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float = 0.0
    index: int = 0  # position in its split (used to key cached reference log-probs)

    @property
    def num_tokens(self) -> int:
        """Tokens of the pair's two rows, prompt+chosen and prompt+rejected (the prompt twice)."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    @property
    def packed_tokens(self) -> int:
        """Positions a packed batch runs for this pair: the prompt once, plus its last token again at the
        head of the rejected branch (``rlaif.train.packing.pack_pairs``)."""
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids) + min(len(self.prompt_ids), 1)

    @property
    def max_len(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class TruncationStats:
    pairs: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    boundary_mismatch: int = 0  # templated prompt was not a prefix of the templated conversation

    def summary(self) -> str:
        text = (f"{self.pairs} pairs; prompt truncated in {self.prompt_truncated}, a response truncated "
                f"in {self.response_truncated}; none dropped")
        if self.boundary_mismatch:
            text += (f"; in {self.boundary_mismatch} the templated prompt is not a prefix of the templated "
                     f"conversation (the response starts where they diverge)")
        return text


def _ids(encoded: Any) -> list[int]:
    """apply_chat_template(tokenize=True) returns a BatchEncoding (transformers 5) or a list."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def tokenize_pair(tokenizer: Any, row: PreferenceRow, max_length: int, max_prompt_length: int,
                  stats: TruncationStats | None = None, index: int = 0) -> TokenizedPair:
    """Template the full conversations once and split them at the templated-prompt boundary."""
    prompt = _ids(tokenizer.apply_chat_template(row.prompt, tokenize=True, add_generation_prompt=True))
    full_c = _ids(tokenizer.apply_chat_template(row.prompt + row.chosen, tokenize=True))
    full_r = _ids(tokenizer.apply_chat_template(row.prompt + row.rejected, tokenize=True))
    # Normally the templated prompt is a prefix of both; some templates render differently
    # (e.g. drop a default system prompt); then the boundary is where they diverge.
    cut = min(_common_prefix(prompt, full_c), _common_prefix(prompt, full_r), len(prompt))
    stats = stats if stats is not None else TruncationStats()
    stats.pairs += 1
    if cut < len(prompt):
        stats.boundary_mismatch += 1
    p, c, r = full_c[:cut], full_c[cut:], full_r[cut:]
    if len(p) + max(len(c), len(r)) > max_length:
        if len(p) > max_prompt_length:
            p = p[len(p) - max_prompt_length:]
            stats.prompt_truncated += 1
        room = max(max_length - len(p), 1)
        if max(len(c), len(r)) > room:
            c, r = c[:room], r[:room]
            stats.response_truncated += 1
    return TokenizedPair(p, c, r, margin=row.margin, index=index)


def tokenize_rows(tokenizer: Any, rows: list[PreferenceRow], max_length: int, max_prompt_length: int,
                  progress: bool = False) -> tuple[list[TokenizedPair], TruncationStats]:
    from tqdm.auto import tqdm

    if max_prompt_length >= max_length:
        raise UserError(f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length})")
    stats = TruncationStats()
    pairs = [tokenize_pair(tokenizer, row, max_length, max_prompt_length, stats, i)
             for i, row in enumerate(tqdm(rows, desc="tokenizing", disable=not progress or len(rows) < 1000))]
    return pairs, stats


# ----------------------------------------------------------------------------- batching

def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, mega_batch_mult: int = 50,
                           group_by_length: bool = True) -> list[list[int]]:
    """One epoch of index batches: shuffle, cut into mega-batches of ``batch_size * mega_batch_mult``,
    sort each mega-batch by length (longest first) and slice it into batches; then shuffle the
    batches. Similar lengths share a batch, so little compute goes to padding, while the order stays
    random. Deterministic in ``seed`` (pass ``seed + epoch``), which is what makes resume exact.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        mega = batch_size * max(mega_batch_mult, 1)
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s:s + mega], key=lambda j: -lengths[j])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """Chosen rows first, then rejected rows: one forward pass serves both (B pairs -> 2B rows)."""
    input_ids: torch.Tensor       # (2B, T)
    attention_mask: torch.Tensor  # (2B, T)
    labels: torch.Tensor          # (2B, T), IGNORE_INDEX on prompt and padding
    margins: torch.Tensor         # (B,)
    indices: list[int] = field(default_factory=list)
    real_tokens: int = 0
    padded_tokens: int = 0

    def to(self, device: torch.device | str) -> "Batch":
        for name in ("input_ids", "attention_mask", "labels", "margins"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def collate(pairs: list[TokenizedPair], pad_token_id: int) -> Batch:
    """Right-pad ``[prompt+chosen ..., prompt+rejected ...]`` to the batch's longest row."""
    seqs = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    prompt_lens = [len(p.prompt_ids) for p in pairs] * 2
    width = max(len(s) for s in seqs)
    rows = len(seqs)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    for i, (seq, plen) in enumerate(zip(seqs, prompt_lens)):
        ids = torch.tensor(seq, dtype=torch.long)
        input_ids[i, :len(seq)] = ids
        attention_mask[i, :len(seq)] = 1
        labels[i, plen:len(seq)] = ids[plen:]
    real = int(attention_mask.sum())
    return Batch(input_ids, attention_mask, labels, torch.tensor([p.margin for p in pairs], dtype=torch.float32),
                 indices=[p.index for p in pairs], real_tokens=real, padded_tokens=rows * width - real)


def pad_right(seqs: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) input ids and attention mask for sequences of different lengths."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, :len(s)] = 1
    return input_ids, attention_mask


def epoch_batches(pairs: list[TokenizedPair], batch_size: int, seed: int, epoch: int, group_by_length: bool,
                  per_step: int = 1, mega_batch_mult: int = 50) -> list[list[int]]:
    """Global index batches of one epoch, trimmed to a multiple of ``per_step`` (micro-batches per
    optimizer step over all processes: grad_accum x world_size), so every process gets the same
    number and an epoch is whole optimizer steps (when it has fewer batches than that: all of them)."""
    batches = length_grouped_batches([p.max_len for p in pairs], batch_size, seed + epoch, mega_batch_mult,
                                     group_by_length)
    keep = (len(batches) // per_step) * per_step or len(batches)
    return batches[:keep]
