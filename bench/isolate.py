"""Run one benchmark run in a fresh spawned process, as a user runs a trainer.

Run one after the other in one process, each run inherits the heap, thread pools and warm caches of
the run before it, which favours whoever goes second (BENCHMARKS.md, GRPO run 9).
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any, Callable


def in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process; its result must be JSON. ``fn`` must be importable
    (a module-level function); the process is not a daemon, so it may start its own (vLLM's engine)."""
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-run-") as tmp:
        result = Path(tmp) / "result.json"
        proc = multiprocessing.get_context("spawn").Process(target=_child, args=(fn, args, result))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or not result.exists():
            raise SystemExit(f"{getattr(fn, '__name__', fn)}'s process exited with {proc.exitcode}")
        return json.loads(result.read_text())


def _child(fn: Callable[..., Any], args: tuple, result: Path) -> None:
    result.write_text(json.dumps(fn(*args)))
