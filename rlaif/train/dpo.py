"""DPO trainer (Rafailov et al. 2023) and its ipo / hinge / robust variants (see losses.dpo_loss).

    implicit reward  r(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x))
    loss             = -log sigmoid(r(x, y_c) - r(x, y_r))          (loss_type=sigmoid)

The reference pi_ref is the starting policy, or ``ref_model`` when given (an iterative loop keeps
its first policy as the reference in later rounds, RLHFlow: Dong et al. 2024). By default
(``reference=precompute``) its log-probs are computed once, before training, with the very model
about to be trained (or with ``ref_model``, loaded for that pass only), and cached in
``out/ref_logps.pt`` under a key of (reference, tokenized pairs): no second model in memory during
training, and a resumed run reuses the cache. ``reference=model`` keeps a frozen copy instead
(``ref_model`` itself; else with LoRA the base with the adapter switched off).
Chosen and rejected rows share one forward pass, packed into one padding-free sequence with
``packing`` (the default; packing.py); the LM head runs only at positions that predict a response
token (not over prompt or padding), its log-softmax chunked over positions (logprobs.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rlaif.errors import UserError
from rlaif.train.data import IGNORE_INDEX, Batch, TokenizedPair
from rlaif.train.config import DPOConfig
from rlaif.train.logprobs import check_head_transform, selected_logprobs
from rlaif.train.modeling import position_ids, prepare_model, unwrap
from rlaif.train.packing import PackedPairs, pair_eval_batches, pair_micro_batches, use_varlen_attention
from rlaif.train.runtime import RunInputs, prepare_run, save_final, sharded, train_pairs
from rlaif.train.losses import dpo_loss


def response_logprobs(model: Any, batch: Batch | PackedPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each row's response tokens and their count, shapes (2B,), (2B,), rows
    [chosen..., rejected...]; packed or padded, the LM head sees only positions that predict a
    response token."""
    if isinstance(batch, PackedPairs):
        mask = batch.targets != IGNORE_INDEX                                # (1, T)
        values = selected_logprobs(model, batch.input_ids, batch.position_ids, batch.targets, mask)
        rows, width = batch.row_of[mask[0]], 2 * len(batch.indices)
    else:
        targets = torch.nn.functional.pad(batch.labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # position t -> label t+1
        mask = targets != IGNORE_INDEX
        values = selected_logprobs(model, batch.input_ids, position_ids(batch.attention_mask), targets, mask,
                                   attention_mask=batch.attention_mask)
        rows, width = mask.nonzero()[:, 0], mask.shape[0]
    logps = torch.zeros(width, device=values.device).index_add(0, rows, values)
    counts = torch.zeros(width, device=values.device).index_add(0, rows, torch.ones_like(values))
    return logps, counts


def reference_logprobs(model: Any, pairs: list[TokenizedPair], batch_size: int, pad_token_id: int,
                       accelerator: Any, progress: bool, cfg: DPOConfig) -> torch.Tensor:
    """(N, 2) reference log-probs [chosen, rejected] per pair. The length-sorted batches are the
    same for any number of processes (so are the numbers); process r takes batches r, r+W...,
    every process runs as many forward passes (FSDP/ZeRO-3 gather weights in each; a process short
    of one repeats a batch), and the rows are gathered."""
    from accelerate.utils import gather_object

    chunks = list(pair_eval_batches(cfg, pairs, batch_size, pad_token_id, "cpu", False, ""))
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = chunks[rank::world]
    mine += chunks[:1] * (math.ceil(len(chunks) / world) - len(mine))
    rows: list[tuple[int, float, float]] = []
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        for batch in tqdm(mine, desc="reference log-probs", disable=not progress, leave=False):
            logps, _ = response_logprobs(model, batch.to(accelerator.device))
            c, r = logps.chunk(2)
            rows += list(zip(batch.indices, c.tolist(), r.tolist()))
    model.train()
    if world > 1:
        rows = gather_object(rows)
    table = torch.zeros(len(pairs), 2)
    for i, c, r in rows:
        table[i] = torch.tensor([c, r])
    return table


def _fingerprint(base: str, pairs: list[TokenizedPair]) -> str:
    h = hashlib.sha256(str(Path(base).resolve() if Path(base).exists() else base).encode())
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()


class DPOObjective:
    """Loss and metrics for one batch, given the reference (cached table or frozen model)."""

    def __init__(self, cfg: DPOConfig, ref_table: torch.Tensor | None, ref_model: Any = None) -> None:
        self.cfg, self.ref_table, self.ref_model = cfg, ref_table, ref_model

    def reference(self, policy: Any, batch: Batch, table: torch.Tensor | None) -> torch.Tensor:
        if table is not None:
            ref = table[batch.indices].to(batch.input_ids.device)  # (B, 2)
            return torch.cat([ref[:, 0], ref[:, 1]])
        with torch.no_grad():
            if self.ref_model is not None:
                return response_logprobs(self.ref_model, batch)[0]
            with unwrap(policy).disable_adapter():  # LoRA: the base model is the reference
                return response_logprobs(policy, batch)[0]

    def __call__(self, model: Any, batch: Batch, table: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        table = self.ref_table if table is None else table
        logps, counts = response_logprobs(model, batch)
        ref = self.reference(model, batch, table)
        pc, pr = logps.chunk(2)
        rc, rr = ref.chunk(2)
        nc, nr = counts.chunk(2)
        losses = dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.loss_type, cfg.label_smoothing, nc, nr)
        loss = losses.mean()
        reward_c, reward_r = cfg.beta * (pc - rc).detach(), cfg.beta * (pr - rr).detach()
        return loss, {
            "loss": loss, "rewards/accuracy": (reward_c > reward_r).float().mean(),
            "rewards/margin": (reward_c - reward_r).mean(), "rewards/chosen": reward_c.mean(),
            "rewards/rejected": reward_r.mean(), "logps/chosen": pc.detach().mean(),
            "logps/rejected": pr.detach().mean(),
        }


def evaluate_dpo(model: Any, objective: DPOObjective, pairs: list[TokenizedPair], table: torch.Tensor | None,
                 cfg: DPOConfig, pad_token_id: int, accelerator: Any) -> dict[str, float]:
    totals: dict[str, float] = {}
    count = 0
    batch_size = cfg.eval_batch_size or cfg.batch_size
    for batch in pair_eval_batches(cfg, pairs, batch_size, pad_token_id, accelerator.device, cfg.progress, "eval"):
        with accelerator.autocast():
            _, metrics = objective(model, batch, table)
        pairs_in_batch = len(batch.indices)
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value) * pairs_in_batch
        count += pairs_in_batch
    return {name: total / max(count, 1) for name, total in totals.items()}


def load_reference(path: str, pad_token_id: int) -> Any:
    """The reference model at ``path`` (a resolved folder or hub id), fp32, frozen, with its real weights in
    every process: under FSDP's ``cpu_ram_efficient_loading`` transformers loads them on local rank 0 only (the
    others get empty tensors that wrapping would fill), and the reference is never wrapped."""
    from transformers import AutoModelForCausalLM

    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old
    model.config.pad_token_id = pad_token_id
    return model.eval().requires_grad_(False)


def check_ref_model(cfg: DPOConfig, run: RunInputs) -> str | None:
    """The resolved ``ref_model`` (None: the starting weights); UserError unless it is a causal LM with
    the policy's vocabulary (its log-probs are read at the policy's token ids)."""
    from rlaif.models import check_causal_lm, resolve_model
    from rlaif.train.modeling import load_tokenizer

    if not cfg.ref_model:
        return None
    try:
        path = resolve_model(cfg.ref_model)
        check_causal_lm(path)
    except UserError as e:
        raise UserError(f"option 'ref_model': {e}") from None
    if load_tokenizer(path).get_vocab() != run.tokenizer.get_vocab():
        raise UserError(f"option 'ref_model': {cfg.ref_model} has another tokenizer than model={cfg.model}; the "
                        f"reference must score the policy's tokens")
    return path


def _read_cache(path: Path) -> dict[str, Any] | None:
    """The reference table cached in ``path`` (tensors only: loaded with ``weights_only=True``, so a
    planted file cannot run code); None when missing or unreadable (it is computed again)."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError):  # torn, foreign or hostile: recompute
        return None
    return cached if isinstance(cached, dict) else None


class Reference:
    """Where the reference log-probs come from (``reference=precompute``: ``out/ref_logps.pt``,
    computed once before the first step with the wrapped model, or with ``ref_model``) or the frozen
    model (``reference=model``: ``ref_model``, else a copy of the policy; with LoRA and no
    ``ref_model`` the base with the adapter switched off)."""

    def __init__(self, cfg: DPOConfig, run: RunInputs, model: Any, ref_path: str | None = None) -> None:
        self.cfg, self.run, self.ref_path = cfg, run, ref_path
        self.train: torch.Tensor | None = None
        self.test: torch.Tensor | None = None
        self.model: Any = None
        self.cache, self.key = run.out / "ref_logps.pt", _fingerprint(ref_path or run.base, run.train + run.test)
        if cfg.reference == "precompute":
            cached = _read_cache(self.cache)
            if cached is not None and cached.get("key") == self.key:
                self.train, self.test = cached["train"], cached["test"]
        elif ref_path is not None or not cfg.lora.enabled:
            if sharded(run.accelerator):
                raise UserError(f"reference=model: a frozen full copy of the reference is not sharded under "
                                f"{run.accelerator.distributed_type}; use reference=precompute (the default)")
            frozen = (load_reference(ref_path, run.tokenizer.pad_token_id) if ref_path is not None
                      else copy.deepcopy(model).eval().requires_grad_(False))
            if cfg.packing:
                use_varlen_attention(frozen)
            self.model = frozen.to(run.accelerator.device)

    def compute(self, model: Any) -> None:
        """The missing table, from ``ref_model`` or else ``model`` (prepared, not yet trained), on every
        process; saved once."""
        if self.cfg.reference != "precompute" or self.train is not None:
            return
        cfg, run = self.cfg, self.run
        accelerator, pad, bs = run.accelerator, run.tokenizer.pad_token_id, cfg.eval_batch_size or cfg.batch_size
        if self.ref_path is not None:  # loaded for this pass only
            model = load_reference(self.ref_path, pad).to(accelerator.device)
            if cfg.packing:
                use_varlen_attention(model)
        self.train = reference_logprobs(model, run.train, bs, pad, accelerator, cfg.progress, cfg)
        self.test = reference_logprobs(model, run.test, bs, pad, accelerator, cfg.progress, cfg)
        if accelerator.is_main_process:  # whole or absent after a kill
            tmp = self.cache.with_name(".ref_logps.pt.tmp")
            torch.save({"key": self.key, "train": self.train, "test": self.test}, tmp)
            tmp.replace(self.cache)


def train_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Train a policy with DPO on ``cfg.data``, save it to ``cfg.out``; returns the summary."""
    from transformers import AutoModelForCausalLM

    from rlaif.models import check_causal_lm

    if not cfg.data or not cfg.out:
        raise UserError("train dpo: --data and --out are required")
    if cfg.loss_type == "robust" and not 0 <= cfg.label_smoothing < 0.5:
        raise UserError(f"label_smoothing={cfg.label_smoothing}: robust DPO needs 0 <= label_smoothing < 0.5")
    run = prepare_run(cfg, check_causal_lm)
    if not isinstance(run, RunInputs):  # finished before, with these settings
        return run
    accelerator, test, pad = run.accelerator, run.test, run.tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_pretrained(run.base, dtype=torch.float32)
    check_head_transform(model)  # selected_logprobs reproduces its logits
    model.config.pad_token_id = pad
    if cfg.packing:
        use_varlen_attention(model)
    reference = Reference(cfg, run, model, check_ref_model(cfg, run))
    model = prepare_model(model, cfg, task_type="CAUSAL_LM")
    objective = DPOObjective(cfg, None, reference.model)

    def on_prepared(m: Any) -> None:
        reference.compute(m)
        objective.ref_table = reference.train

    def eval_fn(m: Any) -> dict[str, float]:
        return evaluate_dpo(m, objective, test, reference.test, cfg, pad, accelerator)

    batches = pair_micro_batches(cfg, run.train, pad, accelerator)
    result = train_pairs(cfg, run, model, objective, eval_fn if test else None, "train dpo", on_prepared, batches)
    window = max(1, min(10, len(result.history) // 3))  # first / last steps, for the margin trend
    first, last = result.history[:window], result.history[-window:]

    def mean(rows: list[dict[str, float]], k: str) -> float | None:
        return sum(r[k] for r in rows) / len(rows) if rows else None

    summary = {
        "trainer": "dpo", "loss_type": cfg.loss_type, "beta": cfg.beta, "reference": cfg.ref_model or cfg.model,
        "steps": result.steps,
        "resumed_from": result.resumed_from, "test": result.eval_metrics,
        "train_margin_first_steps": mean(first, "rewards/margin"),
        "train_margin_last_steps": mean(last, "rewards/margin"),
        "padding_fraction": result.padding_fraction, "nonfinite_skipped": result.nonfinite_skipped,
        "truncation": {"train": vars(run.train_stats), "test": vars(run.test_stats)},
    }
    save_final(run, model, summary, cfg)
    accelerator.print(f"saved policy to {run.out}; test reward accuracy "
                      f"{result.eval_metrics.get('rewards/accuracy', float('nan')):.3f}")
    return summary
