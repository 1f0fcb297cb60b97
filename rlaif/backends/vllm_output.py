"""The vLLM engine processes' output, tapped: the root cause of a failed engine in one line.

vLLM (0.32) runs its engine core and workers in child processes (spawned on CPU). When one fails,
the parent only raises ``RuntimeError: Engine core initialization failed. See root cause above``
(at start) or ``EngineDeadError`` (mid-run); the cause, e.g. a worker's ``ValueError`` about KV
cache memory, is only in the children's log lines: vLLM logs to stdout (``VLLM_LOGGING_STREAM``),
multiprocessing prints an uncaught traceback to stderr. No exception chain, pipe or API carries it.

`OutputTap` points fds 1 and 2 at pipes while the engine starts, so the children inherit them,
then gives the parent its own fds back. A thread forwards every byte to where fds 1 and 2 pointed
before (the terminal still shows everything) and keeps the last lines, until the engine's
processes have exited (end of file on both pipes); `root_cause` reads the
exception line of the first traceback logged at ERROR level or printed raw (the innermost cause:
a worker's error comes before the engine core's re-raise of it).
"""

from __future__ import annotations

import collections
import os
import re
import selectors
import sys
import threading
import time
from typing import Iterable

# "(EngineCore pid=17004) ERROR 11-27 12:24:03 [core.py:1512] message"; both parts optional
_PROCESS = re.compile(r"^\([\w.-]+ pid=\d+\) ?")
_HEADER = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\] ?")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b(?::|$)")
_WORKER_WRAP = re.compile(r"^RuntimeError: Worker failed with error '(?P<inner>.*)', please check the stack trace")
_LIMIT = 400  # characters of a root-cause line kept in the message

# One build at a time per process: fds 1 and 2 are process-wide.
_redirect_lock = threading.Lock()


def _split(line: str) -> tuple[str | None, str]:
    """``(level, message)`` of one output line; level None for a line vLLM's logger did not write."""
    line = _PROCESS.sub("", line, count=1)
    header = _HEADER.match(line)
    return (header.group("level"), line[header.end():]) if header else (None, line)


def root_cause(lines: Iterable[str]) -> str | None:
    """The exception line (``ValueError: ...``) of the first traceback in ``lines`` that was logged
    at ERROR/CRITICAL level or printed raw; None when there is none. Tracebacks in DEBUG, INFO and
    WARNING records are skipped (vLLM logs recoverable problems with their traceback). A message
    that starts on the next line (``RuntimeError:`` then text) gets its first two lines."""
    in_traceback = False
    split = [_split(line.rstrip("\r\n")) for line in lines]
    for k, (level, text) in enumerate(split):
        if level in ("DEBUG", "INFO", "WARNING"):
            in_traceback = False
            continue
        if text.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and text.strip() and not text[0].isspace():
            if _EXCEPTION.match(text):
                text = text.strip()
                if text.endswith(":"):
                    following = [t.strip() for _, t in split[k + 1:k + 12] if t.strip()][:2]
                    text = " ".join([text, *following])
                wrapped = _WORKER_WRAP.match(text)
                cause = wrapped.group("inner") if wrapped else text
                return cause if len(cause) <= _LIMIT else cause[:_LIMIT - 3] + "..."
            in_traceback = False  # not a traceback after all
    return None


def hint(cause: str, gpu_memory_utilization: float, max_model_len: int | None) -> str:
    """What to change, from the words of the root cause."""
    if re.search(r"memory|kv cache|max_model_len|max seq len|out of memory|\bOOM\b", cause, re.IGNORECASE):
        now = f"now {max_model_len}" if max_model_len is not None else "default: the model's own"
        return (f"raise gpu_memory_utilization (now {gpu_memory_utilization}; on CPU the share of RAM) "
                f"or lower max_model_len ({now})")
    if "bootstrapping phase" in cause:  # a script without a main guard: vLLM spawns its engine process
        return "a script that starts a vllm engine needs `if __name__ == \"__main__\":` around its code"
    return "see the engine's log above; engine=hf runs models this vLLM cannot"


class OutputTap:
    """Forwards fds 1 and 2 of the processes started between `start` and `release` (and this
    process's own output in that window) and keeps their last ``keep`` lines."""

    def __init__(self, keep: int = 5000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._count = 0  # lines seen so far (the deque keeps the last `keep`)
        self._cond = threading.Condition()
        self._saved: dict[int, int] = {}  # fd -> a copy of what it pointed at before `start`
        self._locked = False
        self._last_data = time.monotonic()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Point fds 1 and 2 at pipes (one build at a time per process). False, and nothing is
        changed, where they cannot be duplicated (closed)."""
        _start_resource_tracker()
        _redirect_lock.acquire()
        self._locked = True
        _flush()
        targets: dict[int, int] = {}  # pipe read end -> where its bytes go
        try:
            for fd in (1, 2):
                saved = os.dup(fd)
                read, write = os.pipe()
                targets[read] = self._saved[fd] = saved
                try:
                    os.dup2(write, fd)  # inheritable: the engine's processes get the pipe as fd 1 / 2
                finally:
                    os.close(write)
        except OSError:
            self.release()
            for read, saved in targets.items():
                os.close(read)
                os.close(saved)
            return False
        self._thread = threading.Thread(target=self._forward, args=(targets,), name="rlaif-vllm-output", daemon=True)
        self._thread.start()
        return True

    def release(self) -> None:
        """Give this process its own fds 1 and 2 back; the engine's processes keep the pipes."""
        _flush()
        for fd, saved in self._saved.items():
            try:
                os.dup2(saved, fd)
            except OSError:
                pass
        self._saved = {}  # the forwarding thread owns (and closes) the copies
        if self._locked:
            self._locked = False
            _redirect_lock.release()

    def mark(self) -> int:
        """A position in the output: `root_cause(since=mark)` reads only what came after it."""
        with self._cond:
            return self._count

    def root_cause(self, since: int = 0, quiet_s: float = 0.3, wait_s: float = 3.0) -> str | None:
        """`root_cause` of the output after ``since``, once it has been quiet for ``quiet_s`` (the
        children write their traceback before the parent hears of the failure, but the forwarding
        thread may not have read it yet), waiting at most ``wait_s``."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._thread is not None and self._thread.is_alive():
                idle = time.monotonic() - self._last_data
                left = deadline - time.monotonic()
                if idle >= quiet_s or left <= 0:
                    break
                self._cond.wait(min(quiet_s - idle, left))
            skip = max(0, len(self._lines) - (self._count - since))
            lines = list(self._lines)[skip:]
        return root_cause(lines)

    def _forward(self, targets: dict[int, int]) -> None:
        partial = {read: b"" for read in targets}
        with selectors.DefaultSelector() as sel:
            for read in targets:
                sel.register(read, selectors.EVENT_READ)
            while sel.get_map():
                for key, _ in sel.select(timeout=0.5):
                    read = int(key.fd)
                    try:
                        data = os.read(read, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(read)
                        continue
                    _write_all(targets[read], data)
                    lines = (partial[read] + data).split(b"\n")
                    partial[read] = lines.pop()[-65536:]
                    with self._cond:
                        for line in lines:
                            self._lines.append(line.decode("utf-8", "replace"))
                        self._count += len(lines)
                        self._last_data = time.monotonic()
                        self._cond.notify_all()
        with self._cond:  # a last line without its newline
            for read, rest in partial.items():
                if rest:
                    self._lines.append(rest.decode("utf-8", "replace"))
                    self._count += 1
            self._cond.notify_all()
        for read, saved in targets.items():
            os.close(read)
            os.close(saved)


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now (vLLM would start it inside the tapped window,
    and it would hold the pipes open for good), without its exit notice "resource_tracker: There
    appear to be 1 leaked shared_memory objects to clean up at shutdown": an engine process that
    failed leaves its shared memory to the tracker, which unlinks it; the notice would otherwise
    follow rlaif's one-line error. A tracker already running is left as it is."""
    from multiprocessing import resource_tracker

    quiet = "ignore:resource_tracker"  # -W filter: messages starting with "resource_tracker"
    added = quiet not in sys.warnoptions
    if added:
        sys.warnoptions.append(quiet)  # passed to the tracker's interpreter as -W
    try:
        resource_tracker.ensure_running()
    finally:
        if added:
            sys.warnoptions.remove(quiet)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the terminal went away: keep reading, so the children never block
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
