"""Online RL rollouts on Ray replicas (`RolloutEngine` with ``replicas`` > 1): weight-sync time and
rollout time with one in-process vLLM engine and with N replicas, on the embedded model.

Usage:
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/online_pool.py [--replicas 2] [--prompts 16] [--k 4]
        [--max-tokens 32] [--rounds 3]
    .venv/bin/python bench/online_pool.py --transfer [--rounds 3]

For each setting (1 = in process, then ``--replicas``), started fresh: ``--rounds`` times, sample
``--k`` completions of ``--prompts`` demo prompts (``--max-tokens`` each, one warm-up round first),
then change the trainer's float32 weights a little and `sync` them (135M parameters: 0.54 GB).
Prints the median seconds of each and checks that both settings sampled the same rollouts.

``--transfer``: only the object-store part of a sync, without engines: 272 float32 tensors of
0.54 GB in all (as many bytes as the 135M model) put once and fetched by 2 Ray actors, as torch
tensors (pickled) and as the pool sends them (numpy bytes, mapped without a copy); settings
alternated, median seconds of put + both fetches.
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


def _fetch(refs: list, as_bytes: bool) -> float:
    import ray
    import torch

    data = ray.get(refs[0])
    if as_bytes:
        data = [(n, torch.from_numpy(a).view(getattr(torch, d)).view(s)) for n, d, s, a in data]
    return float(sum(t.reshape(-1)[0] for _, t in data))


def transfer(rounds: int) -> None:
    import ray
    import torch

    from rlaif.backends.pool import _as_bytes

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    fetch = ray.remote(num_cpus=1)(_fetch)
    tensors = [(f"w{i}", torch.randn(496_000)) for i in range(272)]
    times: dict[str, list[float]] = {"torch": [], "numpy bytes": []}
    for _ in range(rounds):
        for name in times:
            start = time.perf_counter()
            obj = [_as_bytes(n, t) for n, t in tensors] if name != "torch" else tensors
            ref = ray.put(obj)
            ray.get([fetch.remote([ref], name != "torch") for _ in range(2)])
            times[name].append(time.perf_counter() - start)
            del ref, obj
    ray.shutdown()
    for name, ts in times.items():
        print(f"{name:>12}: put + 2 fetches {statistics.median(ts):.2f} s (median of {rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transfer", action="store_true", help="only the object-store part of a sync")
    args = parser.parse_args()
    if args.transfer:
        return transfer(args.rounds)
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
