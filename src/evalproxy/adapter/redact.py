"""Secrets never touch disk: redaction of headers, mappings and text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

REDACTED = "***"

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "openai-api-key", "cookie", "set-cookie",
     "x-goog-api-key", "x-admin-token"}
)
# Field names whose *values* are secrets wherever they appear in config or saved data.
_SECRET_FIELD = re.compile(r"(^|_)(api_?key|token|secret|password|authorization)$", re.IGNORECASE)
# Field names that name an env var rather than hold a secret.
_NAME_FIELD = re.compile(r"_name$|_env$", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade", "host", "content-length"}
)


def is_secret_header(name: str) -> bool:
    return name.lower() in SECRET_HEADERS


def safe_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers fit to store: secrets and hop-by-hop headers removed."""
    # str(k): multidict's case-insensitive keys are a str subclass that JSON encoders refuse.
    return {str(k): v for k, v in headers if k.lower() not in SECRET_HEADERS and k.lower() not in HOP_BY_HOP}


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers fit to show: secret values replaced by ``***``."""
    return {str(k): (REDACTED if k.lower() in SECRET_HEADERS else v) for k, v in headers}


def redact_obj(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``obj`` with secret-named fields and any of the given secret strings redacted."""
    secret_values = [s for s in secrets if s]
    return _redact(obj, secret_values)


def _redact(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            key = str(k)
            secret_field = bool(_SECRET_FIELD.search(key)) and not _NAME_FIELD.search(key)
            if isinstance(v, str) and v and (secret_field or key.lower() in SECRET_HEADERS):
                out[k] = REDACTED
            else:
                out[k] = _redact(v, secrets)
        return out
    if isinstance(obj, list | tuple):
        return [_redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for s in secrets:
        if s and s in text:
            text = text.replace(s, REDACTED)
    return _BEARER.sub(r"\1" + REDACTED, text) if "earer" in text else text


MAX_LOGGED_CHARS = 10_000


def clip(obj: Any, limit: int = MAX_LOGGED_CHARS) -> str:
    """``obj`` as text for a log line (JSON unless it is a string), cut at ``limit`` characters."""
    text = obj if isinstance(obj, str) else orjson.dumps(obj, default=str).decode()
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
