"""Credentials out of URLs before they are written or printed: ``https://user:secret@host/v1``
becomes ``https://***@host/v1`` and key-like query values (``api_key=...``, ``token=...``) become
``***``. `redact` applies it to every URL inside a string, a list or a dict (configs, error lines)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_SECRET_PARAM = re.compile(r"(?i)^(api[_-]?key|key|token|access[_-]?token|secret|password|passwd|pwd|sig|signature|"
                           r"auth|authorization|credential|credentials)$")


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&") if query else []:
        name, eq, _ = item.partition("=")
        parts.append(f"{name}={MASK}" if eq and _SECRET_PARAM.match(name) else item)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` without its user:password and with key-like query values masked; unchanged if neither."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = _redact_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(value: Any) -> Any:
    """``value`` with every URL in it redacted: strings (each URL inside), lists, tuples and dicts
    (values), recursively; anything else unchanged."""
    if isinstance(value, str):
        return _URL.sub(lambda m: redact_url(m.group(0)), value) if "://" in value else value
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    return value
