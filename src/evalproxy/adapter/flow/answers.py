"""The one way to read or change answers, written once for whole answers and streams alike.

A response-side interceptor subclasses :class:`AnswerHandler` and hands each answer to :func:`handle`:

* :meth:`AnswerHandler.on_object` sees every JSON object of the answer: the whole body once (``whole=True``), or
  each event of a stream as it passes (``whole=False``). It may change the object in place and return True; the
  body is then serialised again, or the event replaced by one carrying the changed object. Events it leaves alone
  pass byte for byte, and each event is parsed at most once however many layers look at it.
* :meth:`AnswerHandler.on_end` is awaited once, when the answer is complete: right after the body was seen, or when
  a stream reaches ``[DONE]`` (before ``[DONE]`` is passed on, so a cache can store the answer before the client
  sees its end) or ends without it. For streams it may return objects to send before the end.
* :meth:`AnswerHandler.on_error` is awaited instead when a stream breaks off, fails or is abandoned by its reader.

With ``keep_events``, :meth:`on_end` receives the stream's events (for storing them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.shape import assemble_stream
from evalproxy.adapter.flow.sse import Event


def whole_answer(resp: ProxyResponse, events: list[Event] | None) -> Any:
    """The complete answer, as :meth:`AnswerHandler.on_end` of a ``keep_events`` handler sees it: a stream's events
    assembled into one object (:func:`~evalproxy.adapter.flow.shape.assemble_stream`), else the body (its JSON, or
    its bytes)."""
    if events is not None:
        return assemble_stream(events)
    return resp.json if resp.json is not None else resp.body


class AnswerHandler:
    """What one interceptor does with one answer. A new handler is made per answer (it may keep state)."""

    keep_events: ClassVar[bool] = False
    """Hand the stream's events to :meth:`on_end` (a cache needs them; most handlers do not)."""

    def on_object(self, obj: dict[str, Any], whole: bool) -> bool:
        """See (and optionally change in place) one JSON object of the answer; True if it was changed."""
        return False

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        """The answer is complete. ``events``: the stream's events with ``keep_events`` (None for whole answers).

        Returns objects to send before the stream's end (ignored for whole answers)."""
        return []

    async def on_error(self, exc: BaseException) -> None:
        """The stream did not complete: it broke off, failed, or its reader stopped reading."""


async def handle(resp: ProxyResponse, handler: AnswerHandler) -> ProxyResponse:
    """Run ``handler`` over ``resp``: now for a whole body, as the events pass for a stream. Returns ``resp``."""
    if resp.stream is not None:
        resp.stream = _stream(resp.stream, handler)
        return resp
    body = resp.json
    if isinstance(body, dict) and handler.on_object(body, True):
        resp.set_json(body)
    await handler.on_end(None)
    return resp


async def _stream(events: AsyncIterator[Event], handler: AnswerHandler) -> AsyncIterator[Event]:
    kept: list[Event] | None = [] if handler.keep_events else None
    ended = False
    try:
        on_object = handler.on_object
        async for event in events:
            obj = event.json
            if isinstance(obj, dict):  # first: most events are objects, and [DONE] is not one
                if on_object(obj, False):
                    event = Event.of(obj)
            elif event.is_done:
                ended = True
                if kept is not None:
                    kept.append(event)
                for extra in await handler.on_end(kept):
                    yield Event.of(extra)
                yield event
                continue
            if kept is not None:
                kept.append(event)
            yield event
        if not ended:
            ended = True
            for extra in await handler.on_end(kept):
                yield Event.of(extra)
    except BaseException as exc:
        if not ended:
            await handler.on_error(exc)
        raise
