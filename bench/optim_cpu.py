"""AdamW implementations on CPU: seconds per optimizer step for torch's plain (for-loop), foreach and
fused AdamW over the parameters of the tiny test shape and of SmolLM2-135M (random weights, random
gradients), and the largest weight difference to the plain one after the steps.

    PYTHONPATH=$PWD .venv/bin/python bench/optim_cpu.py [--steps 10] [--shapes tiny,135m]

rlaif.train.optim picks the CPU implementation from these figures (BENCHMARKS.md "AdamW on CPU").
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SHAPES = {  # LlamaConfig fields: tests/conftest.py's tiny model and HuggingFaceTB/SmolLM2-135M
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=768),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152),
}
KINDS = {"plain": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def params_of(shape: str) -> list[torch.nn.Parameter]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape], tie_word_embeddings=True))
    return [p for p in model.parameters()]


def bench(shape: str, kind: str, steps: int) -> tuple[float, list[torch.Tensor]]:
    """Median seconds per step (after one warm-up step) and the weights after ``steps + 1`` steps."""
    params = params_of(shape)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=1e-4, **KINDS[kind])
    times = []
    for _ in range(steps + 1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        t0 = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2], [p.detach() for p in params]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--shapes", default="tiny,135m")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for shape in args.shapes.split(","):
        base: list[torch.Tensor] | None = None
        for kind in KINDS:
            seconds, weights = bench(shape, kind, args.steps)
            base = base if base is not None else weights
            diff = max(float((a - b).abs().max()) for a, b in zip(base, weights))
            rows.append({"shape": shape, "kind": kind, "ms_per_step": seconds * 1e3, "max_abs_diff_vs_plain": diff})
            print(json.dumps(rows[-1]), flush=True)
    print("| shape | plain ms | foreach ms | fused ms | fused max diff vs plain |\n|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        r = {x["kind"]: x for x in rows if x["shape"] == shape}
        print(f"| {shape} | {r['plain']['ms_per_step']:.2f} | {r['foreach']['ms_per_step']:.2f} | "
              f"{r['fused']['ms_per_step']:.2f} | {r['fused']['max_abs_diff_vs_plain']:.1e} |")


if __name__ == "__main__":
    main()
