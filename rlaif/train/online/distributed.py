"""Data parallelism for the online trainers under ``accelerate launch`` (DDP only).

W processes reach the weights one process reaches with the same step batch (up to float summation
order; tests/test_online_distributed.py):

- generation: rank r samples the contiguous slice `prompt_slice` of the step's prompts with its own
  engine (seeds keyed on the global prompt position, ``RolloutEngine.generate(first_index=...)``),
  scores its rewards, then every rank all-gathers rollouts and rewards: each holds the full batch;
- scoring passes and the update run micro-batch j of the one-process schedule on rank ``j % W``
  (`mine`): the same rows, padding and trimming as one process, so each micro-batch's numbers are
  one process's; scoring results are summed over ranks (rows not scored are exact zeros);
- advantages, KL, whitening and loss normalisers come from the full batch on every rank;
- after each minibatch the gradients are summed over ranks (`Dist.sum_grads`) before the clip
  and the optimizer step, so the grad norm and the update equal one process's. A manual
  all-reduce (not DDP's wrapper) lets ranks run different numbers of micro-batches, none included.

FSDP and DeepSpeed are refused (`check_launch`): every rank's rollout engine needs the full
weights after each step. With ``rollout.replicas > 1`` (a Ray pool) only the main process builds the
engine and samples the whole step; the gather then hands its rollouts to the other ranks.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from rlaif.train.online.config import check_launch, world_size

BUCKET = 1 << 25  # gradient elements per all-reduce (128 MiB of float32)
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
              "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def prompt_slice(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [lo, hi) of ``n`` prompts; sizes differ by at most one."""
    return rank * n // world, (rank + 1) * n // world


def mine(j: int, world: int, rank: int) -> bool:
    """Whether micro-batch ``j`` (counted over the step in the one-process order) runs on ``rank``."""
    return j % world == rank


@dataclass
class Dist:
    """This process's place in the process group (world 1: no group, every call a no-op)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) ``tensor`` in place across ranks (through ``device`` for NCCL)."""
        if self.world == 1:
            return tensor
        buf = tensor if tensor.device == self.device else tensor.to(self.device)
        torch.distributed.all_reduce(buf)
        if buf is not tensor:
            tensor.copy_(buf)
        return tensor

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """g = sum over ranks of each rank's gradient; a parameter no rank has a gradient for keeps
        None (AdamW skips it, as in one process); missing ones count as zeros."""
        if self.world == 1:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        self.sum_(has)
        live = [p for p, h in zip(params, has.tolist()) if h > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        start = 0
        while start < len(live):
            bucket, size = [], 0
            while start < len(live) and (not bucket or size + live[start].numel() <= BUCKET):
                bucket.append(live[start])
                size += live[start].numel()
                start += 1
            flat = torch.cat([p.grad.reshape(-1).float() for p in bucket])
            self.sum_(flat)
            offset = 0
            for p in bucket:
                size = p.numel()
                p.grad.copy_(flat[offset:offset + size].view_as(p.grad))
                offset += size

    def same_start(self, params: list[torch.nn.Parameter]) -> None:
        """Broadcast the main process's trainable weights (they are loaded and seeded alike on every
        rank; this makes it so, as DDP's wrapper does)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                buf = p.data if p.device == self.device else p.data.to(self.device)
                torch.distributed.broadcast(buf, 0)
                if buf is not p.data:
                    p.data.copy_(buf)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_dist(algorithm: str) -> Dist:
    """The process group of ``accelerate launch`` / torchrun (gloo without CUDA, NCCL on GPUs), or
    world 1. Refuses FSDP / DeepSpeed (`check_launch`)."""
    check_launch(algorithm)
    if world_size() <= 1:
        return Dist()
    from accelerate import PartialState

    from rlaif.train.checkpoints import launched_on_cpu

    state = PartialState(cpu=launched_on_cpu())
    return Dist(state.num_processes, state.process_index, state.local_process_index, torch.device(state.device))


@contextmanager
def launcher_free_env(cuda_visible: str | None = None) -> Iterator[None]:
    """While inside: none of the launcher's variables (`LAUNCH_ENV`) and, when given,
    ``CUDA_VISIBLE_DEVICES=cuda_visible``; the environment is restored on the way out."""
    saved = {name: os.environ.get(name) for name in (*LAUNCH_ENV, "CUDA_VISIBLE_DEVICES")}
    try:
        for name in LAUNCH_ENV:
            os.environ.pop(name, None)
        if cuda_visible is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES``, else every device torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [i for i in visible.split(",") if i]
    return [str(i) for i in range(torch.cuda.device_count())]


@contextmanager
def engine_env(dist: Dist) -> Iterator[None]:
    """While a rank builds its vLLM engine: none of the launcher's variables (the engine's own process
    group must not join ours) and, on GPUs, only this rank's GPU visible to the engine's processes.
    Untested here (no multi-GPU machine; one vLLM engine at a time on this CPU); a no-op for world 1."""
    if dist.world == 1:
        yield
        return
    gpu = None
    if dist.device.type == "cuda":
        gpu = visible_gpus()[dist.device.index if dist.device.index is not None else dist.local_rank]
    with launcher_free_env(gpu):
        yield
