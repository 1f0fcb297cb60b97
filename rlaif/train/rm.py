"""Reward-model trainer: a one-scalar head on a causal-LM base, Bradley-Terry loss.

    r(x, y) = w . h_last(x, y)        h_last: final hidden state at the last *real* token
    loss    = -log sigmoid(r_c - r_r - margin_coef * m) + center_coef * (r_c + r_r)^2

The score is read at the last token the attention mask marks real, whatever the padding side
or pad token (reading it at padding is TRL #937/#3750). Chosen and rejected rows go through the
model in one forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlaif.errors import UserError
from rlaif.train.data import Batch
from rlaif.train.config import RMConfig
from rlaif.train.runtime import (already_finished, batched_eval, position_ids, prepare_model, prepare_run,
                              run_loop, save_final)
from rlaif.train.losses import bradley_terry_loss


def score_head(model: Any) -> torch.nn.Module:
    """The per-position scalar head of a *ForSequenceClassification model (``score`` in HF LMs)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("score", "classifier") and not name.endswith("original_module"):
            return module
    raise UserError(f"{type(model).__name__}: no 'score' head found; the reward model must be a "
                    f"*ForSequenceClassification model on a causal LM")


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, per row (works for left or right padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask).argmax(-1)


def reward_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row, shape (N,), read at each row's last real token.

    The model's own forward runs (so DDP/FSDP/peft wrappers do their work); a hook on the head
    captures its per-position output (N, T, 1) before HF's pad-token-based pooling.
    """
    captured: list[torch.Tensor] = []
    handle = score_head(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
              use_cache=False)
    finally:
        handle.remove()
    per_position = captured[-1][..., 0]  # (N, T)
    rows = torch.arange(per_position.shape[0], device=per_position.device)
    return per_position[rows, last_real_index(attention_mask)].float()


def rm_step(model: Any, batch: Batch, cfg: RMConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rewards = reward_scores(model, batch.input_ids, batch.attention_mask)
    r_c, r_r = rewards.chunk(2)
    margin = cfg.margin_coef * batch.margins if cfg.margin_coef else None
    loss = bradley_terry_loss(r_c, r_r, margin, cfg.center_coef).mean()
    return loss, {"loss": loss, "accuracy": (r_c > r_r).float().mean(), "margin": (r_c - r_r).mean(),
                  "reward_mean": rewards.mean()}


def load_reward_model(path: str, pad_token_id: int) -> Any:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad_token_id
    return model


def evaluate_rm(model: Any, pairs: list, cfg: RMConfig, pad_token_id: int, device: Any) -> dict[str, float]:
    correct, gaps, n = 0, 0.0, 0
    bs = cfg.eval_batch_size or cfg.batch_size
    for batch in batched_eval(pairs, bs, pad_token_id, device, cfg.progress, "eval"):
        r_c, r_r = reward_scores(model, batch.input_ids, batch.attention_mask).chunk(2)
        correct += int((r_c > r_r).sum())
        gaps += float((r_c - r_r).sum())
        n += r_c.numel()
    return {"accuracy": correct / max(n, 1), "margin": gaps / max(n, 1), "pairs": float(n)}


def train_rm(cfg: RMConfig) -> dict[str, Any]:
    """Train a reward model on ``cfg.data`` and save it to ``cfg.out``; returns the summary."""
    if not cfg.data or not cfg.out:
        raise UserError("train rm: --data and --out are required")
    out = Path(cfg.out)
    if already_finished(out, cfg):
        print(f"{out} already holds a trained model (summary.json); pass resume=false to train again")
        import json

        return json.loads((out / "summary.json").read_text())
    base, tokenizer, train, stats, test, test_stats, accelerator = prepare_run(cfg, out)
    model = prepare_model(load_reward_model(base, tokenizer.pad_token_id), cfg, task_type="SEQ_CLS")
    pad = tokenizer.pad_token_id

    def eval_fn(m: Any) -> dict[str, float]:
        return evaluate_rm(m, test, cfg, pad, accelerator.device) if test else {}

    result = run_loop(cfg, accelerator, model, train, pad, lambda m, b: rm_step(m, b, cfg),
                      eval_fn if test else None, out, "train rm")
    model.eval()
    with torch.no_grad():  # accuracy on (up to 512 of) the training pairs, after training
        train_metrics = evaluate_rm(model, train[:512], cfg, pad, accelerator.device)
    summary = {
        "trainer": "rm", "steps": result.steps, "resumed_from": result.resumed_from,
        "train": train_metrics,
        "test": result.eval_metrics, "padding_fraction": result.padding_fraction,
        "truncation": {"train": vars(stats), "test": vars(test_stats)},
    }
    save_final(accelerator, model, tokenizer, out, summary, cfg)
    accelerator.print(f"saved reward model to {out}; test accuracy "
                      f"{result.eval_metrics.get('accuracy', float('nan')):.3f}")
    return summary
