"""Seeds derived from content, so a row's randomness never depends on its batch or order."""

from __future__ import annotations

import hashlib


def prompt_seed(seed: int, prompt_id: str) -> int:
    """Seed for one prompt: 31 bits of sha256("{seed}:{id}"), independent of batch and order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "big") >> 1
