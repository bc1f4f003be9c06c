"""Server-sent events as the chain sees them: one :class:`Event` per complete event.

OpenAI streams are ``data: {json}\\n\\n`` events ended by ``data: [DONE]\\n\\n``. An :class:`Event` keeps the bytes
as they came and parses its JSON at most once, however many layers read it; a layer that changes an event makes a new
one from the changed object, and its bytes are serialised once, when they are needed.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE_DATA = b"[DONE]"


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event, or None if it has none (a comment or keep-alive)."""
    if event.startswith(b"data: ") and event.count(b"\n") <= 2 and b"\r" not in event:
        # The common shape, one data line: avoid splitting.
        return event[6:].rstrip(b"\n")
    parts: list[bytes] = []
    for line in event.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            parts.append(value)
    if not parts:
        return None
    return b"\n".join(parts)


def event_json(event: bytes) -> Any:
    """The JSON payload of an event, or None for ``[DONE]``, comments and data that is not JSON."""
    data = event_data(event)
    if data is None or data == DONE_DATA:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def make_event(payload: Any) -> bytes:
    """A ``data:`` event carrying ``payload`` (bytes are used as they are, anything else as JSON)."""
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


DONE_EVENT = b"data: [DONE]\n\n"
_UNSET: Any = object()


class Event:
    """One server-sent event: its bytes and, parsed on first use and then kept, its JSON payload."""

    __slots__ = ("_json", "_raw", "more")

    def __init__(self, raw: bytes | None = None, json: Any = _UNSET, *, more: bool = False) -> None:
        self._raw = raw
        self._json = json
        self.more = more
        """A hint from the transport: another event came in the same network read, right behind this one (the
        server may write both at once). A layer that makes a new event leaves it False: written at once."""

    @classmethod
    def of(cls, payload: Any) -> Event:
        """An event carrying ``payload`` (a JSON object), serialised when its bytes are first needed."""
        return cls(None, payload)

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = make_event(self._json)
        return self._raw

    @property
    def json(self) -> Any:
        """The JSON payload, or None for ``[DONE]``, comments and data that is not JSON."""
        if self._json is _UNSET:
            self._json = event_json(self._raw or b"")
        return self._json

    @property
    def is_done(self) -> bool:
        return self._raw == DONE_EVENT

    def __repr__(self) -> str:
        return f"<Event {self.raw[:60]!r}>"


DONE = Event(DONE_EVENT, None)
"""The final ``data: [DONE]`` event."""

