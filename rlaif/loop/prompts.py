"""Which prompts each round trains on, and the held-out eval prompts that no round ever sees.

Eval split: the ``eval_prompts`` file, or (without one) the ``eval_size`` prompts of the prompt
file that come first in a seeded order. Training pool: the rest of the prompt file, minus every
prompt whose messages equal an eval prompt's.

Round slices: epoch e of the pool is the pool sorted by ``stable_seed(seed, "loop-prompts", e, id)``;
the epochs are laid end to end and round K (1-based) takes positions
``[(K-1) * prompts_per_round, K * prompts_per_round)`` of that sequence. A round's prompts thus
depend only on (seed, pool, prompts_per_round, K), never on how many rounds are run, and every
prompt is used once before any is reused (a round that spans two epochs skips a prompt it already holds).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.errors import UserError
from rlaif.io.records import Prompt, read_prompts
from rlaif.io.seeds import stable_seed
from rlaif.io.store import atomic_write_text


def split_prompts(prompts_file: str, eval_file: str, eval_size: int, seed: int,
                  column: str = "prompt") -> tuple[list[Prompt], list[Prompt]]:
    """(training pool, eval prompts); raises UserError when either would be empty."""
    prompts = read_prompts(prompts_file, column)
    if eval_file:
        evals = read_prompts(eval_file, column)
        held = {json.dumps(p.messages, sort_keys=True) for p in evals}
        pool = [p for p in prompts if json.dumps(p.messages, sort_keys=True) not in held]
    else:
        order = sorted(prompts, key=lambda p: (stable_seed(seed, "loop-eval", p.id), p.id))
        evals, held_ids = order[:eval_size], {p.id for p in order[:eval_size]}
        pool = [p for p in prompts if p.id not in held_ids]
    if not evals:
        raise UserError(f"option 'eval_prompts': no eval prompts in {eval_file or prompts_file}")
    if not pool:
        raise UserError(f"option 'prompts': {prompts_file}: no training prompts left after holding out "
                        f"{len(evals)} eval prompts")
    return pool, evals


def round_prompts(pool: list[Prompt], seed: int, per_round: int, round_no: int) -> list[Prompt]:
    """The ``per_round`` prompts of round ``round_no`` (1-based); see the module docstring."""
    if per_round > len(pool):
        raise UserError(f"option 'prompts_per_round': {per_round} is more than the {len(pool)} training prompts")
    start = (round_no - 1) * per_round
    out: list[Prompt] = []
    epoch = start // len(pool)
    offset = start % len(pool)
    while len(out) < per_round:
        order = sorted(pool, key=lambda p: (stable_seed(seed, "loop-prompts", epoch, p.id), p.id))
        taken = {p.id for p in out}  # across an epoch boundary: a prompt at most once per round
        out += [p for p in order[offset:offset + per_round - len(out)] if p.id not in taken]
        epoch, offset = epoch + 1, 0
    return out


def write_prompts(path: Path, prompts: list[Prompt]) -> None:
    """Atomically write prompts as JSONL ``{"id", "messages", **metadata}`` (read back with column "prompt")."""
    lines = [json.dumps({"id": p.id, "messages": p.messages, **p.metadata}, ensure_ascii=False) + "\n"
             for p in prompts]
    atomic_write_text(path, "".join(lines))
