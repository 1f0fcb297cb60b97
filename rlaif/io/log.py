"""One-line progress notes on stderr, the way every verb writes them (stdout stays for results)."""

from __future__ import annotations

import sys


def log(message: str, prefix: str = "rlaif") -> None:
    """Print ``"<prefix>: <message>"`` to stderr and flush (a killed run keeps its last note)."""
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
