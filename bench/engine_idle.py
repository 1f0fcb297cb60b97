"""vLLM on CPU: generation time, and the CPU its processes burn after a call (the idle spin).

One engine on the embedded model (fp32, eager), 16 prompts x 32 sampled tokens per call, ``--reps``
calls; after each call the script sleeps 2 s and reports the CPU time each of the engine's processes
used meanwhile (a reader of vLLM's shared-memory queues spins for ``busy_loop_s`` = 1 s after each read).
Engine settings come from the environment, so compare runs of this script, e.g.::

    .venv/bin/python bench/engine_idle.py                                   # vLLM's default: 1 core reserved
    VLLM_CPU_NUM_OF_RESERVED_CPU=0 .venv/bin/python bench/engine_idle.py    # OMP threads on every core
    .venv/bin/python bench/engine_idle.py --load 2                          # beside 2 busy processes
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time


def _busy() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="generate calls (the first is warm-up)")
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes beside the engine")
    args = parser.parse_args()

    import psutil
    from vllm import LLM, SamplingParams

    from rlaif.models import resolve_model

    burners = [multiprocessing.get_context("spawn").Process(target=_busy, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    try:
        llm = LLM(model=resolve_model("smollm2-135m"), dtype="float32", max_model_len=1024, seed=0,
                  kv_cache_memory_bytes=1 << 30, enforce_eager=True)
        prompts = [f"Write a short note about topic {i}." for i in range(16)]
        params = SamplingParams(max_tokens=32, temperature=1.0, ignore_eos=True)
        me, times = psutil.Process(), []
        burner_pids = {b.pid for b in burners}
        for rep in range(args.reps):
            t = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            times.append(time.perf_counter() - t)
            kids = [p for p in me.children(recursive=True) if p.pid not in burner_pids]
            before = {p.pid: sum(p.cpu_times()[:2]) for p in kids}
            time.sleep(2.0)
            after = ", ".join(f"{p.name()} {sum(p.cpu_times()[:2]) - before[p.pid]:.2f}" for p in kids)
            print(f"call {rep}: generate {times[-1]:.2f} s; CPU s in the 2 s after: {after}", flush=True)
        print(f"median generate (after the first): {statistics.median(times[1:] or times):.2f} s")
    finally:
        for b in burners:
            b.terminate()


if __name__ == "__main__":
    main()
