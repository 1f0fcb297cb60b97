"""DPO trainer (Rafailov et al. 2023) and its ipo / hinge / robust variants (see losses.dpo_loss).

    implicit reward  r(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x))
    loss             = -log sigmoid(r(x, y_c) - r(x, y_r))          (loss_type=sigmoid)

The reference is the starting policy. By default (``reference=precompute``) its log-probs are
computed once, before training, with the very model about to be trained, and cached in
``out/ref_logps.pt``: no second model in memory, and a resumed run reuses the cache.
``reference=model`` keeps a frozen copy instead (with LoRA: the base with the adapter switched off).
Chosen and rejected rows share one forward pass; the LM head runs only at positions that
predict a response token (not over prompt or padding), as TRL's fused head also does.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from rlaif.errors import UserError
from rlaif.train.data import Batch, TokenizedPair
from rlaif.train.config import DPOConfig
from rlaif.train.modeling import prepare_model, response_logprobs, unwrap
from rlaif.train.runtime import RunInputs, batched_eval, prepare_run, save_final, train_pairs
from rlaif.train.losses import dpo_loss


def reference_logprobs(model: Any, pairs: list[TokenizedPair], batch_size: int, pad_token_id: int,
                       accelerator: Any, progress: bool) -> torch.Tensor:
    """(N, 2) reference log-probs [chosen, rejected] per pair; each process does a share, then gathered."""
    from accelerate.utils import gather_object

    mine = pairs[accelerator.process_index::accelerator.num_processes]
    rows: list[tuple[int, float, float]] = []
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        for batch in batched_eval(mine, batch_size, pad_token_id, accelerator.device, progress, "reference log-probs"):
            logps, _ = response_logprobs(model, batch)
            c, r = logps.chunk(2)
            rows += list(zip(batch.indices, c.tolist(), r.tolist()))
    model.train()
    if accelerator.num_processes > 1:
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
            "rewards/rejected": reward_r.mean(), "logps/chosen": pc.detach().mean(), "logps/rejected": pr.detach().mean(),
        }


def evaluate_dpo(model: Any, objective: DPOObjective, pairs: list[TokenizedPair], table: torch.Tensor | None,
                 cfg: DPOConfig, pad_token_id: int, accelerator: Any) -> dict[str, float]:
    totals: dict[str, float] = {}
    n = 0
    bs = cfg.eval_batch_size or cfg.batch_size
    for batch in batched_eval(pairs, bs, pad_token_id, accelerator.device, cfg.progress, "eval"):
        with accelerator.autocast():
            _, metrics = objective(model, batch, table)
        k = len(batch.indices)
        for name, v in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(v) * k
        n += k
    return {name: v / max(n, 1) for name, v in totals.items()}


def setup_reference(cfg: DPOConfig, run: RunInputs, model: Any) -> tuple[Any, Any, Any]:
    """(train table, test table, frozen model): the cached or freshly computed reference log-probs
    (``reference=precompute``), or a frozen copy of ``model`` (``reference=model`` without LoRA)."""
    accelerator, pad = run.accelerator, run.tokenizer.pad_token_id
    if cfg.reference == "precompute":
        cache = run.out / "ref_logps.pt"
        key = _fingerprint(run.base, run.train + run.test)
        cached = torch.load(cache) if cache.is_file() else None
        if cached is not None and cached.get("key") == key:
            return cached["train"], cached["test"], None
        model.to(accelerator.device)
        bs = cfg.eval_batch_size or cfg.batch_size
        ref_train = reference_logprobs(model, run.train, bs, pad, accelerator, cfg.progress)
        ref_test = reference_logprobs(model, run.test, bs, pad, accelerator, cfg.progress)
        if accelerator.is_main_process:
            torch.save({"key": key, "train": ref_train, "test": ref_test}, cache)
        return ref_train, ref_test, None
    if not cfg.lora.enabled:
        return None, None, copy.deepcopy(model).eval().requires_grad_(False).to(accelerator.device)
    return None, None, None  # LoRA: the base with the adapter switched off


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
    model.config.pad_token_id = pad
    ref_train, ref_test, ref_model = setup_reference(cfg, run, model)
    model = prepare_model(model, cfg, task_type="CAUSAL_LM")
    objective = DPOObjective(cfg, ref_train, ref_model)

    def eval_fn(m: Any) -> dict[str, float]:
        return evaluate_dpo(m, objective, test, ref_test, cfg, pad, accelerator)

    result = train_pairs(cfg, run, model, objective, eval_fn if test else None, "train dpo")
    window = max(1, min(10, len(result.history) // 3))  # first / last steps, for the margin trend
    first, last = result.history[:window], result.history[-window:]

    def mean(rows: list[dict[str, float]], k: str) -> float | None:
        return sum(r[k] for r in rows) / len(rows) if rows else None

    summary = {
        "trainer": "dpo", "loss_type": cfg.loss_type, "beta": cfg.beta, "steps": result.steps,
        "resumed_from": result.resumed_from, "test": result.eval_metrics,
        "train_margin_first_steps": mean(first, "rewards/margin"),
        "train_margin_last_steps": mean(last, "rewards/margin"),
        "padding_fraction": result.padding_fraction,
        "truncation": {"train": vars(run.train_stats), "test": vars(run.test_stats)},
    }
    save_final(run, model, summary, cfg)
    accelerator.print(f"saved policy to {run.out}; test reward accuracy "
                      f"{result.eval_metrics.get('rewards/accuracy', float('nan')):.3f}")
    return summary
