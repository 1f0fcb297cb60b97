"""Records that flow through the pipeline, their JSON schemas, and reading prompt files.

A prompt file is one of:
- JSONL: one object a line with ``prompt`` (a string) or ``messages`` (a chat conversation),
  an optional ``id``; every other field is kept as ``metadata``;
- ``.txt``: one prompt a line (blank lines skipped);
- ``.parquet`` / ``.json`` / ``.jsonl`` datasets read with a ``prompt_column`` naming the column
  that holds the prompt string or the messages list.

Errors name the file, line (or row) and field. Ids must be unique; a prompt without one gets a
stable content hash, so rerunning on the same file gives the same ids (and the same seeds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema

from rlaif.errors import UserError, where
from rlaif.shipped import shipped_dir

ROLES = ["system", "user", "assistant"]

MESSAGES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"enum": ROLES}, "content": {"type": "string"}},
    },
}

PROMPT_LINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": ["string", "integer"]},
        "prompt": {"type": "string", "minLength": 1},
        "messages": MESSAGES_SCHEMA,
    },
    "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
}

# A user-made candidates file for `rlaif judge`.
CANDIDATES_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **PROMPT_LINE_SCHEMA["properties"],
        "responses": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    },
    "required": ["responses"],
    "oneOf": PROMPT_LINE_SCHEMA["oneOf"],
}

CANDIDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "messages", "responses", "num_tokens", "finish_reasons", "policy", "seed", "metadata"],
    "properties": {
        "id": {"type": "string"},
        "messages": MESSAGES_SCHEMA,
        "responses": {"type": "array", "items": {"type": "string"}},
        "num_tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "finish_reasons": {"type": "array", "items": {"type": "string"}},
        "policy": {"type": "string"},
        "seed": {"type": "integer"},
        "metadata": {"type": "object"},
    },
}

JUDGEMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "rubric", "method", "judge", "scale", "scores", "details", "comparisons", "failures"],
    "properties": {
        "id": {"type": "string"},
        "rubric": {"type": "string"},
        "method": {"enum": ["logprob", "verdict", "pairwise", "likelihood", "rules", "criteria"]},
        "judge": {"type": "string"},
        "scale": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "scores": {"type": "array", "items": {"type": ["number", "null"]}},
        "details": {"type": "array", "items": {"type": "object"}},
        "comparisons": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["i", "j", "p", "consistent"],
                "properties": {"i": {"type": "integer"}, "j": {"type": "integer"},
                               "p": {"type": ["number", "null"]}, "consistent": {"type": ["boolean", "null"]}},
            },
        },
        "failures": {"type": "integer", "minimum": 0},
    },
}

_ASSISTANT_TURN = {
    "type": "array", "minItems": 1, "maxItems": 1,
    "items": {"type": "object", "required": ["role", "content"],
              "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}},
}

PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt", "chosen", "rejected", "id", "score_chosen", "score_rejected", "margin",
                 "rubric", "judge", "policy"],
    "properties": {
        "prompt": MESSAGES_SCHEMA,
        "chosen": _ASSISTANT_TURN,
        "rejected": _ASSISTANT_TURN,
        "id": {"type": "string"},
        "score_chosen": {"type": ["number", "null"]},  # null: a pair a person added on an unscored response
        "score_rejected": {"type": ["number", "null"]},
        "margin": {"type": "number", "minimum": 0},
        "rubric": {"type": "string"},
        "judge": {"type": "string"},
        "policy": {"type": "string"},
        "label_source": {"enum": ["person"]},  # present on pairs a person decided (`rlaif build --labels`)
    },
}


def validate(row: Any, schema: dict[str, Any], path: str | Path | None = None, line: int | None = None) -> None:
    """Raise a one-line UserError naming file, line and the offending field if ``row`` is invalid."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(row))
    if error is None:
        return
    field_name = ".".join(str(p) for p in error.absolute_path) or None
    message = error.message
    if error.validator == "oneOf" and isinstance(row, dict):
        has = [k for k in ("prompt", "messages") if k in row]
        message = ("expected exactly one of 'prompt' or 'messages', found both" if len(has) == 2
                   else "missing 'prompt' (a string) or 'messages' (a list of {role, content})")
    if len(message) > 160:
        message = message[:157] + "..."
    raise UserError(f"{where(path, line, field_name)}{message}")


@dataclass
class Prompt:
    """One prompt: a chat conversation ending where the assistant should speak."""

    id: str
    messages: list[dict[str, str]]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line", for error messages; not written out


def content_id(messages: list[dict[str, str]]) -> str:
    """Stable id from content: the first 16 hex digits of sha256 over the canonical JSON."""
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def as_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user turn; a message list is copied."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _prompt_from_row(row: Any, path: Path, line: int, schema: dict[str, Any], column: str) -> tuple[Prompt, dict]:
    if isinstance(row, dict) and column != "prompt" and column in row and "prompt" not in row:
        value = row[column]
        key = "messages" if isinstance(value, list) else "prompt"
        row = {key: value, **{k: v for k, v in row.items() if k != column}}
    validate(row, schema, path, line)
    messages = as_messages(row.get("messages") or row["prompt"])
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if messages[-1]["role"] == "assistant":
        raise UserError(f"{where(path, line, 'messages')}the last message is the assistant's; "
                        "a prompt must end with a user (or system) turn")
    pid = str(row["id"]) if row.get("id") is not None else content_id(messages)
    metadata = {k: v for k, v in row.items() if k not in ("id", "prompt", "messages", "responses")}
    return Prompt(pid, messages, metadata, f"{path}:{line}"), row


def iter_jsonl(path: str | Path, objects_only: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSONL file.

    A missing file, a malformed line, or (with ``objects_only``) a line that is not a JSON object
    is a one-line UserError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    for line_no, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, line_no)}malformed JSON ({e.msg} at column {e.colno})") from None
        if objects_only and not isinstance(value, dict):
            raise UserError(f"{where(path, line_no)}expected a JSON object")
        yield line_no, value


def not_utf8(path: Path) -> UserError:
    """The one-line error for a file that is not UTF-8 text, naming the line of the first bad byte."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        return UserError(f"{where(path, line)}not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                         "save the file as UTF-8")
    return UserError(f"{path}: not UTF-8 text")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file; bytes that are not UTF-8 are a UserError."""
    try:
        with open(path, encoding="utf-8") as fh:
            yield from enumerate(fh, 1)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_text(path: Path) -> str:
    """A whole UTF-8 text file; bytes that are not UTF-8 are a UserError naming the line."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _dataset_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a parquet (read in batches) or JSON-array (read whole: JSON has no rows to stream)
    dataset, numbered from 1 (the 'line' in errors is the row)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
            line = 0
            for batch in batches:  # one batch at a time: a big file is never held whole
                for row in batch.to_pylist():
                    line += 1
                    yield line, row
        except Exception as e:
            raise UserError(f"{path}: unreadable parquet file ({type(e).__name__}: {e})") from None
        return
    else:
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, e.lineno)}malformed JSON ({e.msg})") from None
        if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}: the single list inside
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise UserError(f"{path}: expected a JSON list of rows (or an object holding one list)")
            data = lists[0]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of rows")
    yield from enumerate(data, 1)


def read_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for a .jsonl / .json / .parquet / .txt file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".txt":
        for line_no, line in _text_lines(path):
            if line.strip():
                yield line_no, {"prompt": line.rstrip("\n")}
    elif path.suffix in (".parquet", ".json"):
        yield from _dataset_rows(path)
    else:
        yield from iter_jsonl(path)


def _unique(make: Callable[[], Iterator[tuple[str, str, Any]]], path: Path) -> Iterator[Any]:
    """The values of ``make()``'s (id, file:line, value) triples, refusing a duplicate id (naming both
    lines) and an empty file. Holds only the ids seen; a duplicate's first line is found by reading again."""
    seen: set[str] = set()
    for pid, source, value in make():
        if pid in seen:
            first = next(src for other, src, _ in make() if other == pid)
            raise UserError(f"{source}: field 'id': duplicate id '{pid}' (first at {first})")
        seen.add(pid)
        yield value
    if not seen:
        raise UserError(f"{path}: no prompts in the file")


def prompts_path(path: str | Path) -> Path:
    """A prompt file's path, or the name of a shipped prompt set (``demo`` -> the shipped
    ``prompts/demo.jsonl``), so `--prompts demo` works from any folder. An existing file wins."""
    path = Path(path)
    if path.is_file() or path.suffix or len(path.parts) > 1:
        return path
    shipped = shipped_dir("prompts") / f"{path.name}.jsonl"
    return shipped if shipped.is_file() else path


def iter_prompts(path: str | Path, prompt_column: str = "prompt") -> Iterator[Prompt]:
    """Read and validate a prompt file row by row, or a shipped set by name (see the module
    docstring and `prompts_path`): nothing but the ids seen is held. Raises UserError on bad input."""
    path = prompts_path(path)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in shipped_dir("prompts").glob("*.jsonl")))
        raise UserError(f"{path}: file not found (give a prompt file, or a shipped prompt set: {names})")

    def make() -> Iterator[tuple[str, str, Prompt]]:
        for line, row in read_rows(path):
            prompt = _prompt_from_row(row, path, line, PROMPT_LINE_SCHEMA, prompt_column)[0]
            yield prompt.id, prompt.source, prompt

    return _unique(make, path)


def read_prompts(path: str | Path, prompt_column: str = "prompt") -> list[Prompt]:
    """Every prompt of a file (`iter_prompts`) as a list."""
    return list(iter_prompts(path, prompt_column))


def iter_candidate_sources(path: str | Path, prompt_column: str = "prompt") -> Iterator[tuple[dict[str, Any], str]]:
    """Candidates, row by row, with each row's ``file:line``: the output of `rlaif generate`, or a
    user JSONL of ``{"id"?, "prompt" | "messages", "responses": [...]}``; rows in the candidates schema."""
    path = Path(path)

    def make() -> Iterator[tuple[str, str, tuple[dict[str, Any], str]]]:
        for line, row in read_rows(path):
            source = f"{path}:{line}"
            if isinstance(row, dict) and "num_tokens" in row and "policy" in row:  # written by generate
                validate(row, CANDIDATE_SCHEMA, path, line)
                yield row["id"], source, (row, source)
                continue
            prompt, raw = _prompt_from_row(row, path, line, CANDIDATES_INPUT_SCHEMA, prompt_column)
            responses = raw["responses"]
            yield prompt.id, source, ({"id": prompt.id, "messages": prompt.messages, "responses": responses,
                                       "num_tokens": [len(r.split()) for r in responses],  # words: no tokenizer
                                       "finish_reasons": ["unknown"] * len(responses), "policy": "user",
                                       "seed": 0, "metadata": prompt.metadata}, source)

    return _unique(make, path)


def read_candidates(path: str | Path, prompt_column: str = "prompt") -> list[dict[str, Any]]:
    """Every candidates row of a file (`iter_candidate_sources`) as a list."""
    return [row for row, _ in iter_candidate_sources(path, prompt_column)]


def read_candidate_sources(path: str | Path,
                           prompt_column: str = "prompt") -> tuple[list[dict[str, Any]], dict[str, str]]:
    """`read_candidates`, and each row's ``file:line`` by id (for error messages)."""
    rows, sources = [], {}
    for row, source in iter_candidate_sources(path, prompt_column):
        rows.append(row)
        sources[row["id"]] = source
    return rows, sources


def iter_jsonl_rows(path: str | Path, schema: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file written by the pipeline, one at a time, each validated against ``schema``."""
    validator = jsonschema.Draft202012Validator(schema) if schema is not None else None
    for line, row in iter_jsonl(path):
        if validator is not None and next(validator.iter_errors(row), None) is not None:
            validate(row, schema, path, line)  # type: ignore[arg-type]
        yield row


@dataclass(frozen=True)
class JsonlRows:
    """The rows of a JSONL file, read afresh (one at a time) at each call: a stage's input that is
    never held whole. ``schema``: validate each row (`iter_jsonl_rows`)."""

    path: Path
    schema: dict[str, Any] | None = None

    def __call__(self) -> Iterator[dict[str, Any]]:
        return iter_jsonl_rows(self.path, self.schema)


def read_jsonl(path: str | Path, schema: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file written by the pipeline, validating each row against ``schema``."""
    return list(iter_jsonl_rows(path, schema))


def dumps(row: dict[str, Any]) -> str:
    """The one canonical way rows are serialised (so reruns give byte-identical files)."""
    return json.dumps(row, ensure_ascii=False, separators=(", ", ": "))
