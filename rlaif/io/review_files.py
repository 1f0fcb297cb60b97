"""The two files of a review (`rlaif review DIR`): ``DIR/review/items.jsonl`` and ``labels.jsonl``.

``items.jsonl`` is the seeded sample of judged pairs, written once, atomically. ``labels.jsonl`` is
append-only, one row per answer of a person; a later row for the same (reviewer, item) supersedes
an earlier one. An answer is appended as one ``os.write`` of the whole line to a file opened with
``O_APPEND``, then fsync'd, so a killed server loses at most the answer being written. Reading
drops a torn last line (no newline, or not valid JSON); the next append truncates it away first.
Row shapes are in docs/review-figures.md and the module's checks below.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from rlaif.errors import UserError, where
from rlaif.io.log import log
from rlaif.io.records import dumps, iter_jsonl
from rlaif.io.store import write_jsonl

ANSWERS = ("A", "B", "tie", "both_bad", "skip")
DECIDED = ("A", "B")  # the answers that name a preferred response

_ITEM_FIELDS: dict[str, type] = {
    "item": str,
    "prompt_id": str,
    "prompt": list,
    "candidates": list,
    "responses": list,
    "judge": dict,
}
_LABEL_FIELDS: dict[str, type] = {
    "item": str,
    "reviewer": str,
    "time": str,
    "shown": list,
    "answer": str,
}


def _check_pair(value: Any, kind: type, path: Path | None, line: int | None, name: str) -> None:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)):
        raise UserError(f"{where(path, line, name)}expected a list of two {kind.__name__}s, got {value!r}")


def _check_fields(row: Any, fields: dict[str, type], path: Path | None, line: int | None) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{where(path, line)}expected a JSON object")
    for name, kind in fields.items():
        if not isinstance(row.get(name), kind):
            raise UserError(f"{where(path, line, name)}missing or not a {kind.__name__}")


def check_item(row: Any, path: Path | None = None, line: int | None = None) -> dict:
    """Validate one items.jsonl row (the fields readers rely on); returns it."""
    _check_fields(row, _ITEM_FIELDS, path, line)
    _check_pair(row["candidates"], int, path, line, "candidates")
    _check_pair(row["responses"], str, path, line, "responses")
    if "show" in row:
        _check_pair(row["show"], int, path, line, "show")
        if sorted(row["show"]) != sorted(row["candidates"]):
            raise UserError(f"{where(path, line, 'show')}must be the two candidates {row['candidates']} in some order")
    weight = row.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise UserError(f"{where(path, line, 'weight')}expected a positive number, got {weight!r}")
    return row


def check_label(row: Any, path: Path | None = None, line: int | None = None) -> dict:
    """Validate one labels.jsonl row: fields, answer, and ``preferred`` matching answer and shown order."""
    _check_fields(row, _LABEL_FIELDS, path, line)
    if not row["reviewer"].strip():
        raise UserError(f"{where(path, line, 'reviewer')}must not be empty")
    _check_pair(row["shown"], int, path, line, "shown")
    answer = row["answer"]
    if answer not in ANSWERS:
        raise UserError(f"{where(path, line, 'answer')}expected one of {', '.join(ANSWERS)}, got {answer!r}")
    preferred = row.get("preferred")
    expected = row["shown"][DECIDED.index(answer)] if answer in DECIDED else None
    if preferred != expected or isinstance(preferred, bool):
        raise UserError(f"{where(path, line, 'preferred')}answer {answer!r} with shown {row['shown']} means "
                        f"preferred={expected!r}, got {preferred!r}")
    if not isinstance(row.get("note", ""), str):
        raise UserError(f"{where(path, line, 'note')}expected a string")
    return row


def read_items(path: str | Path) -> list[dict]:
    """The sample's rows; a bad row is a UserError naming file:line(:field)."""
    items: list[dict] = []
    seen: set[str] = set()
    for line_no, row in iter_jsonl(path):
        check_item(row, Path(path), line_no)
        if row["item"] in seen:
            raise UserError(f"{where(path, line_no, 'item')}{row['item']!r} appears twice")
        seen.add(row["item"])
        items.append(row)
    return items


def write_items(path: str | Path, items: list[dict]) -> None:
    """Write the sample atomically (readers see no file or the whole file)."""
    for i, row in enumerate(items, 1):
        check_item(row, Path(path), i)
    write_jsonl(path, items)


def _complete_end(data: bytes) -> int:
    """Byte offset just past the last complete, valid line (a torn last line lies beyond it)."""
    if not data:
        return 0
    end = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
    if end == len(data):  # ends with a newline: the last line may still be cut JSON
        start = data.rfind(b"\n", 0, end - 1) + 1
        last = data[start:end]
        if last.strip():
            try:
                json.loads(last)
            except json.JSONDecodeError:
                return start
    return end


def iter_labels(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, answer) in file order. A torn last line is dropped (logged, not repaired: reading
    never writes); any other bad row is a UserError naming file:line:field. A missing file is no labels."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    end = _complete_end(data)
    if end < len(data):
        log(f"{path}: dropped a torn last line (an answer cut off while being written)")
    for line_no, raw in enumerate(data[:end].split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{where(path, line_no)}not valid JSON ({getattr(exc, 'msg', exc)})") from None
        yield line_no, check_label(row, path, line_no)


def read_labels(path: str | Path) -> list[dict]:
    """All answers in file order (see `iter_labels`)."""
    return [row for _, row in iter_labels(path)]


def labels_digest(path: str | Path) -> str:
    """sha256 of the labels file's complete lines (a torn last line is not part of it)."""
    data = Path(path).read_bytes()
    return hashlib.sha256(data[:_complete_end(data)]).hexdigest()


def _repair(path: Path) -> None:
    """Truncate a torn last line so the next append starts on a fresh line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    end = _complete_end(data)
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
        log(f"{path}: removed a torn last line before appending")


def append_label(path: str | Path, row: dict) -> None:
    """Validate ``row`` and append it durably: one O_APPEND write of the whole line, then fsync."""
    path = Path(path)
    check_label(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair(path)
    line = (dumps(row) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # a regular file takes it whole; anything else is a disk problem
            raise OSError(f"{path}: short write ({written} of {len(line)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_labels(rows: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """(reviewer, item) -> that reviewer's last answer on the item (later rows supersede)."""
    latest: dict[tuple[str, str], dict] = {}
    for row in rows:
        latest[(row["reviewer"], row["item"])] = row
    return latest


DROP = "drop"  # an item's verdict when people called it a tie or both bad


def item_verdicts(latest: dict[tuple[str, str], dict]) -> dict[str, int | str | None]:
    """item -> what a strict majority of its reviewers' non-skip answers says: the preferred candidate
    index, or `DROP` (tie / both bad); None when there is no strict majority (reviewers disagree).
    Items with nothing but skips are left out."""
    votes: dict[str, list[int | str]] = {}
    for (_, item), row in latest.items():
        if row["answer"] != "skip":
            votes.setdefault(item, []).append(row["preferred"] if row["answer"] in DECIDED else DROP)
    out: dict[str, int | str | None] = {}
    for item, answers in votes.items():
        top, count = Counter(answers).most_common(1)[0]
        out[item] = top if 2 * count > len(answers) else None
    return out
