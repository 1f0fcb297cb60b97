"""Files a rubric names (``template_file``, ``schema_file``) must lie inside the rubric's folder.

A rubric is often someone else's file; a path such as ``../../.ssh/id_rsa`` or a symlink out of
the folder would otherwise put any readable file into the judge's prompt, which may go to a remote
API. The path is resolved (``..`` and symlinks) and must stay under the folder, also resolved. To
allow other paths for rubrics you trust, set ``RLAIF_TRUST_RUBRIC_PATHS=1``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

TRUST_ENV = "RLAIF_TRUST_RUBRIC_PATHS"
_trusted: ContextVar[bool] = ContextVar("rlaif_trust_rubric_paths", default=False)


def paths_trusted() -> bool:
    return _trusted.get() or os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


@contextlib.contextmanager
def trusting_paths() -> Iterator[None]:
    """Within this block rubric paths are not checked (the studio checks them against its own root
    before it lints a staged copy whose sibling files are links into that root)."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def rubric_relative(base: Path, name: str) -> Path:
    """``base / name``; ValueError with a one-line reason when it resolves outside ``base``."""
    path = base / name
    if not paths_trusted() and not path.resolve().is_relative_to(base.resolve()):
        raise ValueError(f"{name} is outside the rubric's folder {base} (links resolved); set {TRUST_ENV}=1 "
                         f"to allow paths of rubrics you trust")
    return path
