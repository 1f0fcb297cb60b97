"""Generated tokens/s: raw vLLM ``LLM.chat`` vs rlaif's vllm engine vs rlaif's hf engine.

Usage:
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/backends.py [--prompts 24] [--n 4]
        [--max-tokens 64] [--rounds 3] [--hf-prompts 24] [--gpu-memory-utilization 0.2]

Same prompts, model (the embedded SmolLM2-135M-Instruct unless --model), sampling settings and
seed for every engine. Raw vLLM and rlaif's vllm engine share ONE ``vllm.LLM`` (rlaif's engine
wraps it), run alternately after a warm-up round, so the ratio is not skewed by two engines
competing for the cores. rlaif's engine is timed twice: one seed for the batch (one
SamplingParams, like the raw call) and one seed per conversation (a list of SamplingParams, what
the pipeline uses). The hf engine runs last, once, after the vLLM engine is shut down.
"""

from __future__ import annotations

import argparse
import statistics
import time

TOPICS = [
    "why the sky is blue", "how a bicycle stays upright", "the water cycle", "what a hash table is",
    "how vaccines work", "the causes of the French Revolution", "how to make bread", "what entropy means",
    "how compound interest works", "why cats purr", "how a rainbow forms", "what a neural network is",
    "how bees make honey", "the rules of chess", "how airplanes fly", "what photosynthesis does",
    "how to tie a tie", "why we sleep", "how a refrigerator works", "what inflation is",
    "how tides happen", "the life of a star", "how email gets delivered", "why leaves change colour",
]


def conversations(k: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} to a curious teenager."}]
            for i in range(k)]


def timed(fn):  # -> (seconds, result)
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hf-prompts", type=int, default=24, help="prompts for the (slow) hf engine; 0 skips it")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    args = ap.parse_args()

    import vllm

    from rlaif.backends.base import BackendConfig, SamplingParams
    from rlaif.backends.vllm import VLLMBackend, build_llm

    convs = conversations(args.prompts)
    params = SamplingParams(n=args.n, temperature=0.8, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    cfg = BackendConfig(engine="vllm", model=args.model, gpu_memory_utilization=args.gpu_memory_utilization,
                        max_model_len=2048)
    load_s, llm = timed(lambda: build_llm(cfg))
    engine = VLLMBackend(cfg, llm=llm)
    raw_params = vllm.SamplingParams(n=args.n, temperature=0.8, top_p=1.0, max_tokens=args.max_tokens, seed=0)

    def raw() -> int:
        outs = llm.chat(convs, raw_params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs)

    def ours(seeds: list[int] | None) -> int:
        gens = engine.chat(convs, params, seeds=seeds, progress=False)
        return sum(c.num_tokens for g in gens for c in g.completions)

    runs = {
        "raw vLLM LLM.chat": raw,
        "rlaif vllm (one seed)": lambda: ours(None),
        "rlaif vllm (per-conversation seeds)": lambda: ours(list(range(len(convs)))),
    }
    for name, fn in runs.items():  # warm-up
        seconds, tokens = timed(fn)
        print(f"warm-up {name}: {tokens} tokens in {seconds:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            llm.reset_prefix_cache()  # every run starts cold, as the raw call would
            seconds, tokens = timed(fn)
            rates[name].append(tokens / seconds)
            print(f"{name}: {tokens} tokens in {seconds:.1f} s", flush=True)
    engine.close()

    results = {name: statistics.median(r) for name, r in rates.items()}
    if args.hf_prompts:
        from rlaif.backends.hf import HFBackend

        hf = HFBackend(BackendConfig(engine="hf", model=args.model, batch_size=32))
        hf_convs = convs[: args.hf_prompts]
        seconds, gens = timed(lambda: hf.chat(hf_convs, params, progress=False))
        results[f"rlaif hf ({len(hf_convs)} prompts, 1 run)"] = sum(
            c.num_tokens for g in gens for c in g.completions) / seconds

    base = results["raw vLLM LLM.chat"]
    print(f"\n{args.prompts} prompts x n={args.n}, {args.max_tokens} new tokens max, temperature 0.8, "
          f"model {args.model}; vLLM load {load_s:.0f} s; median of {args.rounds} rounds\n")
    print(f"| engine | generated tokens/s | vs raw vLLM |\n|---|---:|---:|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
