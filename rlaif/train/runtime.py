"""The pair-training runtime RM and DPO share: set-up (data, tokenizer, accelerator), the
optimisation steps with gradient accumulation, logging (TensorBoard, metrics.jsonl, tqdm),
evaluation, checkpoints with exact resume (see checkpoints.py), and the final save.

Output folder layout (``--out DIR``)::

    DIR/config.json, model.safetensors, tokenizer*   final model (plain ``from_pretrained(DIR)``)
    DIR/adapter/                                     LoRA adapter alone (when lora.enabled)
    DIR/checkpoints/step-N/                          model + optimizer + scheduler + RNG + step + settings
    DIR/runs/                                        TensorBoard logs
    DIR/metrics.jsonl                                one line per logged step / evaluation
    DIR/summary.json                                 final metrics, data stats, config, settings

Several processes (``accelerate launch`` with DDP, FSDP or DeepSpeed from the accelerate config):
``batch_size`` is per process and micro-batch, so one optimizer step sees
``batch_size * grad_accum * world_size`` pairs. The global order of micro-batches does not depend
on ``world_size``: step s takes micro-batches ``[s*A*W, (s+1)*A*W)`` of the epoch's deterministic
order (A = grad_accum, W = world_size), and each epoch keeps a whole number of steps. So W processes
with ``grad_accum=A`` reach the weights one process reaches with ``grad_accum=A*W`` (up to float
summation order; tests/test_train_distributed.py). Logged metrics are averaged over processes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import torch

from rlaif.config import to_dict
from rlaif.errors import UserError
from rlaif.io.diskfull import names_path
from rlaif.io.heap import keep_freed_memory
from rlaif.io.store import atomic_write_text
from rlaif.train.checkpoints import (check_out, checkpoint_dirs, cut_logs, launched_on_cpu, load_checkpoint,
                                     refuse_out_on_inputs, run_settings, save_checkpoint, save_model_files)
from rlaif.train.config import OfflineOptions, TrainConfig
from rlaif.train.data import (Batch, TokenizedPair, collate, epoch_batches, find_split_files, load_splits,
                              tokenize_rows)
from rlaif.train.modeling import load_tokenizer
from rlaif.train.nonfinite import NonFiniteGuard
from rlaif.train.optim import adamw

LossFn = Callable[[Any, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]  # metrics: 0-d tensors
EvalFn = Callable[[Any], dict[str, float]]


# ----------------------------------------------------------------------------- set-up

class RunInputs(NamedTuple):
    base: str  # local model folder
    tokenizer: Any
    train: list[TokenizedPair]
    train_stats: Any
    test: list[TokenizedPair]
    test_stats: Any
    accelerator: Any
    out: Path
    settings: dict[str, Any]  # what a checkpoint must match to be resumed (checkpoints.run_settings)


Tokenize = Callable[[Any], tuple[list[Any], Any, list[Any], Any]]  # tokenizer -> train, its stats, test, its stats


def preference_source(cfg: TrainConfig) -> tuple[dict[str, Path], Tokenize]:
    """The preference split files of ``cfg.data`` (read and checked now) and how to tokenize them."""
    splits = load_splits(cfg.data)

    def tokenize(tokenizer: Any) -> tuple[list[Any], Any, list[Any], Any]:
        train, stats = tokenize_rows(tokenizer, splits["train"], cfg.max_length, cfg.max_prompt_length, cfg.progress)
        test, test_stats = tokenize_rows(tokenizer, splits.get("test", []), cfg.max_length, cfg.max_prompt_length)
        return train, stats, test, test_stats

    return find_split_files(cfg.data), tokenize


def prepare_run(cfg: OfflineOptions, check_base: Callable[[str], None] | None = None,
                source: Callable[[Any], tuple[dict[str, Path], Tokenize]] = preference_source
                ) -> RunInputs | dict[str, Any]:
    """What every trainer starts from: both splits tokenized once with the base model's chat
    template, the accelerator, ``out`` checked (or cleared, with overwrite) and created, the RNG
    seeded. ``source(cfg)`` reads and checks the data (before anything is deleted) and says which
    files it read (their digest is part of the settings). When ``out`` holds a run already finished
    with these settings: its summary instead."""
    from rlaif.models import resolve_model

    refuse_out_on_inputs(cfg)
    out = Path(cfg.out)
    files, tokenize = source(cfg)
    settings = run_settings(cfg, files)
    finished = check_out(cfg, out, settings)
    if finished is not None:
        return finished
    base = resolve_model(cfg.model)
    if check_base is not None:
        check_base(base)
    tokenizer = load_tokenizer(base)
    train, stats, test, test_stats = tokenize(tokenizer)
    accelerator = make_accelerator(cfg)
    keep_freed_memory(accelerator.device.type)
    accelerator.print(f"train: {stats.summary()}; test: {test_stats.summary()}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    return RunInputs(base, tokenizer, train, stats, test, test_stats, accelerator, out, settings)


def make_accelerator(cfg: TrainConfig) -> Any:
    """The Accelerator (``grad_accum`` steps; gloo on a machine without CUDA); under DeepSpeed, its
    ``auto`` micro-batch size and clipping are filled from ``cfg`` and a fixed accumulation in the
    DeepSpeed config must equal ``grad_accum`` (the DeepSpeed engine decides when to step)."""
    from accelerate import Accelerator

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available()
                                       and torch.cuda.is_bf16_supported())
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=launched_on_cpu(),
                              gradient_accumulation_steps=cfg.grad_accum)
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds is not None:
        conf = ds.deepspeed_config
        for key, value in (("train_micro_batch_size_per_gpu", cfg.batch_size), ("gradient_clipping", cfg.max_grad_norm),
                           ("gradient_accumulation_steps", cfg.grad_accum)):
            if conf.get(key, "auto") == "auto":
                conf[key] = value
        if conf["gradient_accumulation_steps"] != cfg.grad_accum:
            raise UserError(f"DeepSpeed config: gradient_accumulation_steps={conf['gradient_accumulation_steps']} but "
                            f"grad_accum={cfg.grad_accum}; set it to \"auto\" (rlaif fills in grad_accum)")
    return accelerator


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return max(0.0, 1 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


def make_optimizer(cfg: TrainConfig, model: Any, total: int, device: Any = None) -> tuple[Any, Any]:
    """AdamW (no weight decay on biases and norms; `rlaif.train.optim` picks fused/foreach) and the warmup + decay schedule over ``total`` steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = adamw([{"params": decay, "weight_decay": cfg.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.lr_schedule, int(cfg.warmup_ratio * total), total))
    return optimizer, scheduler


class MicroBatches:
    """Micro-batch ``m`` of the run for this process: epoch ``m // per_epoch`` of a deterministic,
    length-grouped order (the same on every run, which is what makes resume exact). Process r of W
    takes the epoch's micro-batches r, r+W, r+2W...: its micro-batch ``s*A + k`` is global
    micro-batch ``(s*A + k)*W + r``, so optimizer step s covers global ``[s*A*W, (s+1)*A*W)`` for any W."""

    def __init__(self, cfg: TrainConfig, pairs: list[TokenizedPair], pad_token_id: int, accelerator: Any) -> None:
        self.cfg, self.pairs, self.pad, self.accelerator = cfg, pairs, pad_token_id, accelerator
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.per_epoch = len(self._epoch(0)) // self.world
        if self.per_epoch < 1:
            raise UserError(f"{len(pairs)} training rows give fewer micro-batches than grad_accum x processes = "
                            f"{cfg.grad_accum} x {self.world}; lower grad_accum or the micro-batch size")
        self._cached: tuple[int, list[list[int]]] = (-1, [])

    def _epoch(self, epoch: int) -> list[list[int]]:
        c = self.cfg
        return epoch_batches(self.pairs, c.batch_size, c.seed, epoch, c.group_by_length, self.world * c.grad_accum)

    def __call__(self, m: int) -> Batch:
        epoch, offset = divmod(m, self.per_epoch)
        if self._cached[0] != epoch:
            self._cached = (epoch, self._epoch(epoch)[self.rank::self.world])
        return self.collate(self._cached[1][offset]).to(self.accelerator.device)

    def collate(self, idx: list[int]) -> Any:
        return collate([self.pairs[i] for i in idx], self.pad)


# ----------------------------------------------------------------------------- training

@dataclass
class LoopResult:
    steps: int
    history: list[dict[str, float]]       # one entry per optimizer step (those before a resume included)
    eval_metrics: dict[str, float]
    padding_fraction: float
    resumed_from: int
    nonfinite_skipped: int = 0  # updates dropped for a NaN/inf loss or gradient (nonfinite=skip)


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

    @names_path(lambda self, *args: self.jsonl.name)
    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()


def train_pairs(cfg: TrainConfig, run: RunInputs, model: Any, loss_fn: LossFn, eval_fn: EvalFn | None,
                desc: str, on_prepared: Callable[[Any], None] | None = None,
                batches: MicroBatches | None = None) -> LoopResult:
    """Optimise ``loss_fn`` over length-grouped batches of ``run.train``; log, evaluate, checkpoint,
    and resume from the last checkpoint in ``run.out`` (its settings were checked in prepare_run).
    ``on_prepared(model)`` runs once the model is wrapped (DDP/FSDP/DeepSpeed), before any step:
    under FSDP/ZeRO-3 only the wrapped model holds the real weights on every process. ``batches``:
    another micro-batch schedule (sft: packed rows), default length-grouped padded pairs."""
    from tqdm.auto import tqdm

    accelerator, out = run.accelerator, run.out
    batches = batches or MicroBatches(cfg, run.train, run.tokenizer.pad_token_id, accelerator)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * batches.per_epoch / cfg.grad_accum))
    optimizer, scheduler = make_optimizer(cfg, model, total, accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler (stepped by us, once per optimizer step) is kept as JSON in the checkpoint's
    # progress, not registered with accelerate: its custom objects load with weights_only=False.
    if on_prepared is not None:
        on_prepared(model)
    start, progress = resume_or_start(accelerator, out, total)
    if start:
        scheduler.load_state_dict(progress["scheduler"])

    log = MetricsLog(out, accelerator.is_main_process)
    bar = tqdm(total=total, initial=start, desc=desc, disable=not (cfg.progress and accelerator.is_main_process))
    # the summary covers every step: a resumed run takes the steps before from the checkpoint
    history: list[dict[str, float]] = progress.get("history", [])
    window: list[dict[str, float]] = []
    padded_sum = progress.get("padded_tokens", 0)
    guard = NonFiniteGuard(cfg.nonfinite)
    model.train()
    for step in range(start, total):
        entry, padded = optimizer_step(cfg, accelerator, model, optimizer, scheduler, loss_fn, batches, step, guard)
        history.append(entry)
        window.append(entry)
        padded_sum += padded
        bar.update(1)
        bar.set_postfix(loss=f"{entry.get('loss', 0.0):.4f}")
        done = step + 1
        if done % cfg.logging_steps == 0 or done == total:
            log.log(done, window_means(window))
            window = []
        if eval_fn is not None and cfg.eval_steps and done % cfg.eval_steps == 0 and done != total:
            log.log(done, {f"eval/{k}": v for k, v in evaluate(model, eval_fn).items()})
        if cfg.save_steps and done % cfg.save_steps == 0 and done != total:
            save_checkpoint(accelerator, out, done, cfg.save_total_limit, run.settings,
                            {"history": history, "padded_tokens": padded_sum, "scheduler": scheduler.state_dict()})
    bar.close()
    eval_metrics: dict[str, float] = {}
    if eval_fn is not None:
        eval_metrics = evaluate(model, eval_fn)
        log.log(total, {f"eval/{k}": v for k, v in eval_metrics.items()})
    log.close()
    real_sum = sum(e["tokens"] for e in history)
    return LoopResult(steps=total, history=history, eval_metrics=eval_metrics,
                      padding_fraction=padded_sum / max(real_sum + padded_sum, 1), resumed_from=start,
                      nonfinite_skipped=guard.skipped)


def resume_or_start(accelerator: Any, out: Path, total: int) -> tuple[int, dict[str, Any]]:
    """Load the last checkpoint in ``out`` and return its step and progress (metrics.jsonl keeps the
    lines up to it: later steps are redone); or, with none, clear the logs of an earlier attempt
    (they would mislead) and return step 0, no progress."""
    existing = checkpoint_dirs(out)
    if existing:
        start, progress = load_checkpoint(accelerator, existing[-1])
        accelerator.print(f"resuming from {existing[-1]} (step {start} of {total})")
        if accelerator.is_main_process:
            cut_logs(out, ("metrics.jsonl",), start)
        return start, progress
    if accelerator.is_main_process:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        cut_logs(out, ("metrics.jsonl",), None)
    return 0, {}


def optimizer_step(cfg: TrainConfig, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
                   loss_fn: LossFn, batches: MicroBatches, step: int,
                   guard: NonFiniteGuard | None = None) -> tuple[dict[str, float], int]:
    """One optimizer step over ``grad_accum`` micro-batches on each process; returns its metrics
    (averaged over processes; tokens summed) and this process's padded tokens.

    ``accelerator.backward`` divides each micro-batch loss by ``grad_accum`` (DeepSpeed's engine
    does it itself), and DDP averages over processes: the update follows the mean loss of the
    ``grad_accum * world_size`` micro-batches, as one process with ``grad_accum * world_size`` would.
    Before the optimizer steps, ``guard`` checks the loss and the gradient norm (`rlaif.train.nonfinite`)."""
    guard = guard or NonFiniteGuard(cfg.nonfinite)
    memory = StepMemory(accelerator.device)
    t0 = time.perf_counter()
    sums: dict[str, Any] = {}
    loss_sum = torch.zeros((), device=accelerator.device)
    real = padded = 0
    for micro in range(cfg.grad_accum):
        batch = batches(step * cfg.grad_accum + micro)
        real, padded = real + batch.real_tokens, padded + batch.padded_tokens
        sync = micro == cfg.grad_accum - 1  # DDP: all-reduce gradients on the last micro-batch only
        with nullcontext() if sync else accelerator.no_sync(model):
            with accelerator.autocast():
                loss, metrics = loss_fn(model, batch)
            accelerator.backward(loss)
        loss_sum += loss.detach().float()
        for name, v in metrics.items():
            sums[name] = sums.get(name, 0.0) + v.detach().float() / cfg.grad_accum
    params = [p for p in model.parameters() if p.requires_grad]  # after prepare (FSDP replaces them)
    grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
    norm = grad_norm if grad_norm is not None else _grad_norm(params)
    checked = torch.stack([loss_sum, torch.as_tensor(norm, device=accelerator.device).float()])
    if accelerator.num_processes > 1:  # every process takes the same decision
        checked = accelerator.reduce(checked, reduction="sum")
    loss_total, norm_total = checked.tolist()
    if guard.allows(f"step {step + 1}", loss_total, norm_total):
        optimizer.step()
    scheduler.step()  # a skipped update keeps the schedule of the step count
    optimizer.zero_grad(set_to_none=True)
    dev = accelerator.device  # the metrics live there (CUDA); the counts are made there too, so stack sees one device
    local = torch.stack([*(v.to(dev) for v in sums.values()), torch.tensor(float(real), device=dev),
                         torch.tensor(float(padded), device=dev)])
    if accelerator.num_processes > 1:  # one all-reduce per step: sum, then the metrics' mean
        local = accelerator.reduce(local, reduction="sum")
        local[:len(sums)] /= accelerator.num_processes
    *values, real_all, padded_all = local.tolist()  # one device sync per step, not per metric
    entry = {**dict(zip(sums, values)), "lr": scheduler.get_last_lr()[0], "tokens": real_all,
             "padding_fraction": padded_all / max(real_all + padded_all, 1), "step_time": time.perf_counter() - t0,
             **memory.read()}
    if grad_norm is not None:
        entry["grad_norm"] = float(grad_norm)
    if cfg.nonfinite == "skip":
        entry["nonfinite_skipped"] = float(not math.isfinite(loss_total) or not math.isfinite(norm_total))
    return entry, int(padded_all)


class StepMemory:
    """Peak memory of one step, this process: ``memory/peak_gib`` = torch.cuda.max_memory_allocated on
    CUDA (reset at the start of the step); on CPU ``memory/rss_growth_gib`` = how far the step raised
    the process's peak RSS (ru_maxrss; 0 once a step stays within an earlier peak)."""

    def __init__(self, device: Any) -> None:
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device, self.start = device, 0 if self.cuda else _max_rss()

    def read(self) -> dict[str, float]:
        if self.cuda:
            return {"memory/peak_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
        return {"memory/rss_growth_gib": (_max_rss() - self.start) / 2**30}


def _max_rss() -> int:
    """The process's peak resident set in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _grad_norm(params: list[Any]) -> torch.Tensor:
    """L2 norm of the gradients of ``params`` (those that have one); 0 when none has."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def window_means(window: list[dict[str, float]]) -> dict[str, float]:
    """``train/<metric>`` means (memory: the maximum) over the steps since the last log line, and the token
    throughput."""
    avg = {f"train/{k}": (max(e[k] for e in window) if k.startswith("memory/") else sum(e[k] for e in window) / len(window))
           for k in window[0]}
    avg["train/tokens_per_s"] = sum(e["tokens"] for e in window) / sum(e["step_time"] for e in window)
    return avg


def evaluate(model: Any, eval_fn: EvalFn) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = eval_fn(model)
    model.train()
    return metrics


def batched_eval(pairs: list[TokenizedPair], batch_size: int, pad_token_id: int, device: Any, progress: bool,
                 desc: str) -> Iterator[Batch]:
    """Length-sorted fixed batches for evaluation / reference passes (order does not matter)."""
    from tqdm.auto import tqdm

    order = sorted(range(len(pairs)), key=lambda i: pairs[i].max_len)
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for idx in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        yield collate([pairs[i] for i in idx], pad_token_id).to(device)


# ----------------------------------------------------------------------------- the result

def sharded(accelerator: Any) -> bool:
    """FSDP or DeepSpeed: the weights are split across processes (or, under ZeRO-3, not materialised)."""
    return str(accelerator.distributed_type).rsplit(".", 1)[-1] in ("FSDP", "DEEPSPEED")


@names_path(lambda run, *args: run.out)
def save_final(run: RunInputs, model: Any, summary: dict[str, Any], cfg: TrainConfig) -> None:
    """save_pretrained the trained model (LoRA merged in; adapter also kept) + tokenizer + summary.
    FSDP / DeepSpeed: every process takes part in gathering the full state dict, the main process
    writes it (with LoRA: the adapter, then the base reloaded with it merged in)."""
    from rlaif.train.modeling import merged_from_adapter

    accelerator, out = run.accelerator, run.out
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model) if sharded(accelerator) else None  # all processes gather the shards
    if accelerator.is_main_process:
        if cfg.lora.enabled:
            unwrapped.save_pretrained(out / "adapter", state_dict=state)
            if state is None:
                unwrapped = unwrapped.merge_and_unload()
            else:  # sharded weights cannot be merged in place; ZeRO-3 must not partition this copy
                ds = getattr(accelerator.state, "deepspeed_plugin", None)
                with ds.zero3_init_context_manager(enable=False) if ds is not None else nullcontext():
                    unwrapped = merged_from_adapter(run.base, out / "adapter", unwrapped)
            state = None
        unwrapped.config.use_cache = True

        def save(folder: Path) -> None:
            unwrapped.save_pretrained(folder, state_dict=state, safe_serialization=True)
            run.tokenizer.save_pretrained(folder)

        save_model_files(out, save)
        summary = {**summary, "config": to_dict(cfg), "settings": run.settings}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
