"""vLLM CPU thread settings for judging: candidates/s of one-token logprob judging and of likelihood
judging on the same candidates (and generated tokens/s), one engine per setting, settings
alternated round by round.

Usage:
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/judge_threads.py [--rounds 2]
        [--configs default,reserved0,nobind] [--pairs bench/data/judge_pairs.jsonl] [--quality]

Settings (environment of the engine's process, read by vLLM when the engine starts):
    default    vLLM's own: VLLM_CPU_OMP_THREADS_BIND=auto, one core reserved for the scheduler
               (on 2 cores: one OMP thread)
    reserved0  VLLM_CPU_NUM_OF_RESERVED_CPU=0: OMP threads on every core
    nobind     VLLM_CPU_OMP_THREADS_BIND=nobind: no pinning, torch's default thread count
Each setting runs in a fresh child process (one engine alive at a time), with a fixed KV cache
(--kv-cache-bytes) so the start does not depend on free RAM. The candidates are the labelled
pairs' better/worse responses (two per prompt). ``--quality`` also prints how often likelihood
variants score the better response higher (default setting only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {"default": {}, "reserved0": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
           "nobind": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}}
LIKELIHOOD = "name: {name}\ndescription: d\nmethod: likelihood\n{extra}template: |\n  {{{{ prompt }}}}\n"


def _items(path: str):
    from rlaif.judging.judge import JudgeItem

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [JudgeItem(r["id"], [{"role": "user", "content": r["prompt"]}], [r["better"], r["worse"]]) for r in rows]


def _rubric(tmp: Path, name: str, extra: str = ""):
    from rlaif.judging.rubrics import rubric_from_file

    path = tmp / f"{name}.yaml"
    path.write_text(LIKELIHOOD.format(name=name, extra=extra))
    return rubric_from_file(path)


def child(args: argparse.Namespace) -> None:
    import tempfile

    import vllm

    from rlaif.backends.base import BackendConfig, SamplingParams
    from rlaif.backends.vllm import VLLMBackend
    from rlaif.judging.judge import judge_items
    from rlaif.judging.rubrics import load_rubric

    real = vllm.LLM
    vllm.LLM = lambda **kw: real(**kw, kv_cache_memory_bytes=args.kv_cache_bytes)  # type: ignore[misc]
    start = time.perf_counter()
    backend = VLLMBackend(BackendConfig(engine="vllm", model=args.model, max_model_len=2048))
    load = time.perf_counter() - start
    items = _items(args.pairs)
    n = sum(len(it.responses) for it in items)
    tmp = Path(tempfile.mkdtemp())
    logprob, likelihood = load_rubric("helpfulness"), _rubric(tmp, "lik")
    judge_items(backend, logprob, items[:4], progress=False)  # warm-up
    judge_items(backend, likelihood, items[:4], progress=False)
    out = {"config": args.child, "load_s": round(load, 1), "candidates": n}
    for name, rubric in (("logprob", logprob), ("likelihood", likelihood)):
        backend.llm.reset_prefix_cache()
        t = time.perf_counter()
        judge_items(backend, rubric, items, progress=False)
        out[f"{name}_cand_per_s"] = round(n / (time.perf_counter() - t), 2)
    convs = [it.messages for it in items[:24]]  # generation: 24 prompts x 4 samples x 64 new tokens
    t = time.perf_counter()
    gens = backend.chat(convs, SamplingParams(n=4, temperature=1.0, max_tokens=64, seed=0), progress=False)
    out["generate_tok_per_s"] = round(sum(c.num_tokens for g in gens for c in g.completions)
                                      / (time.perf_counter() - t), 1)
    if args.quality:
        variants = {"likelihood": likelihood,
                    "likelihood+system": _rubric(tmp, "sys", "system: You are a careful assistant. Answer "
                                                              "correctly, directly and briefly.\n"),
                    "likelihood+contrast": _rubric(tmp, "con", "contrast: true\n"), "logprob helpfulness": logprob}
        for name, rubric in variants.items():
            rows = judge_items(backend, rubric, items, progress=False)
            wins = sum(r["scores"][0] is not None and r["scores"][1] is not None and r["scores"][0] > r["scores"][1]
                       for r in rows)
            out[f"agree {name}"] = f"{wins}/{len(rows)}"
    backend.close()
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--configs", default="default,reserved0,nobind")
    ap.add_argument("--pairs", default="bench/data/judge_pairs.jsonl")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kv-cache-bytes", type=int, default=384 * 2**20)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    results: dict[str, list[dict]] = {c: [] for c in args.configs.split(",")}
    for k in range(args.rounds):
        for config in results:
            env = {key: v for key, v in os.environ.items() if not key.startswith("VLLM_CPU_")} | CONFIGS[config]
            cmd = [sys.executable, __file__, "--child", config, "--pairs", args.pairs, "--model", args.model,
                   "--kv-cache-bytes", str(args.kv_cache_bytes)] + (["--quality"] if args.quality and k == 0
                                                               and config == "default" else [])
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{config}: the child failed (rc {proc.returncode})")
            results[config].append(json.loads(line[7:]))
            print(f"round {k + 1} {config}: {results[config][-1]}", flush=True)
    base = results[next(iter(results))]
    for config, runs in results.items():
        for what in ("logprob_cand_per_s", "likelihood_cand_per_s", "generate_tok_per_s"):
            mine = statistics.median(r[what] for r in runs)
            ref = statistics.median(r[what] for r in base)
            print(f"{config:10s} {what:22s} {mine:7.2f}  x{mine / ref:.2f} vs {next(iter(results))} "
                  f"(runs: {[r[what] for r in runs]})")


if __name__ == "__main__":
    main()
