"""Statistics of a benchmark: accuracy with its Wilson interval, and the paired difference of two models.

Accuracy p = k / n with the 95% Wilson score interval (Wilson 1927), which stays inside [0, 1] and
is sensible at k = 0 or k = n::

    centre = (p + z^2 / 2n) / (1 + z^2 / n),   half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

Paired difference of A and B on the same items: d_i = a_i - b_i in {-1, 0, 1}; its mean is
acc_A - acc_B, and the 95% interval is the normal one on the mean of the per-item differences,
``mean(d) +- z * sd(d) / sqrt(n)`` (sample sd; the paired t/Wald interval; McNemar's discordant counts
are reported beside it). Pairing removes the between-item variance two separate intervals would count.
"""

from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95% Wilson score interval of k successes in n trials (None when n = 0)."""
    if n <= 0:
        return None
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> dict[str, float | int | list | None]:
    """acc_A - acc_B over the same items, with the normal 95% interval on the mean per-item difference and
    McNemar's discordant counts (``a_only``: A right, B wrong; ``b_only``: the reverse)."""
    if len(a) != len(b):
        raise ValueError(f"paired difference of {len(a)} and {len(b)} items")
    n = len(a)
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean = sum(d) / n if n else None
    interval = None
    if n >= 2 and mean is not None:
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        half = z * sd / math.sqrt(n)
        interval = [mean - half, mean + half]
    return {"n": n, "difference": mean, "difference_ci": interval,
            "a_only": sum(1 for x in d if x > 0), "b_only": sum(1 for x in d if x < 0)}
