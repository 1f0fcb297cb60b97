"""Reward-model trainer: a one-scalar head on a causal-LM base, Bradley-Terry loss.

    r(x, y) = w . h_last(x, y)        h_last: final hidden state at the last *real* token
    loss    = -log sigmoid(r_c - r_r - margin_coef * m) + center_coef * (r_c + r_r)^2

The score is read at the last token the attention mask marks real, whatever the padding side
or pad token (`modeling.reward_scores`; reading it at padding is TRL #937/#3750). Chosen and
rejected rows go through the model in one forward pass; with ``packing`` (the default) as one
padding-free sequence (packing.py), the score read at each row's last token.
"""

from __future__ import annotations

from typing import Any

import torch

from rlaif.errors import UserError
from rlaif.train.data import Batch
from rlaif.train.config import RMConfig
from rlaif.train.modeling import load_reward_model, prepare_model, reward_scores, score_head
from rlaif.train.packing import PackedPairs, pair_eval_batches, pair_micro_batches, use_varlen_attention
from rlaif.train.runtime import RunInputs, prepare_run, save_final, train_pairs
from rlaif.train.losses import bradley_terry_loss


def pair_rewards(model: Any, batch: Batch | PackedPairs) -> torch.Tensor:
    """Rewards of the batch's rows [chosen..., rejected...], shape (2B,)."""
    if not isinstance(batch, PackedPairs):
        return reward_scores(model, batch.input_ids, batch.attention_mask)
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=None, use_cache=False)
    finally:
        handle.remove()
    return captured[-1][0, batch.last, 0].float()                      # each row's last token


def rm_step(model: Any, batch: Batch | PackedPairs, cfg: RMConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rewards = pair_rewards(model, batch)
    r_c, r_r = rewards.chunk(2)
    margin = cfg.margin_coef * batch.margins if cfg.margin_coef else None
    loss = bradley_terry_loss(r_c, r_r, margin, cfg.center_coef).mean()
    return loss, {"loss": loss, "accuracy": (r_c > r_r).float().mean(), "margin": (r_c - r_r).mean(),
                  "reward_mean": rewards.mean()}


def evaluate_rm(model: Any, pairs: list, cfg: RMConfig, pad_token_id: int, device: Any) -> dict[str, float]:
    correct, gaps, count = 0, 0.0, 0
    batch_size = cfg.eval_batch_size or cfg.batch_size
    for batch in pair_eval_batches(cfg, pairs, batch_size, pad_token_id, device, cfg.progress, "eval"):
        r_c, r_r = pair_rewards(model, batch).chunk(2)
        correct += int((r_c > r_r).sum())
        gaps += float((r_c - r_r).sum())
        count += r_c.numel()
    return {"accuracy": correct / max(count, 1), "margin": gaps / max(count, 1), "pairs": float(count)}


def train_rm(cfg: RMConfig) -> dict[str, Any]:
    """Train a reward model on ``cfg.data`` and save it to ``cfg.out``; returns the summary."""
    if not cfg.data or not cfg.out:
        raise UserError("train rm: --data and --out are required")
    run = prepare_run(cfg)
    if not isinstance(run, RunInputs):  # finished before, with these settings
        return run
    accelerator, train, test, pad = run.accelerator, run.train, run.test, run.tokenizer.pad_token_id
    model = load_reward_model(run.base, pad)
    if cfg.packing:
        use_varlen_attention(model)
    model = prepare_model(model, cfg, task_type="SEQ_CLS")

    def eval_fn(m: Any) -> dict[str, float]:
        return evaluate_rm(m, test, cfg, pad, accelerator.device)

    batches = pair_micro_batches(cfg, run.train, pad, accelerator)
    result = train_pairs(cfg, run, model, lambda m, b: rm_step(m, b, cfg), eval_fn if test else None, "train rm",
                         batches=batches)
    model.eval()
    with torch.no_grad():  # accuracy on (up to 512 of) the training pairs, after training
        train_metrics = evaluate_rm(model, train[:512], cfg, pad, accelerator.device)
    summary = {
        "trainer": "rm", "steps": result.steps, "resumed_from": result.resumed_from,
        "train": train_metrics,
        "test": result.eval_metrics, "padding_fraction": result.padding_fraction,
        "nonfinite_skipped": result.nonfinite_skipped,
        "truncation": {"train": vars(run.train_stats), "test": vars(run.test_stats)},
    }
    save_final(run, model, summary, cfg)
    accelerator.print(f"saved reward model to {run.out}; test accuracy "
                      f"{result.eval_metrics.get('accuracy', float('nan')):.3f}")
    return summary
