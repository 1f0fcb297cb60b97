"""Prompts x policy -> candidates: ``n`` sampled responses per prompt, written row by row.

Each prompt is sampled with its own seed, derived from (run seed, prompt id), and prompts are
sent to the engine in fixed chunks of the input order. A chunk's results are appended to the
stage file as soon as the engine returns them, so a killed run resumes at the first unfinished
chunk and reproduces exactly the rows an uninterrupted run would have written.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Iterable, Iterator, Sequence

from tqdm import tqdm

from rlaif.backends.base import Backend, SamplingParams
from rlaif.errors import UserError
from rlaif.io.records import Prompt
from rlaif.io.seeds import prompt_seed
from rlaif.io.store import StageFile
from rlaif.backends.chunking import map_chunks, take_chunks, token_chunks


def context_limit(model_dir: str, max_model_len: int | None) -> int:
    """The usable context: ``max_model_len`` capped by the model's ``max_position_embeddings``."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
    if max_model_len and limit:
        return min(max_model_len, limit)
    return int(max_model_len or limit or 2048)


def check_prompt_lengths(prompts: Iterable[Prompt], model_dir: str, max_model_len: int | None,
                         max_tokens: int) -> list[int]:
    """Count each prompt's tokens with the model's chat template; a prompt that does not fit the
    context is a UserError naming its file and line. Returns the token counts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    limit = context_limit(model_dir, max_model_len)
    counts = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        n = len(ids)
        if n + 1 > limit:
            raise UserError(f"{p.source}: field 'prompt': {n} tokens, longer than the model's context "
                            f"({limit} tokens; raise policy.max_model_len if the model allows more)")
        counts.append(n)
    return counts


def _chat_chunk(backend: Backend, conversations: list, params: SamplingParams, seeds: list[int],
                progress: bool) -> list:
    """One chunk's engine call (run here, or on a pool replica). The engine's own bar shows
    progress and tokens/s inside a chunk."""
    return backend.chat(conversations, params, seeds=seeds, progress=progress)


def generate_candidates(backend: Backend, prompts: Iterable[Prompt], params: SamplingParams, seed: int,
                        stage: StageFile, chunk_size: int = 64, progress: bool = True,
                        prompt_tokens: Sequence[int] | None = None, chunk_tokens: int = 32768,
                        total: int | None = None) -> dict[str, Any]:
    """Sample candidates for every prompt not yet in ``stage``; append each finished row.

    ``prompts`` is read once, chunk by chunk (a chunk is held, not the file). With ``prompt_tokens``
    (counted by `check_prompt_lengths`) a chunk also stays within ``chunk_tokens`` prompt tokens x n
    (see `token_chunks`). ``total``: the number of prompts, for the progress bar. Returns stats: rows
    generated now, rows found from an earlier run, tokens, seconds.
    """
    if isinstance(prompts, Sequence):
        total = len(prompts)
    done_before = len(stage.rows)
    bar = tqdm(total=total, initial=done_before, unit="prompt", desc="generate", disable=not progress,
               dynamic_ncols=True)
    tokens = 0
    generated = 0
    start = time.perf_counter()
    blocks = (token_chunks(prompt_tokens, params.n, chunk_size, chunk_tokens) if prompt_tokens is not None
              else None)
    sent: deque[list[Prompt]] = deque()  # chunks sent to the engine whose rows are not saved yet

    def calls() -> Iterator[tuple]:
        # The whole chunk is re-sent (not just its missing rows) so the engine sees the same batch.
        for batch in take_chunks(prompts, chunk_size, blocks):
            if all(stage.done(p.id) for p in batch):
                continue
            sent.append(batch)
            yield [p.messages for p in batch], params, [prompt_seed(seed, p.id) for p in batch], progress

    for outputs in map_chunks(backend, _chat_chunk, calls()):
        batch = sent.popleft()
        todo = [p for p in batch if not stage.done(p.id)]
        for p, gen in zip(batch, outputs):
            if stage.done(p.id):
                continue
            comps = gen.completions
            stage.append({
                "id": p.id, "messages": p.messages, "responses": [c.text for c in comps],
                "num_tokens": [c.num_tokens for c in comps], "finish_reasons": [c.finish_reason for c in comps],
                "policy": backend.model_id, "seed": prompt_seed(seed, p.id), "metadata": p.metadata,
            })
            tokens += sum(c.num_tokens for c in comps)
            generated += 1
        elapsed = time.perf_counter() - start
        bar.update(len(todo))
        bar.set_postfix_str(f"{tokens / max(elapsed, 1e-9):.0f} tok/s")
    bar.close()
    elapsed = time.perf_counter() - start
    return {"generated": generated, "resumed": done_before, "tokens": tokens,
            "seconds": round(elapsed, 3), "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None}
