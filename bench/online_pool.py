"""Online RL rollouts on Ray replicas (`RolloutEngine` with ``replicas`` > 1): weight-sync time and
rollout time with one in-process vLLM engine and with N replicas, on the embedded model.

Usage:
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/online_pool.py [--replicas 2] [--prompts 16] [--k 4]
        [--max-tokens 32] [--rounds 3]

For each setting (1 = in process, then ``--replicas``), started fresh: ``--rounds`` times, sample
``--k`` completions of ``--prompts`` demo prompts (``--max-tokens`` each, one warm-up round first),
then change the trainer's float32 weights a little and `sync` them (135M parameters: 0.54 GB).
Prints the median seconds of each and checks that both settings sampled the same rollouts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model_dir: str, replicas: int, args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlaif.backends.base import BackendConfig
    from rlaif.io.records import read_prompts
    from rlaif.train.online.rollouts import RolloutEngine

    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    demo = [p.messages for p in read_prompts(str(ROOT / "prompts" / "demo.jsonl"), "prompt")]
    start = time.perf_counter()
    engine = RolloutEngine("vllm", model_dir, tok, max_prompt_length=256, backend_options=BackendConfig(
        replicas=replicas, gpu_memory_utilization=0.1, max_model_len=512))
    load_s = time.perf_counter() - start
    prompts = [engine.prompt_ids(demo[i % len(demo)]) for i in range(args.prompts)]
    kw = dict(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    try:
        first = engine.generate(prompts, args.k, seed=0, **kw)  # warm-up, and the rollouts compared
        gen, sync, tokens = [], [], []
        for r in range(args.rounds):
            t = time.perf_counter()
            out = engine.generate(prompts, args.k, seed=r + 1, **kw)
            gen.append(time.perf_counter() - t)
            tokens.append(sum(len(x.completion_ids) for x in out))
            with torch.no_grad():
                for p in trainer.parameters():
                    p.mul_(1 + 1e-4)
            sync.append(engine.sync(trainer))
        return {"replicas": replicas, "load_s": load_s, "generate_s": statistics.median(gen),
                "tokens": statistics.median(tokens), "sync_s": statistics.median(sync),
                "ids": [x.completion_ids for x in first]}
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from rlaif.models import resolve_model

    model_dir = resolve_model("smollm2-135m")
    rows = [measure(model_dir, 1, args), measure(model_dir, args.replicas, args)]
    print(f"{args.prompts} prompts x k={args.k}, max_tokens={args.max_tokens}, median of {args.rounds} rounds; "
          f"same rollouts: {rows[0]['ids'] == rows[1]['ids']}")
    print("replicas | engine start s | rollout s | tokens/s | sync s (135M fp32)")
    for r in rows:
        print(f"{r['replicas']:>8} | {r['load_s']:>14.1f} | {r['generate_s']:>9.2f} | "
              f"{r['tokens'] / r['generate_s']:>8.0f} | {r['sync_s']:>6.2f}")


if __name__ == "__main__":
    main()
