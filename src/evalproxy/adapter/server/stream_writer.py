"""Writing a streamed answer to the client, event by event, and ending it honestly when it breaks."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from evalproxy.adapter.core.errors import ProxyError
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.state import EVENTS_AT_HAND, WRITE_HELD
from evalproxy.adapter.server.forwarding import outgoing_headers
from evalproxy.adapter.server.prometheus import Prometheus

log = logging.getLogger("evalproxy.server")


class ClientStream:
    """The client's side of a stream. An event whose successor has already arrived (the transport says so with
    :data:`EVENTS_AT_HAND`) is held and leaves with it in one write: under load the upstream's events come in
    bunches, and a write per event was a fifth of the proxy's CPU per stream. The transport flushes what is held
    before it waits for the network (:data:`WRITE_HELD`), so no event ever waits for one that has not arrived."""

    __slots__ = ("gone", "held", "out")

    def __init__(self, out: web.StreamResponse) -> None:
        self.out = out
        self.held: list[bytes] = []
        self.gone = False

    async def send(self, data: bytes) -> None:
        if self.held:
            self.held.append(data)
            data = b"".join(self.held)
            self.held.clear()
        if self.gone:
            return
        try:
            await self.out.write(data)
        except (ConnectionResetError, OSError):
            self.gone = True
            log.info("client went away mid-stream; finishing the upstream answer for the cache")

    def write_held(self) -> Coroutine[Any, Any, None] | None:
        """The write of what is held, to await; None if nothing is (no coroutine made for nothing, per event)."""
        return self.send(b"") if self.held else None


async def write_stream(request: web.Request, ctx: RequestContext | None, resp: ProxyResponse,
                       prometheus: Prometheus) -> tuple[web.StreamResponse, int]:
    """Write a stream event by event; (the response, the status the request is counted with).

    A failure while the stream is read (the upstream broke off, an interceptor failed) ends the client's stream
    with an OpenAI-shaped error event and counts the request with the error's status, not the 200 already sent. A
    client that leaves does not stop the reading: the answer is being paid for, and the cache stores it once whole.
    """
    assert resp.stream is not None
    out = web.StreamResponse(status=resp.status, headers=outgoing_headers(resp.headers))
    status = resp.status
    sink = ClientStream(out)
    first = True
    try:
        await out.prepare(request)
    except (ConnectionResetError, OSError):
        sink.gone = True
    error: ProxyError | None = None
    state = ctx.state if ctx is not None else None
    if state is not None:
        state[WRITE_HELD] = sink.write_held
    try:
        async for event in resp.stream:
            if sink.gone:
                continue
            if state is not None and state.get(EVENTS_AT_HAND, False) and not event.is_done:
                sink.held.append(event.raw)  # the next event is already here: both leave in one write
                continue
            await sink.send(event.raw)
            if first and not sink.gone and ctx is not None:
                first = False
                prometheus.ttft_seconds.observe(time.perf_counter() - ctx.started)
    except ProxyError as exc:
        error = exc
        log.warning("stream ended with an error: %s", exc.message)
    except Exception as exc:
        log.exception("internal error in the middle of a stream")
        error = ProxyError(f"internal proxy error: {type(exc).__name__}: {exc}")
    if error is not None:
        status = error.status
        prometheus.errors.labels(error.code or error.type).inc()
        await sink.send(b"data: " + error.to_json() + b"\n\n")
    held = sink.write_held()
    if held is not None:
        await held
    if not sink.gone:
        with contextlib.suppress(ConnectionResetError, OSError):
            await out.write_eof()
    return out, status
