"""The one place that builds the trainers' AdamW (rm, dpo, sft via runtime.make_optimizer; the
online trainers via online/setup.py), and picks torch's implementation for the device:

- CUDA, every parameter a floating CUDA tensor: ``fused=True`` (one kernel for all parameters);
- otherwise (CPU): `CPU_CHOICE`, the fastest of torch 2.13's three CPU implementations in
  bench/optim_cpu.py (BENCHMARKS.md "AdamW on CPU").

The three compute the same update (Loshchilov & Hutter 2019) up to float rounding: after 9 steps the
fused weights differ from the for-loop's by at most 1.2e-7 on the 135M shape (the bench).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

CPU_CHOICE = "fused"  # torch's fused CPU AdamW: 3.4x the for-loop on the 135M shape, 100x on the tiny one


def implementation(params: Iterable[torch.Tensor], device: Any = None) -> dict[str, bool]:
    """AdamW's keyword for ``params``: ``{"fused": True}`` when all are floating point and on CUDA
    (``device``, when given, is where they will train: the offline trainers build the optimizer
    before accelerate moves the model), else ``{CPU_CHOICE: True}``."""
    params = list(params)
    on_cuda = torch.device(device).type == "cuda" if device is not None else all(p.is_cuda for p in params)
    if params and on_cuda and all(p.is_floating_point() for p in params):
        return {"fused": True}
    return {CPU_CHOICE: True}


def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float = 0.0, device: Any = None
          ) -> torch.optim.AdamW:
    """AdamW over parameter ``groups`` (each a dict with ``params`` and optional overrides), with the
    implementation for ``device`` (default: where the parameters are; :func:`implementation`)."""
    params = [p for group in groups for p in group["params"]]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **implementation(params, device))
