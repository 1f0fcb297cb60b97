"""The online policy trains without dropout, so its train-mode forwards are the engine's policy."""

from __future__ import annotations

import torch

from rlaif.train.online.config import GRPOConfig
from rlaif.train.online.setup import load_policy


def test_lora_policy_has_no_dropout_and_train_forwards_repeat(tiny_model_dir):
    cfg = GRPOConfig(prompts="p.jsonl", out="o", reward=["python:x.py:f"])
    cfg.lora.enabled, cfg.lora.dropout = True, 0.5
    policy = load_policy(cfg, tiny_model_dir, torch.device("cpu")).train()
    assert [m.p for m in policy.modules() if isinstance(m, torch.nn.Dropout)], "LoRA adds dropout modules"
    assert all(m.p == 0.0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))
    ids = torch.arange(3, 19).unsqueeze(0)
    torch.manual_seed(0)
    first = policy(input_ids=ids).logits
    second = policy(input_ids=ids).logits
    assert torch.equal(first, second)
