"""keep_freed_memory: a training step's activations reuse mapped pages instead of faulting them in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

STEP = textwrap.dedent("""
    import resource, sys
    import torch
    from rlaif.train.heap import keep_freed_memory
    kept = keep_freed_memory(sys.argv[1])
    def step():  # a step's activations: 30 blocks of 8 MiB allocated, written, then freed together
        acts = [torch.empty(2 << 20).fill_(1.0) for _ in range(30)]
        del acts
    for _ in range(3):  # the heap grows to the step's size
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(device_type: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", STEP, device_type], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_training_reuses_freed_activations_without_page_faults() -> None:
    kept, faults = _faults("cpu")
    untouched, default_faults = _faults("cuda")  # on CUDA nothing is changed: glibc's default behaviour
    assert (kept, untouched) == ("True", "False")
    assert default_faults > 3 * 240 * 256 // 2  # each step faults most of its 240 MiB (4 KiB pages) in again
    assert faults < default_faults // 20, (faults, default_faults)

