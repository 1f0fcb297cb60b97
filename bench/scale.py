"""The Ray inference pool (`rlaif.backends.pool`): dispatch overhead per chunk, and real generation
throughput with 1 and 2 vLLM replicas against one in-process engine.

Usage:
    .venv/bin/python bench/scale.py overhead [--prompts 400] [--rounds 3]
    flock /tmp/rlaif-heavy.lock .venv/bin/python bench/scale.py vllm [--prompts 24] [--n 2] [--max-tokens 64]

``overhead``: `generate_candidates` over ``--prompts`` prompts in chunks of one prompt with the fake
engine (microseconds of work per chunk): in process, and on a pool of 1 and 2 replicas; the
difference per chunk is what Ray adds (task submit, pickling the chunk and its result, ray.wait).
Then the same with a fake engine that takes ``--work-ms`` per chunk, where 2 replicas should take
about half the time of one: the pool's scaling with the engine work dominating.

``vllm``: the embedded model, ``--prompts`` demo prompts x ``--n`` samples of up to ``--max-tokens``
tokens, chunk of ``--chunk-size`` prompts: one in-process vLLM engine, then a pool of 1 and of 2
replicas (each replica a vLLM engine in its own Ray actor); generated tokens/s over the timed
generation (engine start-up reported apart). Each setting is started fresh; at most two engines
alive at once (the 2-replica pool).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _prompts(n: int):
    from rlaif.io.records import read_prompts

    prompts = read_prompts(str(ROOT / "prompts" / "demo.jsonl"), "prompt")
    return [dataclasses.replace(prompts[i % len(prompts)], id=f"p{i}") for i in range(n)]


def _generate(backend, prompts, params, chunk_size: int) -> tuple[float, int]:
    from rlaif.dataset.generate import generate_candidates
    from rlaif.io.store import StageFile

    with tempfile.TemporaryDirectory() as tmp:
        stage = StageFile(Path(tmp), "candidates", key_fn=lambda r: r["id"])
        stage.load()
        start = time.perf_counter()
        stats = generate_candidates(backend, prompts, params, 0, stage, chunk_size=chunk_size, progress=False)
        return time.perf_counter() - start, stats["tokens"]


class _Working:
    """A fake engine taking ``work_s`` per call (stands for a model's compute)."""

    def __init__(self, config, work_s: float) -> None:
        from rlaif.backends.fake import FakeBackend

        self.inner, self.work_s, self.model_id = FakeBackend(config), work_s, "fake-working"

    def chat(self, *args, **kwargs):
        time.sleep(self.work_s)
        return self.inner.chat(*args, **kwargs)

    def close(self) -> None:
        pass


def overhead(args: argparse.Namespace) -> None:
    import functools

    import ray

    from rlaif.backends import load_backend
    from rlaif.backends.base import BackendConfig, SamplingParams
    from rlaif.backends.pool import EnginePool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    import scale  # noqa: F401 - the actors import this module by name

    prompts = _prompts(args.prompts)
    params = SamplingParams(n=2, max_tokens=16)
    fake = BackendConfig(engine="fake")
    work = functools.partial(scale._Working, work_s=args.work_ms / 1000)
    settings = {"in-process": lambda: load_backend(fake),
                "pool x1": lambda: EnginePool(BackendConfig(engine="fake", replicas=1), load_backend),
                "pool x2": lambda: EnginePool(BackendConfig(engine="fake", replicas=2), load_backend),
                f"in-process, {args.work_ms:g} ms/chunk": lambda: work(fake),
                f"pool x1, {args.work_ms:g} ms/chunk": lambda: EnginePool(BackendConfig(engine="fake", replicas=1),
                                                                          work),
                f"pool x2, {args.work_ms:g} ms/chunk": lambda: EnginePool(BackendConfig(engine="fake", replicas=2),
                                                                          work)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.rounds):  # settings alternated round by round
        for name, make in settings.items():
            backend = make()
            seconds, _ = _generate(backend, prompts if "ms/chunk" not in name else prompts[:args.work_prompts],
                                   params, 1)
            backend.close()
            times[name].append(seconds)
    ray.shutdown()
    print(f"{args.prompts} chunks of 1 prompt x n=2 (fake engine); work rows: {args.work_prompts} chunks; "
          f"median of {args.rounds} rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        working = "ms/chunk" in name
        chunks = args.work_prompts if working else args.prompts
        base = statistics.median(times[f"in-process, {args.work_ms:g} ms/chunk" if working else "in-process"])
        print(f"  {name:28s} {med:7.3f} s  {med / chunks * 1000:6.2f} ms/chunk  "
              f"{(med - base) / chunks * 1000:+6.2f} ms/chunk, {base / med:4.2f}x the speed of in-process")


def vllm(args: argparse.Namespace) -> None:
    from rlaif.backends import load_backend
    from rlaif.backends.base import BackendConfig, SamplingParams

    prompts = _prompts(args.prompts)
    params = SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=0.8)
    base = BackendConfig(engine="vllm", gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=1024)
    rows = []
    for name, replicas in (("in-process", 1), ("pool x1", 1), ("pool x2", 2)):
        start = time.perf_counter()
        if name == "in-process":
            backend = load_backend(base)
        else:
            from rlaif.backends.pool import EnginePool

            cfg = BackendConfig(**{**base.__dict__, "replicas": replicas})
            backend = EnginePool(cfg, load_backend)
        startup = time.perf_counter() - start
        seconds, tokens = _generate(backend, prompts, params, args.chunk_size)
        backend.close()
        rows.append((name, startup, seconds, tokens))
        print(f"  {name:12s} start {startup:6.1f} s  generate {seconds:6.1f} s  {tokens} tokens  "
              f"{tokens / seconds:7.1f} tok/s", flush=True)
    ref = rows[0][3] / rows[0][2]
    print(f"{args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, chunk_size={args.chunk_size}")
    for name, _, seconds, tokens in rows:
        print(f"  {name:12s} {tokens / seconds / ref:5.2f}x the in-process tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--prompts", type=int, default=400)
    o.add_argument("--work-ms", type=float, default=50.0)
    o.add_argument("--work-prompts", type=int, default=40)
    o.add_argument("--rounds", type=int, default=3)
    v = sub.add_parser("vllm")
    v.add_argument("--prompts", type=int, default=24)
    v.add_argument("--n", type=int, default=2)
    v.add_argument("--max-tokens", type=int, default=64)
    v.add_argument("--chunk-size", type=int, default=4)
    v.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    args = ap.parse_args()
    overhead(args) if args.part == "overhead" else vllm(args)


if __name__ == "__main__":
    main()
