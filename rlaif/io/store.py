"""Crash-safe stage files: append-only rows while a stage runs, one atomic rename when it ends.

A stage writes each finished row to ``DIR/.rlaif/<name>.jsonl`` (write, flush, fsync), so a
``kill -9`` loses at most the row being written. On restart `StageFile` reads the rows back,
drops a torn last line (no trailing newline, or not valid JSON) by truncating the file to the last
complete row, and reports which keys are done. `StageFile.finish` writes the final file in the
caller's order (input order, so the result does not depend on when the run was interrupted)
through a temporary file and ``os.replace``: readers see either no file or the whole file.

``DIR/.rlaif/state.json`` remembers, per stage, a fingerprint of the settings that shaped its
rows; a rerun with different settings is refused instead of mixing rows from two configs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

from rlaif.errors import UserError
from rlaif.io.diskfull import names_path
from rlaif.io.log import log
from rlaif.io.records import dumps

PARTIAL_DIR = ".rlaif"


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder, so that a rename or a new entry in it survives a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@names_path(lambda path, *args, **kwargs: path)
def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash or power loss leaves either the old file or the new
    one: a temporary file in the same folder, fsynced, ``os.replace``, then the folder fsynced.
    Replacing a file keeps its permission bits; a new file gets the umask's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@names_path(lambda path, *args, **kwargs: path)
def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically and durably write rows as JSONL, one row at a time (rows may be a generator:
    nothing is held); returns the number of rows. A crash or an exception from ``rows`` leaves the
    old file, or none (as `atomic_write_text`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(dumps(row) + "\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return count


def fingerprint(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ListHasher:
    """Feeds the canonical JSON of a list (as `fingerprint` writes it) into ``digest`` one item at a
    time, so a big list is never held: `hexdigest` equals ``fingerprint(items)``."""

    def __init__(self, digest: Any = None) -> None:
        self.digest = digest if digest is not None else hashlib.sha256()
        self.encode = json.JSONEncoder(sort_keys=True, default=str).encode
        self.count = 0
        self.digest.update(b"[")

    def add(self, item: Any) -> None:
        self.digest.update(((", " if self.count else "") + self.encode(item)).encode())
        self.count += 1

    def close(self) -> None:
        self.digest.update(b"]")

    def hexdigest(self) -> str:
        digest = self.digest.copy()
        digest.update(b"]")
        return digest.hexdigest()[:16]


def fingerprint_with(head: dict[str, Any], key: str, items: Iterable[Any]) -> str:
    """``fingerprint({**head, key: list(items)})`` (or ``fingerprint(list(items))`` with ``key`` ""),
    hashed item by item (`ListHasher`)."""
    if not key:
        hasher = ListHasher()
        for item in items:
            hasher.add(item)
        return hasher.hexdigest()
    digest = hashlib.sha256(b"{")
    encode = json.JSONEncoder(sort_keys=True, default=str).encode
    for index, name in enumerate(sorted({*head, key})):
        digest.update(((", " if index else "") + encode(name) + ": ").encode())
        if name == key:
            hasher = ListHasher(digest)
            for item in items:
                hasher.add(item)
            hasher.close()
        else:
            digest.update(encode(head[name]).encode())
    digest.update(b"}")
    return digest.hexdigest()[:16]


class JsonlIndex(Mapping[Hashable, dict]):
    """A JSONL file as a read-only mapping ``key -> row`` that holds only each key's byte offset
    (the last row of a key wins); a row is parsed from the file when asked for."""

    def __init__(self, path: str | Path, key_fn: Callable[[dict], Hashable]) -> None:
        self.path = Path(path)
        self.key_fn = key_fn
        self.offsets: dict[Hashable, int] = {}
        self._reader: Any = None

    def scan(self, check: Callable[[dict, int], None] | None = None) -> int:
        """Index every whole row (``check(row, line)`` may raise); returns the byte length of the
        whole rows read, which is short of the file's size when the last line is torn (no newline,
        or not valid JSON)."""
        self.offsets = {}
        good_end = 0
        with open(self.path, "rb") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        break
                    if check is not None:
                        check(row, line_no)
                    self.offsets[self.key_fn(row)] = good_end
                good_end += len(line)
        return good_end

    def add(self, key: Hashable, offset: int) -> None:
        self.offsets[key] = offset

    def __getitem__(self, key: Hashable) -> dict:
        offset = self.offsets[key]
        if self._reader is None:
            self._reader = open(self.path, "rb")
        self._reader.seek(offset)  # a seek drops the read buffer: rows appended since are seen
        return json.loads(self._reader.readline())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __contains__(self, key: object) -> bool:
        return key in self.offsets

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)


class StageFile:
    """Append-only, keyed rows of one stage. ``key_fn(row)`` gives a row's resume key.

    Memory does not grow with the rows: only each finished key's byte offset in the partial file is
    kept (`JsonlIndex`), and `write_final` streams the rows back in the caller's order."""

    def __init__(self, out_dir: str | Path, name: str, key_fn: Callable[[dict], Hashable]) -> None:
        self.partial = Path(out_dir) / PARTIAL_DIR / f"{name}.jsonl"
        self.final = Path(out_dir) / f"{name}.jsonl"
        self.key_fn = key_fn
        self.rows = JsonlIndex(self.partial, key_fn)
        self.dropped_torn = 0
        self._fh: Any = None

    def load(self) -> JsonlIndex:
        """Index rows finished by an earlier (possibly killed) run; repair a torn last line."""
        self.rows.close()
        self.rows = JsonlIndex(self.partial, self.key_fn)
        if not self.partial.exists():
            return self.rows
        good_end = self.rows.scan()
        if good_end < self.partial.stat().st_size:
            self.dropped_torn = 1
            with open(self.partial, "r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())
        return self.rows

    @names_path(lambda self, row: self.partial)
    def append(self, row: dict) -> None:
        """Durably append one finished row."""
        if self._fh is None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.partial, "ab")
        self._fh.seek(0, os.SEEK_END)
        offset = self._fh.tell()
        self._fh.write((dumps(row) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows.add(self.key_fn(row), offset)

    def done(self, key: Hashable) -> bool:
        return key in self.rows

    def close(self) -> None:
        self.rows.close()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def write_final(self, order: Iterable[Hashable], each: Callable[[dict], None] | None = None) -> int:
        """Write the final file with the rows in ``order`` (every key must be done), streamed from the
        partial file; ``each(row)`` sees every row written (for running statistics). Drops the
        partial; returns the number of rows."""
        self.close()
        missing: list[Hashable] = []  # the first missing key, then one None per further one

        def rows() -> Iterator[dict]:
            with open(self.partial, "rb") if self.rows else open(os.devnull, "rb") as fh:
                for key in order:
                    if key not in self.rows.offsets:
                        missing.append(None if missing else key)
                        continue
                    if missing:
                        continue
                    fh.seek(self.rows.offsets[key])
                    row = json.loads(fh.readline())
                    if each is not None:
                        each(row)
                    yield row
            if missing:  # raised inside the writer: it removes its temporary file, the old file stays
                raise RuntimeError(f"{self.final.name}: {len(missing)} rows missing at finish, e.g. {missing[0]!r}")

        count = write_jsonl(self.final, rows())
        self.partial.unlink(missing_ok=True)
        return count

    def finish(self, order: list[Hashable]) -> list[dict]:
        """`write_final`, returning the rows (for small stages that want them all)."""
        rows: list[dict] = []
        self.write_final(order, rows.append)
        return rows


class RunState:
    """``DIR/.rlaif/state.json``: per stage, the fingerprint of its settings and its results."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / PARTIAL_DIR / "state.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def check(self, stage: str, fp: str, what: str) -> None:
        """Refuse to continue a stage begun with other settings (the caller offers overwrite)."""
        old = self.data.get(stage, {}).get("fingerprint")
        if old is not None and old != fp:
            raise UserError(f"{self.out_dir}: holds a {stage} stage made with other settings ({what}); "
                            "rerun with overwrite=true to start over, or pick another --out")

    def stage(self, stage: str) -> dict[str, Any]:
        return self.data.get(stage, {})

    def begin(self, stage: str, fp: str, what: str, final: str | None, label: str) -> bool:
        """Resume rule of a stage writing ``DIR/<final>``: False (skip it) if it finished before with the
        same settings fingerprint and its file is there; else refuse other settings (`check`) or a
        ``final`` file this state did not record, mark the stage begun and return True. ``label`` names
        the stage in the log line; ``what`` lists the settings for the refusal."""
        info = self.stage(stage)
        if info.get("fingerprint") == fp and info.get("done") and (final is None or (self.out_dir / final).exists()):
            log(f"{label}: already done in {self.out_dir} (same settings), skipped")
            return False
        self.check(stage, fp, what)
        if not info and final is not None and (self.out_dir / final).exists():
            raise UserError(f"{self.out_dir / final}: exists but was not made by these settings; rerun with "
                            "overwrite=true or pick another --out")
        self.update(stage, fingerprint=fp, done=False)
        return True

    def update(self, stage: str, **values: Any) -> None:
        self.data.setdefault(stage, {}).update(values)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True, default=str))

    def forget(self, *stages: str) -> None:
        for s in stages:
            self.data.pop(s, None)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True, default=str))


def _written(rel: Path, outputs: Iterable[str]) -> bool:
    """Whether ``rel`` (a path under an output folder) is, or lies in, one of ``outputs`` (names or
    glob patterns the command writes and ``--overwrite`` removes) or the partial files' folder."""
    text = rel.as_posix()
    return rel.parts[0] == PARTIAL_DIR or any(
        fnmatch.fnmatch(rel.parts[0], pattern) or text == pattern or text.startswith(pattern.rstrip("/") + "/")
        for pattern in outputs)


def refuse_out_overlap(out: str | Path, inputs: dict[str, str | None], outputs: Iterable[str] | None = None) -> None:
    """One-line UserError, before anything is read or deleted, when ``out`` is an input path, lies
    inside one, or holds one (``outputs``: only an input among what the command writes there; None:
    any). ``inputs`` maps an option name to its value; values that are no existing path (an alias,
    a hub id) are skipped."""
    target = Path(out).expanduser().resolve()
    for name, value in inputs.items():
        if not value or not Path(value).expanduser().exists():
            continue
        path = Path(value).expanduser().resolve()
        if path == target:
            why = "is"
        elif path in target.parents:
            why = "lies inside"
        elif target in path.parents and (outputs is None or _written(path.relative_to(target), list(outputs))):
            why = "holds"
        else:
            continue
        raise UserError(f"option 'out': --out {out} {why} the input {name} {value}; pick another --out "
                        f"(nothing was read or deleted)")


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Atomically write ``DIR/manifest.json`` (sorted keys, so reruns differ only in timings)."""
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(Path(out_dir) / "manifest.json", text)
