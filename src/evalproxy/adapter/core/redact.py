"""Secrets never touch disk: redaction of headers, mappings and text."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

REDACTED = "***"

# A header is secret when one of the words of its name (split at '-' and '_') is one of these: Authorization,
# api-key, X-Api-Key, X-Auth-Token, Ocp-Apim-Subscription-Key, Cookie ... but not x-ratelimit-remaining-tokens.
_SECRET_HEADER_WORDS = frozenset(
    {"authorization", "auth", "key", "apikey", "token", "secret", "password", "passwd", "cookie", "credential",
     "credentials", "signature", "session"}
)
_WORDS = re.compile(r"[-_]")
# Field names whose *values* are secrets wherever they appear in config or saved data. Names are matched whole (or
# by a secret-bearing last part), so start_reasoning_token or max_tokens are never taken for secrets.
_SECRET_FIELD = re.compile(
    r"^(?:.*[_-])?(?:api[_-]?key|apikey|secret|client[_-]secret|password|passwd|authorization|credentials?"
    r"|(?:access|auth|admin|bearer|refresh|id|session|api)[_-]?token)$",
    re.IGNORECASE,
)
# Field names that name an env var rather than hold a secret.
_NAME_FIELD = re.compile(r"_name$|_env$", re.IGNORECASE)
# Query parameters that carry credentials in some providers' URLs (?key=..., ?api-key=..., ?sig=...).
_SECRET_QUERY = re.compile(r"(?i)(api[_-]?key|key|token|secret|sig|signature|password|code)$")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade", "host", "content-length"}
)


@functools.lru_cache(maxsize=1024)
def secret_header(name: str) -> bool:
    """Whether a header carries a credential (by the words of its name; see ``_SECRET_HEADER_WORDS``)."""
    low = name.lower()
    return low == "authorization" or any(w in _SECRET_HEADER_WORDS for w in _WORDS.split(low))


def safe_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers fit to store: secrets (cookies included), hop-by-hop and CORS headers removed."""
    # str(k): multidict's case-insensitive keys are a str subclass that JSON encoders refuse.
    return {str(k): v for k, v in headers
            if k.lower() not in HOP_BY_HOP and not k.lower().startswith("access-control-") and not secret_header(k)}


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers fit to show: secret values replaced by ``***``."""
    return {str(k): (REDACTED if secret_header(k) else v) for k, v in headers}


def secret_query(name: str) -> bool:
    """Whether a URL's query parameter ``name`` carries a credential (``key``, ``api-key``, ``sig``, ...)."""
    return bool(_SECRET_QUERY.search(name))


def redact_url(url: str | None) -> str | None:
    """``url`` without the credentials it may carry: ``https://user:pass@host`` gives ``https://***@host``, and
    ``?key=...`` (any :func:`secret_query` parameter) gives ``?key=***``. The one URL redactor: logs, the status
    page, run records and reports all show URLs through it."""
    if not url or ("@" not in url and "?" not in url):
        return url
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"  # the host as written: an IPv6 one keeps its brackets
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(secret_query(k) for k, _ in pairs):
        query = urlencode([(k, REDACTED if secret_query(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secret_env(name: str, value: str) -> bool:
    """Whether an environment variable holds a credential: by the words of its name, as a header's
    (``HF_TOKEN``, ``WANDB_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD``), or because its value
    is a URL that carries one (``redis://:password@host``, ``https://host/?key=...``)."""
    return secret_header(name) or ("://" in value and redact_url(value) != value)


def redact_obj(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of ``obj`` with secret-named fields and any of the given secret strings redacted."""
    secret_values = [s for s in secrets if s]
    return _redact(obj, secret_values)


_RENAME_MAPS = ("_to_rename",)
"""Config fields whose mapping renames headers or params: what they hold are names."""


def _redact(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            key = str(k)
            secret_field = bool(_SECRET_FIELD.search(key)) and not _NAME_FIELD.search(key)
            if isinstance(v, str) and v and (secret_field or ("-" in key and secret_header(key))):
                out[k] = REDACTED
            elif isinstance(v, str) and "://" in v and "@" in v:
                out[k] = redact_url(redact_text(v, secrets)) or v
            elif key.endswith(_RENAME_MAPS) and isinstance(v, Mapping):
                # A rename map's keys and values are names (X-Old-Auth -> X-New-Auth), never secrets.
                out[k] = {name: redact_text(new, secrets) if isinstance(new, str) else _redact(new, secrets)
                          for name, new in v.items()}
            else:
                out[k] = _redact(v, secrets)
        return out
    if isinstance(obj, list | tuple):
        return [_redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


MIN_SECRET_CHARS = 8
"""A secret shorter than this is replaced in free text only where it is the whole text: a one-character key found
inside words (``max_saved_responses``) would garble the text and, by its ``***``s, point at the key's letters."""


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` and bearer tokens as ``***`` (a short secret only when it is all of it)."""
    for s in secrets:
        if s and s in text and (len(s) >= MIN_SECRET_CHARS or s == text):
            text = text.replace(s, REDACTED)
    return _BEARER.sub(r"\1" + REDACTED, text) if "earer" in text else text


MAX_LOGGED_CHARS = 10_000


def clip(obj: Any, limit: int = MAX_LOGGED_CHARS) -> str:
    """``obj`` as text for a log line (JSON unless it is a string), cut at ``limit`` characters."""
    text = obj if isinstance(obj, str) else orjson.dumps(obj, default=str).decode()
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
