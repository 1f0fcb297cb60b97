"""A full disk (or quota) while writing: recognise it, name the file, say it in one line.

``os.write`` and a buffered file's ``write``/``flush`` raise ``OSError(ENOSPC)`` without a file
name; safetensors and torch raise their own errors. `names_path` wraps a write helper so any of
these leaves it as ``OSError(ENOSPC | EDQUOT, ..., path)``, and the CLI (`rlaif.cli`) prints
`message` and exits `EXIT_CODE`, no traceback. The helpers write through a partial file or a
temporary name and rename at the end, so what a command finished before stays on disk and the
same command, rerun once there is space, resumes.
"""

from __future__ import annotations

import errno
import functools
import shutil
from pathlib import Path
from typing import Any, Callable, TypeVar

EXIT_CODE = 4
ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What libraries that do not raise OSError say: Rust's io::Error (safetensors), C's strerror.
_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122", "StorageFull",
          "QuotaExceeded")
# torch.save's zip writer on a full disk says only "unexpected pos" / "iostream error"
_TORCH_WRITE = ("unexpected pos", "iostream error", "PytorchStreamWriter failed writing")
_NEARLY_FULL = 64 << 20  # bytes: a torch write failure with less free space than this is a full disk

F = TypeVar("F", bound=Callable[..., Any])


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _free_bytes(path: str | Path) -> int | None:
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def is_disk_full(e: BaseException, path: str | Path | None = None) -> bool:
    """Whether ``e`` (or an exception it was raised from) is a write refused for want of space or
    quota. A torch write failure counts when ``path``'s file system has almost no space left."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in ERRNOS:
            return True
        if any(w in str(x) for w in _WORDS):
            return True
    if path is not None and any(w in str(x) for x in _chain(e) for w in _TORCH_WRITE):
        free = _free_bytes(path)
        return free is not None and free < _NEARLY_FULL
    return False


def names_path(path_of: Callable[..., str | Path]) -> Callable[[F], F]:
    """Decorator for a write helper: a full disk inside it leaves as ``OSError(ENOSPC, ..., path)``
    with ``path = path_of(*args, **kwargs)`` (an OSError that already names a file keeps it)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BaseException as e:
                path = path_of(*args, **kwargs)
                if not is_disk_full(e, path):
                    raise
                if isinstance(e, OSError) and e.errno in ERRNOS:
                    if e.filename is None:
                        e.filename = str(path)
                    raise
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        return call  # type: ignore[return-value]
    return wrap


def message(e: BaseException, fallback: str | Path | None = None) -> str:
    """The one line the CLI prints for a disk-full ``e`` (``fallback``: the folder to name when
    ``e`` names no file)."""
    named = e if isinstance(e, OSError) and e.errno in ERRNOS else None
    path = (named.filename if named else None) or (f"in {fallback}" if fallback else "a file")
    what = "disk quota exceeded" if named and named.errno == errno.EDQUOT else "disk full"
    return (f"{what} writing {path} (free space and rerun; finished work is kept and the rerun "
            f"resumes)")
