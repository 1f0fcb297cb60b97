"""One row of a candidates/JSONL file, read as a prompt and the responses to judge.

`rlaif rubric preview --from FILE --row N` judges line N of a candidates file (``messages`` and
``responses``, with the policy engine's ``finish_reasons`` and ``num_tokens`` for rules checks) or
of any JSONL whose rows have ``prompt`` and ``response``, or ``response_a`` and ``response_b``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.errors import UserError, where
from rlaif.io.records import as_messages, iter_jsonl


@dataclass
class CandidateRow:
    id: str
    messages: list[dict[str, str]]
    responses: list[str]
    finish_reasons: list[str] | None = None  # the policy engine's, per response
    num_tokens: list[int] | None = None  # the policy engine's token counts, per response


def jsonl_row(path: Path, row: int) -> dict[str, Any]:
    """The JSON object on line ``row`` (1-based) of a JSONL file."""
    if row < 1:
        raise UserError(f"--row {row}: lines are numbered from 1")
    for line, record in iter_jsonl(path):
        if line == row:
            if not isinstance(record, dict):
                raise UserError(f"{where(path, row)}expected a JSON object")
            return record
        if line > row:
            break
    raise UserError(f"{path}: --row {row}: no JSON on that line (blank, or past the end of the file)")


def _responses(record: dict[str, Any], path: Path, row: int) -> list[str]:
    if isinstance(record.get("responses"), list):
        responses = record["responses"]
    elif "response_a" in record:
        responses = [record["response_a"], record.get("response_b", "")]
    elif "response" in record:
        responses = [record["response"]]
    else:
        raise UserError(f"{where(path, row, 'responses')}expected 'responses' (list), 'response' or 'response_a'")
    if not all(isinstance(response, str) for response in responses):
        raise UserError(f"{where(path, row, 'responses')}expected strings")
    return responses


def candidate_row(path: Path, row: int) -> CandidateRow:
    """Line ``row`` of a candidates/JSONL file: its prompt (``messages`` or ``prompt``) and responses."""
    record = jsonl_row(path, row)
    if isinstance(record.get("messages"), list):
        messages = record["messages"]
    elif isinstance(record.get("prompt"), str):
        messages = as_messages(record["prompt"])
    else:
        raise UserError(f"{where(path, row, 'prompt')}expected 'prompt' (string) or 'messages' (list)")
    responses = _responses(record, path, row)
    finish, tokens = record.get("finish_reasons"), record.get("num_tokens")
    return CandidateRow(str(record.get("id", f"{path.name}:{row}")), messages, responses,
                        finish_reasons=finish if isinstance(finish, list) else None,
                        num_tokens=tokens if isinstance(tokens, list) else None)
