"""Supervised fine-tuning on chat rows, loss on the assistant's tokens only, packed without padding.

    loss = - (1 / |A|) sum_{t in A} log pi_theta(x_t | x_<t)      A: assistant tokens of the micro-batch

Which tokens are the assistant's comes from the chat template itself, never from re-tokenized
pieces: the full conversation is rendered once, and for each assistant turn i its tokens run from
the end of ``messages[:i]`` rendered with ``add_generation_prompt=True`` (so the assistant header is
prompt) to the end of ``messages[:i+1]`` rendered (the reply, its end-of-turn token and whatever the
template writes after it). Every assistant turn of a multi-turn chat is learnt; system and user
turns never are. When a rendered prefix is not a prefix of the full rendering (templates that
rewrite earlier turns) the boundary is where they diverge, counted as ``boundary_mismatch``.

Inputs (``--data``): a messages JSONL (``{"messages": [...]}``), TRL's prompt/completion JSONL
(each a string or a list of messages), a folder with {train,test}.jsonl, or an `rlaif run` folder
(its ``sft/{train,test}.jsonl``: the judge's best complete candidate per prompt, rlaif.dataset.best).
Rows are packed into one sequence per micro-batch within ``max_tokens_per_batch`` (packing.py);
resume, LoRA, accelerate, checkpoints and logs are the rm/dpo runtime's (runtime.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlaif.errors import UserError, where
from rlaif.io.records import iter_jsonl
from rlaif.train.config import SFTConfig
from rlaif.train.data import IGNORE_INDEX, _common_prefix, _ids, _messages
from rlaif.train.modeling import prepare_model, unwrap
from rlaif.train.packing import PackedBatch, PackedRow, budget_batches, pack, shifted_targets, use_varlen_attention
from rlaif.train.runtime import MicroBatches, RunInputs, Tokenize, evaluate, prepare_run, save_final, train_pairs

Messages = list[dict[str, str]]


# ----------------------------------------------------------------------------- reading

def read_conversations(path: str | Path) -> list[Messages]:
    """Rows of a messages or prompt/completion JSONL as conversations; a bad row is a one-line
    UserError ``file:line: field``."""
    path = Path(path)
    rows: list[Messages] = []
    for line, obj in iter_jsonl(path, objects_only=True):
        if "messages" in obj:
            field, messages = "messages", _messages(obj["messages"], path, line, "messages", allow_str=False)
        elif "prompt" in obj and "completion" in obj:
            field = "completion"
            messages = (_messages(obj["prompt"], path, line, "prompt", allow_str=True)
                        + _messages(obj["completion"], path, line, "completion", allow_str=True))
        else:
            raise UserError(f"{where(path, line)}expected 'messages', or 'prompt' and 'completion'")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where(path, line, field)}no assistant turn (nothing to learn from)")
        rows.append(messages)
    return rows


def find_sft_files(data: str) -> dict[str, Path]:
    """``{"train": path, "test": path or absent}`` from a file, DIR/sft/ (an `rlaif run` folder) or DIR/."""
    root = Path(data)
    if root.is_file():
        return {"train": root}
    if not root.is_dir():
        raise UserError(f"--data {root}: no such file or folder")
    for base in (root / "sft", root):
        if (base / "train.jsonl").is_file():
            return {split: base / f"{split}.jsonl" for split in ("train", "test") if (base / f"{split}.jsonl").is_file()}
    raise UserError(f"--data {root}: neither {root}/sft/train.jsonl (an `rlaif run` folder) nor {root}/train.jsonl "
                    f"exists")


# ----------------------------------------------------------------------------- tokenizing

@dataclass
class SFTStats:
    rows: int = 0
    truncated: int = 0
    assistant_tokens: int = 0
    boundary_mismatch: int = 0

    def summary(self) -> str:
        text = (f"{self.rows} rows, {self.assistant_tokens} assistant tokens; {self.truncated} truncated to "
                f"max_length; none dropped")
        if self.boundary_mismatch:
            text += f"; in {self.boundary_mismatch} a rendered prefix is not a prefix of the conversation"
        return text


def assistant_mask(tokenizer: Any, messages: Messages, stats: SFTStats | None = None) -> tuple[list[int], list[bool]]:
    """The templated conversation's token ids and, per token, whether it belongs to an assistant turn."""
    def render(part: Messages, generation: bool = False) -> list[int]:
        return _ids(tokenizer.apply_chat_template(part, tokenize=True, add_generation_prompt=generation))

    full = render(messages)
    learn = [False] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, turn = render(messages[:i], generation=True), render(messages[:i + 1])
        start, end = min(_common_prefix(head, full), len(head)), min(_common_prefix(turn, full), len(turn))
        if stats is not None and (start < len(head) or end < len(turn)):
            stats.boundary_mismatch += 1
        learn[start:end] = [True] * (end - start)
    return full, learn


def tokenize_conversations(tokenizer: Any, rows: list[Messages], max_length: int) -> tuple[list[PackedRow], SFTStats]:
    stats = SFTStats()
    out = []
    for index, messages in enumerate(rows):
        ids, learn = assistant_mask(tokenizer, messages, stats)
        if len(ids) > max_length:
            ids, learn = ids[:max_length], learn[:max_length]
            stats.truncated += 1
        row = PackedRow(ids, shifted_targets(ids, learn), index)
        stats.rows += 1
        stats.assistant_tokens += sum(t != IGNORE_INDEX for t in row.targets)
        out.append(row)
    return out, stats


def sft_source(cfg: SFTConfig) -> tuple[dict[str, Path], Tokenize]:
    """The SFT split files of ``cfg.data`` (read and checked now) and how to tokenize them."""
    files = find_sft_files(cfg.data)
    splits = {split: read_conversations(path) for split, path in files.items()}
    if not splits["train"]:
        raise UserError(f"{files['train']}: empty train split (no conversations)")

    def tokenize(tokenizer: Any) -> tuple[list[Any], Any, list[Any], Any]:
        train, stats = tokenize_conversations(tokenizer, splits["train"], cfg.max_length)
        test, test_stats = tokenize_conversations(tokenizer, splits.get("test", []), cfg.max_length)
        return train, stats, test, test_stats

    return files, tokenize


# ----------------------------------------------------------------------------- batches and loss

class PackedMicroBatches(MicroBatches):
    """The runtime's micro-batch schedule (same global order for any number of processes, exact
    resume) over token-budget batches, each packed into one sequence."""

    def _epoch(self, epoch: int) -> list[list[int]]:
        batches = budget_batches([row.max_len for row in self.pairs], self.cfg.max_tokens_per_batch,
                                 self.cfg.seed + epoch)
        per_step = self.world * self.cfg.grad_accum
        return batches[:(len(batches) // per_step) * per_step or len(batches)]

    def collate(self, idx: list[int]) -> PackedBatch:
        return pack([self.pairs[i] for i in idx])


def row_nll(model: Any, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of each row's learnt tokens and their count, shapes (R,), (R,).
    The LM head runs only at positions that predict a learnt token (a pre-hook gathers them)."""
    select = batch.targets[0] != IGNORE_INDEX                            # (T,)
    targets = batch.targets[0][select]                                    # (M,)

    def gather(_module: Any, args: tuple) -> tuple:
        return (args[0][:, select], *args[1:])                            # (1, M, H)

    handle = unwrap(model).get_output_embeddings().register_forward_pre_hook(gather)
    try:
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=None,
                    logits_to_keep=0, use_cache=False)
    finally:
        handle.remove()
    logits = out.logits[0].float()                                       # (M, V)
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = batch.row_of[select]
    width = len(batch.indices)
    sums = torch.zeros(width, device=nll.device).index_add(0, rows, nll)
    counts = torch.zeros(width, device=nll.device).index_add(0, rows, torch.ones_like(nll))
    return sums, counts


def sft_loss(model: Any, batch: PackedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sums, counts = row_nll(model, batch)
    loss = sums.sum() / counts.sum().clamp(min=1)
    return loss, {"loss": loss}


def evaluate_sft(model: Any, rows: list[PackedRow], max_tokens: int, device: Any) -> dict[str, float]:
    """Held-out loss: the mean NLL per assistant token over ``rows``, and its perplexity."""
    total, count = 0.0, 0.0
    for idx in budget_batches([row.max_len for row in rows], max_tokens, 0):
        sums, counts = row_nll(model, pack([rows[i] for i in idx]).to(device))
        total, count = total + float(sums.sum()), count + float(counts.sum())
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "tokens": count}


# ----------------------------------------------------------------------------- trainer

def train_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on the conversations of ``cfg.data``, save it to ``cfg.out``; returns the summary."""
    from transformers import AutoModelForCausalLM

    from rlaif.models import check_causal_lm

    if not cfg.data or not cfg.out:
        raise UserError("train sft: --data and --out are required")
    if cfg.max_tokens_per_batch < cfg.max_length:
        raise UserError(f"option 'max_tokens_per_batch': {cfg.max_tokens_per_batch} is below max_length "
                        f"({cfg.max_length}); a micro-batch must hold the longest row")
    run = prepare_run(cfg, check_causal_lm, source=sft_source)
    if not isinstance(run, RunInputs):  # finished before, with these settings
        return run
    accelerator, test = run.accelerator, run.test
    model = AutoModelForCausalLM.from_pretrained(run.base, dtype=torch.float32)
    model.config.pad_token_id = run.tokenizer.pad_token_id
    use_varlen_attention(model)  # attention per packed row, not over a block-diagonal mask (4x faster on CPU)
    model = prepare_model(model, cfg, task_type="CAUSAL_LM")
    batches = PackedMicroBatches(cfg, run.train, run.tokenizer.pad_token_id, accelerator)
    before: dict[str, float] = {}

    def eval_fn(m: Any) -> dict[str, float]:
        with accelerator.autocast():
            return evaluate_sft(m, test, cfg.max_tokens_per_batch, accelerator.device)

    def on_prepared(m: Any) -> None:  # the starting weights' held-out loss (before a resumed checkpoint loads)
        if test:
            before.update(evaluate(m, eval_fn))

    result = train_pairs(cfg, run, model, sft_loss, eval_fn if test else None, "train sft", on_prepared, batches)
    window = max(1, min(10, len(result.history) // 3))
    losses = [entry["loss"] for entry in result.history]
    summary = {
        "trainer": "sft", "steps": result.steps, "resumed_from": result.resumed_from,
        "test_before": before, "test": result.eval_metrics,
        "train_loss_first_steps": sum(losses[:window]) / window if losses else None,
        "train_loss_last_steps": sum(losses[-window:]) / window if losses else None,
        "data": {"train": vars(run.train_stats), "test": vars(run.test_stats)},
    }
    save_final(run, model, summary, cfg)
    if test:
        accelerator.print(f"saved policy to {run.out}; held-out loss {before['loss']:.4f} -> "
                          f"{result.eval_metrics['loss']:.4f}")
    else:
        accelerator.print(f"saved policy to {run.out} (no test split: no held-out loss)")
    return summary
