"""Writing a streamed answer to the client, and ending it honestly when it breaks.

Events that are ready together leave in one write: under load the upstream's events come in bunches, and a write
per event was a fifth of the proxy's CPU per stream. The transport marks an event that has another right behind it
in the same network read (``Event.more``); the writer holds such an event, and then starts the stream's next step
itself: only if that step has to wait (a layer dropped the successor, or waits on its own) does it first write what
it holds. No event ever waits for one that has not arrived, whatever the layers between the transport and here do
with the events, and an event with nothing behind it is written at once, with no extra work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Generator
from typing import Any

from aiohttp import web

from evalproxy.adapter.core.errors import ProxyError
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.server.prometheus import Prometheus

log = logging.getLogger("evalproxy.server")


class ClientStream:
    """The client's side of a stream: events held until the stream would wait, then written at once."""

    __slots__ = ("gone", "held", "out")

    def __init__(self, out: web.StreamResponse) -> None:
        self.out = out
        self.held: list[bytes] = []
        self.gone = False

    async def flush(self) -> None:
        if not self.held:
            return
        data = self.held[0] if len(self.held) == 1 else b"".join(self.held)
        self.held.clear()
        if self.gone:
            return
        try:
            await self.out.write(data)
        except (ConnectionResetError, OSError):
            self.gone = True
            log.info("client went away mid-stream; finishing the upstream answer for the cache")


class _Resumed:
    """Await the rest of a step that was started by hand and suspended on ``first`` (what it gave its task)."""

    __slots__ = ("first", "step")

    def __init__(self, step: Any, first: Any) -> None:
        self.step, self.first = step, first

    def __await__(self) -> Generator[Any, Any, Event]:
        step, waiting_on = self.step, self.first
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # thrown in by the task (a cancellation): pass it on to the step
                try:
                    waiting_on = step.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                continue
            try:
                waiting_on = step.send(sent)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


async def _next(events: AsyncIterator[Event], sink: ClientStream) -> Event:
    """The stream's next event; if it is not ready at once, what ``sink`` holds is written before waiting for it.
    Raises StopAsyncIteration at the end, as ``anext`` does."""
    step: Any = events.__anext__()
    try:
        waiting_on = step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]  # ready without waiting
    await sink.flush()
    return await _Resumed(step, waiting_on)


def _without_usage(event: Event) -> Event | None:
    """``event`` without the usage the proxy asked for on the client's behalf: a usage-only chunk is dropped."""
    obj = event.json
    if not isinstance(obj, dict) or "usage" not in obj:
        return event
    if not obj.get("choices"):
        return None
    return Event.of({k: v for k, v in obj.items() if k != "usage"})


async def write_stream(request: web.Request, ctx: RequestContext | None, resp: ProxyResponse,
                       prometheus: Prometheus, *, hide_usage: bool = False) -> tuple[web.StreamResponse, int]:
    """Write a stream; (the response, the status the request is counted with).

    ``hide_usage``: the usage in the stream was asked for by the proxy, not the client (it is cached and counted
    with the answer): it is taken out of what the client gets. Either way the last usage seen is left in
    ``resp.stream_usage`` for observers. A failure while the stream is read (the upstream broke off, an interceptor
    failed) ends the client's stream with an OpenAI-shaped error event and counts the request with the error's
    status, not the 200 already sent. A client that leaves does not stop the reading: the answer is being paid for,
    and the cache stores it once whole.
    """
    assert resp.stream is not None
    out = web.StreamResponse(status=resp.status, headers=resp.headers)
    status = resp.status
    sink = ClientStream(out)
    try:
        await out.prepare(request)
    except (ConnectionResetError, OSError):
        sink.gone = True
    error: ProxyError | None = None
    first = ctx is not None
    events = resp.stream.__aiter__()
    try:
        while True:
            try:
                # Nothing held: wait as anyone would. Something held: the next step may not wait before it is written.
                event: Event | None = await _next(events, sink) if sink.held else await anext(events)
            except StopAsyncIteration:
                break
            assert event is not None
            if b'"usage"' in event.raw and not event.is_done:
                usage = event.json.get("usage") if isinstance(event.json, dict) else None
                if isinstance(usage, dict):
                    resp.stream_usage = usage
                if hide_usage and (event := _without_usage(event)) is None:
                    continue
            if not sink.gone:
                sink.held.append(event.raw)
                if first:  # the first event leaves at once: time to first token is the client's
                    first = False
                    await sink.flush()
                    assert ctx is not None
                    prometheus.ttft_seconds.observe(time.perf_counter() - ctx.started)
                elif not event.more:  # nothing is right behind it: write now, and wait as anyone would
                    await sink.flush()
    except ProxyError as exc:
        error = exc
        log.warning("stream ended with an error: %s", exc.message)
    except Exception as exc:
        log.exception("internal error in the middle of a stream")
        error = ProxyError(f"internal proxy error: {type(exc).__name__}: {exc}")
    if error is not None:
        status = error.status
        prometheus.errors.labels(error.code or error.type).inc()
        sink.held.append(b"data: " + error.to_json() + b"\n\n")
    await sink.flush()
    if not sink.gone:
        with contextlib.suppress(ConnectionResetError, OSError):
            await out.write_eof()
    return out, status


__all__ = ["ClientStream", "write_stream"]
