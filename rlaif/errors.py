"""User-facing errors: one line, no traceback, exit code 2 (see `rlaif.cli`)."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input (file, config, option). The CLI prints it as one line.

    Build the message with `where()` so it names the file, line and field when they are known:
    ``prompts.jsonl:12: field 'prompt': expected a string``.
    """

    exit_code = 2


def where(path: str | Path | None = None, line: int | None = None, field: str | None = None) -> str:
    """Format a location prefix ``file:line: field 'x': `` (parts that are None are left out)."""
    parts = []
    if path is not None:
        parts.append(str(path) + (f":{line}" if line is not None else ""))
    if field is not None:
        parts.append(f"field '{field}'")
    return ": ".join(parts) + (": " if parts else "")


class EngineError(UserError):
    """An inference engine failed to start or died, e.g. too little KV-cache memory, or a model the
    engine cannot run. One line with the root cause and what to change; exit code 3 (the CLI
    prints every `UserError` the same way)."""

    exit_code = 3
