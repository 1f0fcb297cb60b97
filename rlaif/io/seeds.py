"""Seeds derived from content, so a row's randomness never depends on its batch or order.

Every seed in rlaif comes from here: a sha256 digest of the row's identity (run seed, ids,
indices), or splitmix64 where an engine derives per-sample seeds by adding the sample index.
"""

from __future__ import annotations

import hashlib


def digest_int(text: str, nbytes: int) -> int:
    """The first ``nbytes`` bytes of sha256(text) as a big-endian integer."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:nbytes], "big")


def prompt_seed(seed: int, prompt_id: str) -> int:
    """Seed for one prompt: 31 bits of sha256("{seed}:{id}"), independent of batch and order."""
    return digest_int(f"{seed}:{prompt_id}", 4) >> 1


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from (run seed, item id, index...): independent of batch composition."""
    return digest_int(repr(parts), 4) & 0x7FFFFFFF


def mix_seed(seed: int) -> int:
    """Spread a user seed over 62 bits (splitmix64), so per-sample seeds ``mix(s) + k`` of
    neighbouring conversation seeds ``s, s+1`` never overlap (vLLM seeds sample k with seed + k)."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 2
