"""Generated tokens/s: raw vLLM ``LLM.chat`` vs rlaif's vllm engine; plain ``model.generate`` vs rlaif's hf engine.

Usage:
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/backends.py [--prompts 24] [--n 4]
        [--max-tokens 64] [--rounds 3] [--hf-prompts 24] [--hf-batch-size 32] [--skip-vllm]
        [--gpu-memory-utilization 0.2]

Same prompts, model (the embedded SmolLM2-135M-Instruct unless --model), sampling settings and
seed for every engine. Raw vLLM and rlaif's vllm engine share ONE ``vllm.LLM`` (rlaif's engine
wraps it), run alternately after a warm-up round, so the ratio is not skewed by two engines
competing for the cores. rlaif's engine is timed twice: one seed for the batch (one
SamplingParams, like the raw call) and one seed per conversation (a list of SamplingParams, what
the pipeline uses).

The hf engine runs after the vLLM engine is shut down, against plain transformers
``model.generate`` on the SAME model object, the same rows (``--hf-prompts`` prompts x n) in the
same batches (``--hf-batch-size`` rows: ``batch_size // n`` prompts per ``generate`` call with
``num_return_sequences=n``, prompts sorted by length as rlaif does), alternating after a warm-up
round. Tokens count up to and including the first EOS (what rlaif reports); ``generate`` keeps
stepping a batch until all its rows are done or at ``max_new_tokens``.
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


def cpu_timed(fn):  # -> (wall seconds, this process's CPU seconds, result)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hf-prompts", type=int, default=24, help="prompts for the hf engine; 0 skips it")
    ap.add_argument("--hf-batch-size", type=int, default=32, help="rows per hf batch (rlaif and plain generate)")
    ap.add_argument("--hf-dtype", default="auto", help="hf weights dtype (auto: bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--skip-vllm", action="store_true", help="only the hf half")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for the hf half (0: torch's default)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    ap.add_argument("--block-size", type=int, help="vLLM KV-cache block size (default: rlaif's, 32 on CPU)")
    args = ap.parse_args()

    convs = conversations(args.prompts)
    results: dict[str, tuple[float, float | None]] = {}  # name -> (tokens/s, tokens per CPU second)
    if not args.skip_vllm:
        results.update({name: (rate, None) for name, rate in vllm_half(args, convs).items()})
    if args.hf_prompts:
        results.update(hf_half(args, convs[: args.hf_prompts]))
    print(f"\n{args.prompts} prompts (hf: {args.hf_prompts}) x n={args.n}, {args.max_tokens} new tokens max, "
          f"temperature 0.8, model {args.model}; median of {args.rounds} rounds\n")
    print("| engine | generated tokens/s | vs its baseline | tokens per CPU second | vs its baseline |\n"
          "|---|---:|---:|---:|---:|")
    base: tuple[float, float | None] = (1.0, None)
    for name, (rate, per_cpu) in results.items():
        if name.startswith(("raw", "plain")):
            base = (rate, per_cpu)
        cpu = "- | -" if per_cpu is None or base[1] is None else f"{per_cpu:.1f} | {per_cpu / base[1]:.2f}x"
        print(f"| {name} | {rate:.1f} | {rate / base[0]:.2f}x | {cpu} |")


def vllm_half(args: argparse.Namespace, convs: list) -> dict[str, float]:
    import vllm

    from rlaif.backends.base import BackendConfig, SamplingParams
    from rlaif.backends.vllm import VLLMBackend, build_llm

    params = SamplingParams(n=args.n, temperature=0.8, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    cfg = BackendConfig(engine="vllm", model=args.model, gpu_memory_utilization=args.gpu_memory_utilization,
                        max_model_len=2048, block_size=args.block_size)
    load_s, llm = timed(lambda: build_llm(cfg))
    print(f"vLLM load {load_s:.0f} s", flush=True)
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
    rates = alternate(runs, args.rounds, before_each=llm.reset_prefix_cache)  # every run starts cold
    engine.close()
    return {name: wall for name, (wall, _) in rates.items()}


def hf_half(args: argparse.Namespace, convs: list) -> dict[str, tuple[float, float]]:
    import torch

    from rlaif.backends.base import BackendConfig, SamplingParams
    from rlaif.backends.choices import render_prompt
    from rlaif.backends.hf import HFBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    hf = HFBackend(BackendConfig(engine="hf", model=args.model, batch_size=args.hf_batch_size, dtype=args.hf_dtype))
    params = SamplingParams(n=args.n, temperature=0.8, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    tok, model = hf.tokenizer, hf.model
    prompts = sorted((tok.encode(render_prompt(tok, c), add_special_tokens=False) for c in convs), key=len,
                     reverse=True)
    per_call = max(1, args.hf_batch_size // args.n)
    eos = torch.tensor(sorted(hf.eos_ids), device=hf.device)

    def plain() -> int:
        torch.manual_seed(0)
        tokens = 0
        for i in range(0, len(prompts), per_call):
            chunk = prompts[i:i + per_call]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[hf.pad_id] * (width - len(p)) + p for p in chunk], device=hf.device)
            mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in chunk]).unsqueeze(-1)).long()
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask.to(hf.device), do_sample=True,
                                     temperature=0.8, top_p=1.0, top_k=0, max_new_tokens=args.max_tokens,
                                     num_return_sequences=args.n, pad_token_id=hf.pad_id,
                                     eos_token_id=sorted(hf.eos_ids))[:, width:]
            done = torch.isin(out, eos)  # length = up to and including the first EOS
            length = torch.where(done.any(-1), done.long().argmax(-1) + 1, out.shape[1])
            tokens += int(length.sum())
        return tokens

    def ours() -> int:
        gens = hf.chat(convs, params, progress=False)
        return sum(c.num_tokens for g in gens for c in g.completions)

    rates = alternate({"plain transformers model.generate": plain, "rlaif hf": ours}, args.rounds)
    where = f"{hf.device.type}, {str(model.dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads"
    return {f"{name} ({len(convs)} prompts, batch {args.hf_batch_size} rows, {where})": r
            for name, r in rates.items()}


def alternate(runs: dict, rounds: int, before_each=None) -> dict[str, tuple[float, float]]:
    """A warm-up run of each, then ``rounds`` rounds alternating them; per run the median
    tokens/s (wall clock) and the median tokens per CPU second of this process (steadier than
    wall time on a shared machine, for work done in this process: the hf half)."""
    for name, fn in runs.items():
        seconds, cpu, tokens = cpu_timed(fn)
        print(f"warm-up {name}: {tokens} tokens in {seconds:.1f} s ({cpu:.1f} CPU s)", flush=True)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            if before_each is not None:
                before_each()
            seconds, cpu, tokens = cpu_timed(fn)
            rates[name].append((tokens / seconds, tokens / max(cpu, 1e-9)))
            print(f"{name}: {tokens} tokens in {seconds:.1f} s ({cpu:.1f} CPU s)", flush=True)
    return {name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for name, r in rates.items()}


if __name__ == "__main__":
    main()
