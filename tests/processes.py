"""Start a run in a subprocess and signal it (SIGKILL, SIGTERM) once a file has rows: the kill and
resume tests of the pipeline, the Ray pool and the CLI's signal handling."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


@dataclass
class Ended:
    """How the run ended: its exit status (``-signal`` when a signal ended it), its stderr, and what
    ``before_signal`` returned (None when it was not called)."""

    returncode: int
    stderr: str
    before: Any = None


def has_rows(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def run_and_signal(cmd: Sequence[str], rows_in: Path | None = None, *, sig: int = signal.SIGKILL,
                   timeout: float = 120.0, env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
                   new_session: bool = False,
                   before_signal: Callable[[subprocess.Popen], Any] | None = None) -> Ended:
    """Run ``cmd``; once ``rows_in`` has a row, call ``before_signal(proc)`` and send ``sig``.

    Without ``rows_in`` the run goes to its end. ``timeout`` bounds each wait (for the rows, then
    for the exit); past it the run is killed and the test fails. A run that ends before it has rows
    fails the test too (the signal would have tested nothing). ``new_session``: the run gets its
    own process group, and what is left of it (e.g. Ray's agents) is SIGKILLed a second after the
    run ended. stdout is dropped; stderr goes to a file (no pipe to fill up), returned as text."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=None if env is None else dict(env),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=new_session)
        before = None
        try:
            if rows_in is not None:
                deadline = time.monotonic() + timeout
                while proc.poll() is None and not has_rows(rows_in):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no row in {rows_in} after {timeout:.0f} s: {_tail(err)}")
                    time.sleep(0.01)
                if proc.poll() is not None:
                    raise AssertionError(f"the run ended (exit {proc.returncode}) before it could be signalled: "
                                         f"{_tail(err)}")
                if before_signal is not None:
                    before = before_signal(proc)
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the run did not end within {timeout:.0f} s: {_tail(err)}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if new_session:
                time.sleep(1)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return Ended(proc.returncode, _read(err), before)


def _read(err: Any) -> str:
    """The whole file, read without moving the offset that the run's stderr shares with it."""
    size = os.fstat(err.fileno()).st_size
    return os.pread(err.fileno(), size, 0).decode("utf-8", "replace")


def _tail(err: Any, chars: int = 3000) -> str:
    return _read(err)[-chars:]


def get_when_up(url: str, seconds: float = 5.0) -> Any:
    """GET ``url`` from a server a subprocess is starting, retrying while the port refuses connections."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            return httpx.get(url)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
