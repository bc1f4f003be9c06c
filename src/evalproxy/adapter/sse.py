"""Server-sent events as the chain sees them: one complete event per item, as bytes.

OpenAI streams are ``data: {json}\\n\\n`` events ended by ``data: [DONE]\\n\\n``. Helpers here read the data of an
event, build one, and observe a stream without owning it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

log = logging.getLogger("evalproxy.sse")

DONE = b"[DONE]"


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
    if data is None or data == DONE:
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


async def tap(
    stream: AsyncIterator[bytes],
    on_event: Callable[[bytes], None] | None = None,
    on_complete: Callable[[], None] | None = None,
    *,
    name: str = "stream",
) -> AsyncIterator[bytes]:
    """Pass ``stream`` through unchanged while telling observers about it.

    ``on_event`` sees every event, ``on_complete`` is called once only if the stream ended normally (an upstream
    error or a cancelled stream never completes). Observer failures are logged and never break the stream: observers
    are for statistics and storage, not for the answer itself.
    """
    broken = False
    async for event in stream:
        if on_event is not None and not broken:
            try:
                on_event(event)
            except Exception:
                broken = True
                log.exception("%s: observer failed; it sees no more events of this stream", name)
        yield event
    if on_complete is not None and not broken:
        try:
            on_complete()
        except Exception:
            log.exception("%s: completion observer failed", name)
