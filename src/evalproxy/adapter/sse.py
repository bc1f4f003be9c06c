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


def assemble_stream(events: list[bytes]) -> dict[str, Any] | None:
    """One chat.completion (or text_completion) object built from the events of a stream, for reports and stats."""
    out: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    for event in events:
        obj = event_json(event)
        if not isinstance(obj, dict):
            continue
        if out is None:
            kind = "text_completion" if obj.get("object") == "text_completion" else "chat.completion"
            out = {"id": obj.get("id"), "object": kind, "created": obj.get("created"), "model": obj.get("model")}
        for ch in obj.get("choices") or ():
            if not isinstance(ch, dict):
                continue
            idx = ch.get("index", 0)
            delta = ch.get("delta")
            if isinstance(delta, dict):
                c = choices.setdefault(idx, {"index": idx, "message": {"role": "assistant", "content": ""},
                                             "finish_reason": None})
                msg = c["message"]
                if isinstance(delta.get("content"), str):
                    msg["content"] += delta["content"]
                if isinstance(delta.get("reasoning_content"), str):
                    msg["reasoning_content"] = msg.get("reasoning_content", "") + delta["reasoning_content"]
                if delta.get("tool_calls"):
                    msg.setdefault("tool_calls", []).extend(delta["tool_calls"])
            elif isinstance(ch.get("text"), str):
                c = choices.setdefault(idx, {"index": idx, "text": "", "finish_reason": None})
                c["text"] = c.get("text", "") + ch["text"]
            else:
                c = choices.setdefault(idx, {"index": idx, "finish_reason": None})
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]
        if obj.get("usage"):
            out["usage"] = obj["usage"]
    if out is None:
        return None
    out["choices"] = [choices[i] for i in sorted(choices)]
    return out
