"""The DPO reference of a loop round when it is not the model being trained (``reference=initial``).

`rlaif.train.dpo.train_dpo` precomputes its reference log-probs with the model it is about to
train and caches them in ``out/ref_logps.pt`` under a key of (base model, tokenized pairs); a
cache whose key matches is used as is. For round K >= 2 with ``reference=initial`` (RLHFlow: the
reference stays the starting policy), the loop writes that cache first, computed with the
starting policy on the very same tokenized pairs, so the implicit reward is
``beta * (log pi_theta(y|x) - log pi_0(y|x))``. `check_reference_used` afterwards proves the
trainer took it (a changed cache key would otherwise silently fall back to the round's base).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlaif.train.config import DPOConfig

TAG = "reference_model"


def prefill_reference(cfg: DPOConfig, reference_model: str) -> None:
    """Write ``cfg.out/ref_logps.pt`` with the log-probs of ``reference_model`` on ``cfg.data``'s pairs."""
    from transformers import AutoModelForCausalLM

    from rlaif.models import resolve_model
    from rlaif.train.data import load_splits, tokenize_rows
    from rlaif.train.dpo import _fingerprint, reference_logprobs
    from rlaif.train.modeling import load_tokenizer
    from rlaif.train.runtime import make_accelerator

    out = Path(cfg.out)
    cache = out / "ref_logps.pt"
    base = resolve_model(cfg.model)
    tokenizer = load_tokenizer(base)
    splits = load_splits(cfg.data)
    train, _ = tokenize_rows(tokenizer, splits["train"], cfg.max_length, cfg.max_prompt_length, False)
    test, _ = tokenize_rows(tokenizer, splits.get("test", []), cfg.max_length, cfg.max_prompt_length)
    key = _fingerprint(base, train + test)
    if cache.is_file():
        old = torch.load(cache)
        if old.get("key") == key and old.get(TAG) == reference_model:
            return
    accelerator = make_accelerator(cfg)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(reference_model), dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(accelerator.device)
    bs = cfg.eval_batch_size or cfg.batch_size
    table = {split: reference_logprobs(model, pairs, bs, tokenizer.pad_token_id, accelerator, False)
             for split, pairs in (("train", train), ("test", test))}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".ref_logps.pt.tmp"
    torch.save({"key": key, **table, TAG: reference_model}, tmp)
    tmp.replace(cache)
    del model


def check_reference_used(cfg: DPOConfig, reference_model: str) -> None:
    """RuntimeError unless the trainer kept the prefilled cache (it rewrites it on a key mismatch)."""
    cached = torch.load(Path(cfg.out) / "ref_logps.pt")
    if cached.get(TAG) != reference_model:
        raise RuntimeError(f"{cfg.out}/ref_logps.pt: train_dpo did not use the prefilled reference "
                           f"{reference_model} (its cache key changed?)")
