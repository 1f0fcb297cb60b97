"""Engine replicas on Ray: ``replicas=N`` engines of any kind, each in its own Ray actor.

The unit of work is a chunk, the same fixed chunk the in-process engine gets
(`rlaif.backends.chunking`): `EnginePool.map_chunks` runs ``fn(engine, *args)`` for each chunk on
whichever replica is free and yields the results in chunk order. A chunk's result depends only on
the chunk (per-prompt seeds, `rlaif.io.seeds`) and the engine sees the same batch as a single
engine would, so the rows written are the same bytes whatever the fleet. A replica that dies
(``ray.kill``, a crashed node) loses only its running chunk, which goes to the next free replica:
the driver writes each chunk once, in order, so nothing is lost or duplicated. The pool ends when
no replica is left.

Resources per replica: ``tensor_parallel_size`` GPUs where the cluster has GPUs and the engine
is a local model (vllm, hf); with more than one GPU each, a STRICT_PACK placement group of that
many GPU bundles, which vLLM then uses for its own tensor-parallel Ray workers (it picks its Ray
executor inside a placement group; the replica itself holds no GPU, as in vLLM's RLHF example). Fake and openai
replicas take no GPU. Without ``ray.address`` (or ``RAY_ADDRESS``) a local Ray starts, sized to
this machine, without dashboard and with the actors' logs kept off the terminal; it stops when the
pool closes. A Ray that is already running in this process (tests) is used and left running.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

from rlaif.backends.base import (Backend, BackendConfig, Conversation, Generation, RayOptions, SamplingParams)
from rlaif.errors import UserError
from rlaif.io.log import log

LOOKAHEAD = 2  # chunks finished but not yet written, per replica, before dispatch waits for the oldest


def _import_ray(what: str) -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"option '{what}': more than one replica needs Ray: pip install 'rlaif[ray]'") from None
    return ray



def call_method(backend: Backend, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Run ``backend.name(*args, **kwargs)`` on a replica (module-level, so Ray pickles it by name)."""
    return getattr(backend, name)(*args, **kwargs)


def _as_bytes(name: str, tensor: Any) -> tuple[str, str, tuple[int, ...], Any]:
    """A tensor as (name, dtype, shape, its bytes as a numpy array): Ray stores numpy arrays so that
    readers map them without a copy (a torch tensor is pickled and unpickled: ~4x slower for 0.5 GB)."""
    import torch

    flat = tensor.detach().cpu().contiguous()
    return (name, str(flat.dtype).removeprefix("torch."), tuple(flat.shape),
            flat.reshape(-1).view(torch.uint8).numpy())


def _load_weights(backend: Backend, refs: list[Any], timeout_s: float) -> None:
    """On a replica: map the weights put in the object store (a ref nested in a list is not
    resolved by Ray; the arrays are read-only views of it) and load them into the engine."""
    import warnings

    import ray
    import torch

    with warnings.catch_warnings():  # "the given NumPy array is not writable": it is only read
        warnings.simplefilter("ignore", UserWarning)
        tensors = [(name, torch.from_numpy(data).view(getattr(torch, dtype)).view(shape))
                   for name, dtype, shape, data in ray.get(refs[0])]
    backend.update_weights(tensors, timeout_s=timeout_s)  # type: ignore[attr-defined]


class _Replica:
    """The Ray actor: one engine. A failed engine load is kept and raised by ``ready``, so the
    driver sees the engine's own error (a one-line `UserError`), not a dead actor."""

    def __init__(self, factory: Callable[[BackendConfig], Backend], config: BackendConfig,
                 in_group: bool = False) -> None:
        self.backend: Backend | None = None
        self.error: BaseException | None = None
        if in_group:  # Ray blanks the GPU list of this 0-GPU actor; vLLM's workers in the group hold the GPUs
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        try:
            self.backend = factory(config)
        except Exception as e:  # noqa: BLE001 - shown to the driver by ready()
            self.error = e

    def ready(self) -> str:
        if self.error is not None:
            raise self.error
        assert self.backend is not None
        return self.backend.model_id

    def run(self, fn: Callable[..., Any], args: tuple) -> Any:
        return fn(self.backend, *args)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def _gpus_per_replica(config: BackendConfig, cluster_gpus: float) -> int:
    if config.engine in ("fake", "openai") or cluster_gpus <= 0:
        return 0
    if config.engine == "hf":
        return 0 if config.device.startswith("cpu") else 1
    return config.tensor_parallel_size


class EnginePool:
    """``Backend`` over ``config.replicas`` Ray actors, plus `map_chunks` for whole-chunk dispatch."""

    def __init__(self, config: BackendConfig, factory: Callable[[BackendConfig], Backend],
                 ray_options: RayOptions | None = None, role: str = "policy") -> None:
        """``factory`` builds one engine from ``config`` (with ``replicas=1``) inside each actor."""
        self.role = role
        ray = self.ray = _import_ray(f"{role}.replicas")
        self.config = config
        self._started = False
        self._groups: list[Any] = []
        address = (ray_options.address if ray_options else None) or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            self._start(address, config.replicas)
        try:
            self.actors = self._spawn(factory, dataclasses.replace(config, replicas=1))
            ids = self._wait_ready()
        except BaseException:
            self.close()
            raise
        self.model_id = ids[0]
        where = f"the cluster at {address}" if address and self._started else (
            "a local Ray" if self._started else "this process's Ray")
        plural = "s" if len(self.actors) > 1 else ""
        log(f"{role}: {len(self.actors)} engine replica{plural} on {where}")

    # -- life cycle ----------------------------------------------------------------------------
    def _start(self, address: str | None, replicas: int) -> None:
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                                      configure_logging=True)
        if address:
            _check_reachable(address)
            try:
                self.ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"option 'ray.address': cannot join the Ray cluster at {address!r} "
                                f"({' '.join(str(e).split())[:160]})") from None
        else:
            self.ray.init(num_cpus=max(os.cpu_count() or 1, replicas), **kwargs)
        self._started = True

    def _spawn(self, factory: Callable[[BackendConfig], Backend], inner: BackendConfig) -> list[Any]:
        ray = self.ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        total = ray.cluster_resources()
        gpus = _gpus_per_replica(inner, total.get("GPU", 0.0))
        need = gpus * self.config.replicas
        if need > total.get("GPU", 0.0):
            raise UserError(f"option '{self.role}.replicas': {self.config.replicas} replicas x {gpus} GPUs "
                            f"(tensor_parallel_size) need {need} GPUs; the Ray cluster has {total.get('GPU', 0):g}")
        cpus = 1 if inner.engine not in ("fake", "openai") else 0
        remote = ray.remote(_Replica)
        actors = []
        for replica in range(self.config.replicas):
            if gpus > 1:  # vLLM's tensor-parallel workers are placed in this group
                group = placement_group([{"GPU": 1, "CPU": 1}] * gpus, strategy="STRICT_PACK")
                self._groups.append(group)
                strategy = PlacementGroupSchedulingStrategy(placement_group=group,
                                                            placement_group_capture_child_tasks=True)
                opts: dict[str, Any] = dict(num_cpus=0, num_gpus=0, scheduling_strategy=strategy)
            else:
                opts = dict(num_cpus=cpus, num_gpus=gpus)
            # `ray list actors` shows whose it is
            name = f"rlaif-{self.role}-{replica}-{os.getpid()}-{id(self):x}"
            actors.append(remote.options(name=name, **opts).remote(factory, inner, gpus > 1))
        return actors

    def _wait_ready(self) -> list[str]:
        try:
            return self.ray.get([a.ready.remote() for a in self.actors])
        except self.ray.exceptions.RayTaskError as e:
            raise _cause(e) from None

    def close(self) -> None:
        """Close every live engine, end the actors, and stop Ray if this pool started it."""
        ray = self.ray
        for actor in getattr(self, "actors", []):
            try:
                ray.get(actor.close.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - dead or stuck: killed below
                pass
            ray.kill(actor)
        self.actors = []
        for group in self._groups:
            ray.util.remove_placement_group(group)
        self._groups = []
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    # -- dispatch ------------------------------------------------------------------------------
    def map_chunks(self, fn: Callable[..., Any], calls: Iterable[tuple]) -> Iterator[Any]:
        """``fn(engine, *args)`` for each ``args`` in ``calls``, each on whichever replica is free;
        results yielded in call order. A replica that dies hands its chunk to the next free one."""
        ray = self.ray
        pending = iter(calls)
        retry: deque[tuple[int, tuple]] = deque()
        free = list(self.actors)
        inflight: dict[Any, tuple[int, Any, tuple]] = {}
        results: dict[int, Any] = {}
        next_in = next_out = 0
        exhausted = False
        while True:
            while free and (retry or (not exhausted and next_in - next_out < LOOKAHEAD * len(self.actors))):
                if retry:
                    index, args = retry.popleft()
                else:
                    try:
                        args = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    index, next_in = next_in, next_in + 1
                actor = free.pop(0)
                inflight[actor.run.remote(fn, args)] = (index, actor, args)
            if next_out in results:
                yield results.pop(next_out)
                next_out += 1
                continue
            if not inflight:
                return  # everything dispatched has been yielded
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            index, actor, args = inflight.pop(ref)
            try:
                results[index] = ray.get(ref)
                free.append(actor)
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
                self._lost(actor, e)
                retry.append((index, args))
            except ray.exceptions.RayTaskError as e:
                raise _cause(e) from None

    def _lost(self, actor: Any, error: BaseException, then: str = "its chunk goes to another") -> None:
        self.actors = [a for a in self.actors if a is not actor]
        self.ray.kill(actor)
        why = " ".join(str(error).split())[:120]
        if not self.actors:
            raise UserError(f"option '{self.role}.replicas': every engine replica died; the last: {why}")
        log(f"{self.role}: an engine replica died ({why}); {then}, {len(self.actors)} left")

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]], timeout_s: float = 600.0) -> int:
        """New policy weights into every live replica (online RL): the tensors go to Ray's object
        store once (on CPU), and each replica loads them with its engine's own ``update_weights``.
        A replica found dead is dropped (as in `map_chunks`) and the others still load the weights,
        so every replica left holds them: a chunk a dead replica hands over is sampled with the
        current weights. Returns how many replicas loaded them."""
        ref = self.ray.put([_as_bytes(name, tensor) for name, tensor in named_tensors])
        return len(self.call_live_with(_load_weights, [ref], timeout_s))

    def call_live_with(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(engine, *args)`` on every replica; one that is found dead is dropped (an error
        if none is left): the results of the live ones, in replica order."""
        ray = self.ray
        calls = [(a, a.run.remote(fn, args)) for a in self.actors]
        results = []
        for actor, ref in calls:
            try:
                results.append(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as e:
                self._lost(actor, e, "it gets no more work")
            except ray.exceptions.RayTaskError as e:
                raise _cause(e) from None
        return results

    def call_all_with(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(engine, *args)`` on every replica."""
        refs = [a.run.remote(fn, args) for a in self.actors]
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as e:
            raise _cause(e) from None

    def _split(self, name: str, columns: dict[str, Sequence[Any]], kwargs: dict[str, Any]) -> list[Any]:
        """One engine call split into contiguous parts (``columns`` cut alike), one per replica;
        results concatenated in order. Engines' per-conversation seeds make the parts' samples
        those of the whole call."""
        rows = len(next(iter(columns.values())))
        parts = max(1, min(len(self.actors), rows))
        bounds = [rows * part // parts for part in range(parts + 1)]
        calls = [(name, (), {key: list(column[bounds[part]:bounds[part + 1]]) for key, column in columns.items()}
                  | kwargs) for part in range(parts)]
        return [result for part in self.map_chunks(call_method, calls) for result in part]

    # -- Backend -------------------------------------------------------------------------------
    def chat(self, conversations: Sequence[Conversation], params: SamplingParams,
             seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        columns: dict[str, Sequence[Any]] = {"conversations": conversations}
        if seeds is not None:
            if len(seeds) != len(conversations):
                raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
            columns["seeds"] = seeds
        return self._split("chat", columns, {"params": params, "progress": False})

    def generate_ids(self, prompts: Sequence[list[int]], params: SamplingParams,
                     seeds: Sequence[int] | None = None, progress: bool = True) -> list[Generation]:
        """The engines' ``generate_ids`` (token ids in; sample log-probs out when ``params.logprobs``)
        on contiguous parts of ``prompts``, one per replica: with per-prompt seeds, the samples of
        one engine given them all."""
        if not prompts:
            return []
        columns: dict[str, Sequence[Any]] = {"prompts": prompts}
        if seeds is not None:
            if len(seeds) != len(prompts):
                raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
            columns["seeds"] = seeds
        return self._split("generate_ids", columns, {"params": params, "progress": False})

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        return self._split("choice_logprobs", {"conversations": conversations},
                           {"choices": list(choices), "assistant_prefix": assistant_prefix, "progress": False})

    def response_logprobs(self, conversations: Sequence[Conversation], responses: Sequence[str],
                          progress: bool = True) -> list[list[float]]:
        if len(responses) != len(conversations):
            raise ValueError(f"{len(responses)} responses for {len(conversations)} conversations")
        return self._split("response_logprobs", {"conversations": conversations, "responses": responses},
                           {"progress": False})


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT that accepts no TCP connection is a one-line error (``ray.init`` would retry
    for minutes); ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"option 'ray.address': nothing answers at {address} ({e.strerror or e}); start the "
                        f"cluster with `ray start --head --port {port}` there, or leave ray.address unset for a "
                        f"local Ray") from None


def _cause(error: Any) -> BaseException:
    """The engine's own exception inside a Ray task error (a `UserError` stays one line)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
