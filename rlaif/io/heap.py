"""Keep freed memory in the process for the next training step (glibc on Linux, CPU training).

glibc's malloc gives freed memory back to the kernel: a block above ``M_MMAP_THRESHOLD`` is its own
``mmap``, unmapped on ``free``, and the heap's top is trimmed once more than ``M_TRIM_THRESHOLD`` of it is
free. A training step frees its activations together and allocates them again in the next step, so every
step page-faults them in afresh and the kernel zeroes each page: one GRPO micro-batch of the 135M model
took ~300k page faults a step (BENCHMARKS.md, GRPO run 11). Raising both thresholds keeps those pages
mapped for the next step: there the faults fell to 0-36k and the update took 0.75x the time. The cost is
that the process's resident memory does not shrink between steps. Allocators that PyTorch's CPU tuning
guides suggest preloading, jemalloc and tcmalloc, keep freed memory in the same way. On CUDA, activations
live in PyTorch's caching allocator, so nothing is changed there. vLLM's CPU workers call this too, at their
first in-place weight update (`rlaif.backends.vllm_weights`): each update repacks the weights into new memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # blocks below this come from the heap; this much freed top is kept

_done = False


def keep_freed_memory(device_type: str) -> bool:
    """For CPU training under glibc: keep freed blocks for reuse (once per process). True if set."""
    global _done
    if _done or device_type != "cpu" or not sys.platform.startswith("linux"):
        return _done
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        mallopt = None
    if mallopt is None:
        return False
    both = [bool(mallopt(option, KEEP_BYTES)) for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)]
    _done = all(both)  # True only with both set (glibc refuses them only for invalid values)
    return _done
