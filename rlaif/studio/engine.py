"""The studio's judge: one engine, loaded on the first judge call and kept warm, behind a cache keyed
on the exact judge input; and background jobs (calibration) with progress and cancel.

`CachedJudge` has the engine interface (`rlaif.backends.base.Backend`), so `judge_items` and
`calibrate` run unchanged on it. Each request (conversation + choices and prefix; + reply;
+ sampling parameters and the request's seed) is hashed; only requests not seen before go to the
engine, in chunks, checking between chunks whether the job that asked was cancelled. An edit that
leaves a judge input unchanged therefore reuses its result, and one that changes the template
re-judges every input it changes and nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import secrets
import sys
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from rlaif.backends import load_backend
from rlaif.backends.base import Backend, BackendConfig, Conversation, SamplingParams
from rlaif.errors import UserError

MAX_CACHED = 50_000  # judge results kept (least recently used dropped first)


class Cancelled(Exception):
    """The job was cancelled between two engine chunks."""


@dataclass
class Job:
    """A background task the page polls: ``status`` running | done | cancelled | error."""

    kind: str
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    status: str = "running"
    done: int = 0  # judge requests sent to the engine so far
    total: int = 0  # judge requests the engine has been asked for so far (cache misses)
    cached: int = 0  # judge requests answered from the cache
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "status": self.status, "done": self.done, "total": self.total,
                "cached": self.cached, "result": self.result, "error": self.error}


def request_key(*parts: Any) -> str:
    """Hash of one judge request's exact input."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class CachedJudge:
    """A lazily loaded engine behind a result cache (see the module docstring)."""

    def __init__(self, config: BackendConfig, loader: Callable[[BackendConfig], Backend] = load_backend,
                 chunk: int | None = None) -> None:
        self.config = config
        self._loader = loader
        self._backend: Backend | None = None
        self._lock = threading.RLock()  # one engine call at a time
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._local = threading.local()
        self.chunk = chunk or max(8, config.batch_size)
        self.engine_requests = 0  # judge requests the engine answered (the rest came from the cache)

    # -- engine -----------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                self._backend = self._loader(self.config)
            return self._backend

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def tokenizer(self) -> Any:
        return getattr(self.backend, "tokenizer", None)

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None

    # -- jobs -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def tracking(self, job: Job | None) -> Iterator[None]:
        """Count this thread's requests into ``job`` and stop at its cancel flag."""
        self._local.job = job
        try:
            yield
        finally:
            self._local.job = None

    def _cached(self, keys: list[str], run: Callable[[list[int]], list[Any]]) -> list[Any]:
        job: Job | None = getattr(self._local, "job", None)
        first: dict[str, int] = {}
        for k, key in enumerate(keys):
            if key not in self._cache:
                first.setdefault(key, k)
        misses = list(first.values())
        if job is not None:
            job.total += len(misses)
            job.cached += len(keys) - len(misses)
        for start in range(0, len(misses), self.chunk):
            if job is not None and job.cancel.is_set():
                raise Cancelled()
            part = misses[start:start + self.chunk]
            with self._lock:
                results = run(part)
            self.engine_requests += len(part)
            for k, result in zip(part, results):
                self._cache[keys[k]] = result
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
            if job is not None:
                job.done += len(part)
        out = []
        for key in keys:
            self._cache.move_to_end(key)
            out.append(copy.deepcopy(self._cache[key]))
        return out

    # -- the engine interface ---------------------------------------------------------------------
    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str],
                        assistant_prefix: str = "", progress: bool = True) -> list[dict[str, float]]:
        keys = [request_key("choice", c, list(choices), assistant_prefix) for c in conversations]
        return self._cached(keys, lambda idx: self.backend.choice_logprobs(
            [conversations[i] for i in idx], choices, assistant_prefix, progress=False))

    def response_logprobs(self, conversations: Sequence[Conversation], responses: Sequence[str],
                          progress: bool = True) -> list[list[float]]:
        keys = [request_key("response", c, r) for c, r in zip(conversations, responses)]
        return self._cached(keys, lambda idx: self.backend.response_logprobs(
            [conversations[i] for i in idx], [responses[i] for i in idx], progress=False))

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams,
             seeds: Sequence[int] | None = None, progress: bool = True) -> list[Any]:
        def params_for(i: int) -> dict[str, Any]:
            p = dataclasses.asdict(params)
            p["seed"] = seeds[i] if seeds is not None else params.seed
            return p

        keys = [request_key("chat", c, params_for(i)) for i, c in enumerate(conversations)]
        return self._cached(keys, lambda idx: self.backend.chat(
            [conversations[i] for i in idx], params, seeds=[seeds[i] for i in idx] if seeds is not None else None,
            progress=False))


def run_job(job: Job, judge: CachedJudge | None, work: Callable[[], dict[str, Any]]) -> threading.Thread:
    """Run ``work`` in a daemon thread, recording its result, cancellation or error on ``job``."""
    def target() -> None:
        try:
            if judge is None:
                job.result = work()
            else:
                with judge.tracking(job):
                    job.result = work()
            job.status = "done"
        except Cancelled:
            job.status = "cancelled"
        except UserError as e:  # RubricError included: the message names file and line
            job.error, job.status = str(e), "error"
        except Exception as e:  # the page gets one line; the terminal the traceback
            traceback.print_exc(file=sys.stderr)
            job.error, job.status = f"internal error: {type(e).__name__}: {e}", "error"

    thread = threading.Thread(target=target, name=f"studio-{job.kind}-{job.id}", daemon=True)
    thread.start()
    return thread
