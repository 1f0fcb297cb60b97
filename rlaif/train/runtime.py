"""What the RM and DPO trainers share: the config base, model set-up (precision, gradient
checkpointing, LoRA), the optimisation loop with gradient accumulation, logging (TensorBoard,
metrics.jsonl, tqdm), evaluation, checkpoints and exact resume.

Output folder layout (``--out DIR``)::

    DIR/config.json, model.safetensors, tokenizer*   final model (plain ``from_pretrained(DIR)``)
    DIR/adapter/                                     LoRA adapter alone (when lora.enabled)
    DIR/checkpoints/step-N/                          model + optimizer + scheduler + RNG + step
    DIR/runs/                                        TensorBoard logs
    DIR/metrics.jsonl                                one line per logged step / evaluation
    DIR/summary.json                                 final metrics, data stats, config

Multi-GPU: the loop runs under ``accelerate launch`` unchanged (DDP or FSDP from the accelerate
config); each process takes every ``world_size``-th batch of the same deterministic order.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from rlaif.config import to_dict
from rlaif.errors import UserError
from rlaif.train.config import TrainConfig
from rlaif.train.data import Batch, TokenizedPair, collate, epoch_batches, load_splits, tokenize_rows

KILL_ENV = "RLAIF_TEST_KILL_AFTER_CHECKPOINT"  # tests: SIGKILL self right after saving step N


# ----------------------------------------------------------------------------- set-up

def make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available()
                                       and torch.cuda.is_bf16_supported())
    return Accelerator(mixed_precision="bf16" if bf16 else "no")


def prepare_model(model: Any, cfg: TrainConfig, task_type: str) -> Any:
    """Gradient checkpointing and optional LoRA; the weights stay fp32 (autocast does bf16)."""
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets: Any = cfg.lora.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                 lora_dropout=cfg.lora.dropout, target_modules=targets,
                                                 task_type=task_type))
    return model


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if getattr(tok, "chat_template", None) is None:
        raise UserError(f"model '{path}': its tokenizer has no chat template; the trainers need one to "
                        f"render conversations")
    return tok


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return max(0.0, 1 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2... over real tokens whatever the padding side (HF counts padding otherwise)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator: Any, out: Path, step: int, limit: int) -> Path:
    """model + optimizer + scheduler + RNG (accelerate) and the step, written to a temp dir first."""
    final = out / "checkpoints" / f"step-{step}"
    tmp = out / "checkpoints" / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    if os.environ.get(KILL_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    return final


# ----------------------------------------------------------------------------- the loop

LossFn = Callable[[Any, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]  # metrics: 0-d tensors
EvalFn = Callable[[Any], dict[str, float]]


@dataclass
class LoopResult:
    steps: int
    history: list[dict[str, float]]       # one entry per optimizer step (this run only)
    eval_metrics: dict[str, float]
    padding_fraction: float
    resumed_from: int


class MetricsLog:
    """TensorBoard + metrics.jsonl on the main process."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "runs"))
            except ImportError:  # tensorboard not installed: jsonl only
                self.writer = None
            self.jsonl = (out / "metrics.jsonl").open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


def run_loop(cfg: TrainConfig, accelerator: Any, model: Any, pairs: list[TokenizedPair], pad_token_id: int,
             loss_fn: LossFn, eval_fn: EvalFn | None, out: Path, desc: str) -> LoopResult:
    """Optimise ``loss_fn`` over length-grouped batches of ``pairs``; checkpoint, log, resume."""
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = len(epoch_batches(pairs, cfg.batch_size, cfg.seed, 0, cfg.group_by_length, world)) // world
    if per_epoch < 1:
        raise UserError(f"{len(pairs)} training pairs give no batch of {cfg.batch_size} on {world} processes")
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.lr_schedule, int(cfg.warmup_ratio * total), total))
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP replaces them in prepare
    accelerator.register_for_checkpointing(scheduler)  # stepped by us, once per optimizer step

    start = 0
    existing = checkpoint_dirs(out)
    if cfg.resume and existing:
        accelerator.load_state(str(existing[-1]))
        start = json.loads((existing[-1] / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resuming from {existing[-1]} (step {start} of {total})")
    elif accelerator.is_main_process:  # a fresh start: old checkpoints and logs would mislead
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)

    log = MetricsLog(out, accelerator.is_main_process)
    cached_epoch: tuple[int, list[list[int]]] = (-1, [])

    def micro_batch(m: int) -> Batch:
        nonlocal cached_epoch
        epoch, offset = divmod(m, per_epoch)
        if cached_epoch[0] != epoch:
            cached_epoch = (epoch, epoch_batches(pairs, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length,
                                                 world)[rank::world])
        return collate([pairs[i] for i in cached_epoch[1][offset]], pad_token_id).to(accelerator.device)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc=desc, disable=not (cfg.progress and accelerator.is_main_process))
    history: list[dict[str, float]] = []
    window: list[dict[str, float]] = []
    real_sum = pad_sum = 0
    eval_metrics: dict[str, float] = {}
    model.train()
    for step in range(start, total):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        real = padded = 0
        for k in range(cfg.grad_accum):
            batch = micro_batch(step * cfg.grad_accum + k)
            real, padded = real + batch.real_tokens, padded + batch.padded_tokens
            sync = k == cfg.grad_accum - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                with accelerator.autocast():
                    loss, metrics = loss_fn(model, batch)
                accelerator.backward(loss / cfg.grad_accum)
            for name, v in metrics.items():
                sums[name] = sums.get(name, 0.0) + v.detach().float() / cfg.grad_accum
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        values = torch.stack(list(sums.values())).tolist()  # one device sync per step, not per metric
        sums = dict(zip(sums, values))
        real_sum, pad_sum = real_sum + real, pad_sum + padded
        entry = {**sums, "lr": scheduler.get_last_lr()[0], "tokens": float(real),
                 "padding_fraction": padded / max(real + padded, 1), "step_time": time.perf_counter() - t0}
        if grad_norm is not None:
            entry["grad_norm"] = float(grad_norm)
        history.append(entry)
        window.append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{sums.get('loss', 0.0):.4f}")
        done = step + 1
        if done % cfg.logging_steps == 0 or done == total:
            avg = {f"train/{k}": sum(e[k] for e in window) / len(window) for k in window[0]}
            avg["train/tokens_per_s"] = sum(e["tokens"] for e in window) / sum(e["step_time"] for e in window)
            log.log(done, avg)
            window = []
        if eval_fn is not None and cfg.eval_steps and done % cfg.eval_steps == 0 and done != total:
            log.log(done, {f"eval/{k}": v for k, v in _evaluate(model, eval_fn).items()})
        if cfg.save_steps and done % cfg.save_steps == 0 and done != total:
            save_checkpoint(accelerator, out, done, cfg.save_total_limit)
    bar.close()
    if eval_fn is not None:
        eval_metrics = _evaluate(model, eval_fn)
        log.log(total, {f"eval/{k}": v for k, v in eval_metrics.items()})
    log.close()
    return LoopResult(steps=total, history=history, eval_metrics=eval_metrics,
                      padding_fraction=pad_sum / max(real_sum + pad_sum, 1), resumed_from=start)


def _evaluate(model: Any, eval_fn: EvalFn) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = eval_fn(model)
    model.train()
    return metrics


def save_final(accelerator: Any, model: Any, tokenizer: Any, out: Path, summary: dict[str, Any],
               cfg: TrainConfig) -> None:
    """save_pretrained the trained model (LoRA merged in; adapter also kept) + tokenizer + summary."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    fsdp = str(accelerator.distributed_type).endswith("FSDP")
    state = accelerator.get_state_dict(model) if fsdp else None  # gathers FSDP shards
    if accelerator.is_main_process:
        if cfg.lora.enabled:
            unwrapped.save_pretrained(out / "adapter", state_dict=state)
            unwrapped = unwrapped.merge_and_unload()
            state = None
        unwrapped.config.use_cache = True
        unwrapped.save_pretrained(out, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out)
        summary = {**summary, "config": to_dict(cfg)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()


class RunInputs(NamedTuple):
    base: str  # local model folder
    tokenizer: Any
    train: list[TokenizedPair]
    train_stats: Any
    test: list[TokenizedPair]
    test_stats: Any
    accelerator: Any


def prepare_run(cfg: TrainConfig, out: Path, check_base: Callable[[str], None] | None = None) -> RunInputs:
    """What every trainer starts from: both splits tokenized once with the base model's chat
    template, the accelerator, ``out`` created and the RNG seeded."""
    from rlaif.models import resolve_model

    splits = load_splits(cfg.data)
    base = resolve_model(cfg.model)
    if check_base is not None:
        check_base(base)
    tokenizer = load_tokenizer(base)
    train, stats = tokenize_rows(tokenizer, splits["train"], cfg.max_length, cfg.max_prompt_length, cfg.progress)
    test, test_stats = tokenize_rows(tokenizer, splits.get("test", []), cfg.max_length, cfg.max_prompt_length)
    accelerator = make_accelerator(cfg)
    accelerator.print(f"train: {stats.summary()}; test: {test_stats.summary()}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    return RunInputs(base, tokenizer, train, stats, test, test_stats, accelerator)


def already_finished(out: Path, cfg: TrainConfig) -> bool:
    return cfg.resume and (out / "summary.json").is_file() and (out / "config.json").is_file()


def batched_eval(pairs: list[TokenizedPair], batch_size: int, pad_token_id: int, device: Any, progress: bool,
                 desc: str) -> Any:
    """Length-sorted fixed batches for evaluation / reference passes (order does not matter)."""
    from tqdm.auto import tqdm

    order = sorted(range(len(pairs)), key=lambda i: pairs[i].max_len)
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        yield collate([pairs[i] for i in idx], pad_token_id).to(device)
