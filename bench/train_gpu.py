"""GPU training throughput and MFU of rlaif's RM and DPO trainers (bf16 mixed precision).

    .venv/bin/python bench/train_gpu.py [--model smollm2-135m|DIR] [--pairs 256] [--batch-size 16]
        [--max-length 1024] [--gradient-checkpointing]

MFU = achieved model FLOPs / peak dense bf16 FLOPs of the card. Model FLOPs per trained token use
the PaLM appendix formula, 6 N + 12 L d T (N: matmul parameters actually used, embedding table
excluded, LM head included for DPO; L layers, d hidden size, T mean sequence length). The DPO
reference log-probs are precomputed before training and not counted. Unmeasured so far: no GPU
was available when this was written (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import make_data  # noqa: E402  (bench/train.py: same varied-length pairs)

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_tflops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def model_flops_per_token(config, mean_len: float, with_lm_head: bool) -> float:
    d, layers = config.hidden_size, config.num_hidden_layers
    inter = config.intermediate_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o and k, v projections
    mlp = 3 * d * inter  # gate, up, down
    n = layers * (attn + mlp) + (config.vocab_size * d if with_lm_head else d)
    return 6 * n + 12 * layers * d * mean_len


def run(kind: str, data: Path, model: str, out: Path, args: argparse.Namespace) -> dict:
    from transformers import AutoConfig

    from rlaif.train.config import DPOConfig, RMConfig

    common = dict(data=str(data), model=model, out=str(out), batch_size=args.batch_size, epochs=1,
                  max_length=args.max_length, max_prompt_length=args.max_length // 2, precision="bf16",
                  gradient_checkpointing=args.gradient_checkpointing, save_steps=0, logging_steps=1,
                  progress=False, overwrite=True)
    torch.cuda.synchronize()
    if kind == "rm":
        from rlaif.train.rm import train_rm

        summary = train_rm(RMConfig(**common, lr=1e-5))
    else:
        from rlaif.train.dpo import train_dpo

        summary = train_dpo(DPOConfig(**common, lr=1e-6))
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x][1:]
    tokens = sum(s["train/tokens"] for s in steps)
    seconds = sum(s["train/step_time"] for s in steps)
    from rlaif.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model))
    rows = 2 * args.batch_size * len(steps)
    flops = tokens * model_flops_per_token(config, tokens / max(rows, 1), with_lm_head=kind == "dpo")
    peak = peak_tflops()
    return {"tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12,
            "mfu": (flops / seconds / 1e12 / peak) if peak else None, "padding": summary["padding_fraction"],
            "steps": len(steps) + 1, "device": torch.cuda.get_device_name(),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs a CUDA GPU")
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-gpu-"))
    try:
        make_data(tmp / "data", args.pairs)
        for kind in ("rm", "dpo"):
            torch.cuda.reset_peak_memory_stats()
            res = run(kind, tmp / "data", args.model, tmp / kind, args)
            print(f"{kind}: {json.dumps(res)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
