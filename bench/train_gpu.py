"""GPU training throughput and MFU of rlaif's own RM and DPO trainers (bf16 mixed precision).

    python bench/train_gpu.py [--model smollm2-135m|DIR] [--pairs 256] [--batch-size 16]
        [--max-length 1024] [--gradient-checkpointing] [--json FILE]
    python bench/train_gpu.py --build 360m --tokenizer TOKDIR --model DIR   # random SmolLM2-360M-shaped model
    python bench/train_gpu.py --cpu ...                                     # rehearsal on CPU (fp32, no MFU)

`--build SHAPE` writes a randomly initialised Llama model in a SmolLM2 shape (bench/gpu_check.py
SHAPES) with the tokenizer files of TOKDIR to --model and exits: the GPU machine has no network and
only 64 MiB travel with a call, so no real weights can be used there (throughput does not depend
on the weights' values).

MFU = achieved model FLOPs / peak dense bf16 FLOPs of the card. Model FLOPs per trained token use
the PaLM appendix formula (Chowdhery et al. 2022), 6 N + 12 L d T (N: matmul parameters actually
used, embedding table excluded, LM head included for DPO; L layers, d hidden size, T mean sequence
length). The DPO reference log-probs are precomputed before training and not counted; the first
optimizer step is warm-up and not counted either; `late_*` figures count only the last 3/4 of the
steps (on an H100 the first steps of each new batch shape were several times slower).
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
from gpu_check import SHAPES  # noqa: E402  (bench/gpu_check.py: SmolLM2 shapes)
from train import make_data  # noqa: E402  (bench/train.py: same varied-length pairs)

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build_model(shape: str, tokenizer_dir: Path, out: Path) -> None:
    """A random-weight LlamaForCausalLM in a SmolLM2 shape, saved with the tokenizer of ``tokenizer_dir``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape_cfg = dict(SHAPES[shape], vocab_size=max(SHAPES[shape]["vocab_size"], len(tok)))
    cfg = LlamaConfig(**shape_cfg, tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=100000.0,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):  # a 1.7B random init takes minutes on CPU
        model = LlamaForCausalLM(cfg)
    if cuda:
        model = model.to(torch.bfloat16)  # half the bytes to write and read; the trainers load fp32 masters
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    del model
    tok.save_pretrained(out)
    for name in ("generation_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file() and not (out / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    if cuda:
        torch.cuda.empty_cache()
    print(f"built {shape} -> {out}", flush=True)


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

    from rlaif.models import resolve_model
    from rlaif.train.config import DPOConfig, RMConfig

    cuda = torch.cuda.is_available() and not args.cpu
    common = dict(data=str(data), model=model, out=str(out), batch_size=args.batch_size, epochs=1,
                  max_length=args.max_length, max_prompt_length=args.max_length // 2,
                  precision="bf16" if cuda else "fp32", gradient_checkpointing=args.gradient_checkpointing,
                  save_steps=0, logging_steps=1, progress=False, overwrite=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    if kind == "rm":
        from rlaif.train.rm import train_rm

        summary = train_rm(RMConfig(**common, lr=1e-5))
    else:
        from rlaif.train.dpo import train_dpo

        summary = train_dpo(DPOConfig(**common, lr=1e-6))
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    first_step_s, steps = steps[0]["train/step_time"], steps[1:]
    if not steps:
        raise SystemExit(f"{kind}: fewer than 2 optimizer steps; raise --pairs")
    config = AutoConfig.from_pretrained(resolve_model(model))
    peak = peak_tflops() if cuda else None

    def rates(part: list[dict]) -> tuple[float, float, float | None, float]:
        """tokens/s, TFLOP/s, MFU and mean tokens per sequence over these steps."""
        tokens, seconds = sum(s["train/tokens"] for s in part), sum(s["train/step_time"] for s in part)
        mean_len = tokens / (2 * args.batch_size * len(part))
        tflops = tokens * model_flops_per_token(config, mean_len, with_lm_head=kind == "dpo") / seconds / 1e12
        return tokens / seconds, tflops, (tflops / peak if peak else None), mean_len

    tok_s, tflops, mfu, mean_len = rates(steps)
    late = steps[len(steps) // 4:]  # the last 3/4: past the allocator/kernel-selection warm-up of new shapes
    late_tok_s, late_tflops, late_mfu, _ = rates(late)
    step_times = sorted(s["train/step_time"] for s in steps)
    return {"task": kind, "tokens_per_s": tok_s, "tflops": tflops, "mfu": mfu,
            "late_tokens_per_s": late_tok_s, "late_tflops": late_tflops, "late_mfu": late_mfu,
            "padding": summary["padding_fraction"], "steps": len(steps) + 1,
            "mean_step_s": sum(step_times) / len(steps), "median_step_s": step_times[len(steps) // 2],
            "first_step_s": first_step_s, "mean_seq_tokens": mean_len,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "batch_size": args.batch_size, "max_length": args.max_length, "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="alias or folder (with --build: where to write)")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--tasks", default="rm,dpo")
    parser.add_argument("--cpu", action="store_true", help="rehearsal on CPU: fp32, no MFU")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--build", choices=sorted(SHAPES), default=None,
                        help="write a random model of this shape to --model and exit")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder for --build")
    args = parser.parse_args()
    if args.build:
        if args.tokenizer is None:
            sys.exit("--build needs --tokenizer")
        build_model(args.build, args.tokenizer, Path(args.model))
        return
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs a CUDA GPU (or --cpu for a rehearsal)")
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-gpu-"))
    results = []
    try:
        make_data(tmp / "data", args.pairs)
        for kind in args.tasks.split(","):
            res = run(kind, tmp / "data", args.model, tmp / kind, args)
            results.append(res)
            print(f"{kind}: {json.dumps(res)}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
