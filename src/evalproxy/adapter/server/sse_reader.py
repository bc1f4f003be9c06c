"""Reading the upstream's streams: SSE events split from the bytes as they come, within their bounds, and one
watchdog for every open stream of a transport.

What a stream may hold is bounded: ``max_answer_bytes`` in all, ``max_sse_line_bytes`` for one event not yet ended
by a blank line; past either, reading stops (:class:`AnswerTooLargeError`). A stream may take long in total, but must
not go silent for longer than ``request_timeout``: one watchdog looks at every open stream a few times per
``request_timeout`` and closes those that are (aiohttp's ``sock_read`` re-arms a timer on every chunk: 7-14 % of a
stream's CPU).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp

from evalproxy.adapter.core.errors import AnswerTooLargeError, UpstreamProtocolError, UpstreamTimeoutError
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.flow.state import UPSTREAM_SECONDS
from evalproxy.adapter.server.prometheus import Prometheus


def answer_too_large(limit: int, what: str) -> AnswerTooLargeError:
    """The error of an answer (whole or a stream) that ``what`` (went past, declares more than) ``limit`` allows."""
    return AnswerTooLargeError(
        f"the upstream's answer {what} ({limit} bytes); it was not read further nor kept "
        f"(raise server.max_answer_bytes if such answers are expected)")


def event_too_large(limit: int) -> AnswerTooLargeError:
    return AnswerTooLargeError(
        f"the upstream's stream held an event (or line) longer than max_sse_line_bytes ({limit} bytes) "
        f"without ending it; the stream was not read further nor kept (raise server.max_sse_line_bytes if "
        f"such events are expected)")


class SSEReader:
    """A transport's stream reading: its bounds, its open streams and their watchdog (cancelled in :meth:`aclose`).

    Events that arrive in one read are yielded one after the other without waiting, so the server writes them
    together. A stream past a bound ends with :class:`AnswerTooLargeError` (an error event for the client; caches
    store nothing of it).
    """

    def __init__(self, request_timeout: float, max_answer: int, max_event: int, prometheus: Prometheus) -> None:
        self.request_timeout = request_timeout
        self.max_answer = max_answer
        self.max_event = max_event
        self.prometheus = prometheus
        self._streams: set[_Watch] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def events(self, ctx: RequestContext, resp: aiohttp.ClientResponse, t0: float) -> AsyncIterator[Event]:
        """The upstream's SSE events as they arrive, never the whole stream held; see the class for the bounds."""
        parts: list[bytes] = []  # an event not yet ended, as it came (joined once, when it ends: linear time)
        held = total = 0  # the bytes in ``parts``, and in the stream so far: both bounded
        max_answer, max_event = self.max_answer, self.max_event
        cr = complete = False  # cr: the last chunk held a "\r" (a "\r\n" may be split between two chunks)
        watch = self._watch(resp)
        try:
            while True:
                # Silence counts only while this read waits (not while a slow client or the layers above are).
                watch.waiting_since = time.monotonic()
                chunk = await resp.content.readany()
                watch.waiting_since = _NOT_WAITING
                if watch.silent:  # closed by the watchdog while the read returned what was buffered
                    raise TimeoutError
                if not chunk:
                    break
                total += len(chunk)
                if total > max_answer:
                    raise answer_too_large(max_answer, "went past max_answer_bytes")
                if cr or b"\r" in chunk:
                    if parts and chunk[:1] == b"\n" and parts[-1][-1:] == b"\r":
                        held -= 1
                        if len(parts[-1]) > 1:
                            parts[-1] = parts[-1][:-1]
                        else:
                            parts.pop()
                    cr = b"\r" in chunk
                    if cr:
                        chunk = chunk.replace(b"\r\n", b"\n")
                # Only the new bytes are searched (and the one before them): each byte is looked at once.
                if b"\n\n" not in chunk and not (parts and chunk[:1] == b"\n" and parts[-1][-1:] == b"\n"):
                    held += len(chunk)
                    if held > max_event:
                        raise event_too_large(max_event)
                    parts.append(chunk)
                    continue
                if parts:
                    parts.append(chunk)
                    chunk = b"".join(parts)
                    parts.clear()
                *events, rest = chunk.split(b"\n\n")  # one pass over a chunk however many events it holds
                held = len(rest)
                if rest:
                    parts.append(rest)
                for j, data in enumerate(events, 1 - len(events)):  # j < 0: another event follows in this read
                    if data and not data.isspace():
                        yield Event(data + b"\n\n", more=j < 0)
                if held > max_event:  # after the events that did end
                    raise event_too_large(max_event)
            if (buf := b"".join(parts)).strip():  # a last event the upstream did not end with a blank line
                yield Event(buf.rstrip(b"\n") + b"\n\n")
            complete = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken(watch, exc) from exc
        except AnswerTooLargeError:
            self.prometheus.errors.labels("answer_too_large").inc()
            raise
        finally:
            self._end(ctx, resp, watch, t0, complete)

    def _broken(self, watch: _Watch, exc: BaseException) -> UpstreamTimeoutError | UpstreamProtocolError:
        """The error of a stream that the watchdog closed, or that broke off (counted)."""
        if watch.silent:
            self.prometheus.errors.labels("upstream_timeout").inc()
            return UpstreamTimeoutError(
                f"the upstream sent nothing for {self.request_timeout:g}s in the middle of a stream")
        self.prometheus.errors.labels("upstream_broken_stream").inc()
        return UpstreamProtocolError(f"the upstream broke off the stream: {type(exc).__name__}: {exc}")

    def _end(self, ctx: RequestContext, resp: aiohttp.ClientResponse, watch: _Watch, t0: float,
             complete: bool) -> None:
        """A stream ended (read to its end or not): no longer watched, its time taken, its connection let go."""
        self._streams.discard(watch)
        ctx.state[UPSTREAM_SECONDS] = time.perf_counter() - t0
        if complete:
            resp.release()
        else:
            resp.close()

    def _watch(self, resp: aiohttp.ClientResponse) -> _Watch:
        watch = _Watch(resp)
        self._streams.add(watch)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_streams(), name="evalproxy-streams")
        return watch

    async def _watch_streams(self) -> None:
        """Close every stream silent for longer than request_timeout (seen within a quarter of it, at most 1 s)."""
        period = min(1.0, self.request_timeout / 4)
        while self._streams:
            await asyncio.sleep(period)
            since = time.monotonic() - self.request_timeout
            for watch in [w for w in self._streams if w.waiting_since < since]:
                watch.silent = True
                watch.resp.close()


class _Watch:
    """One open stream as the watchdog sees it: since when its current read waits, and whether it went silent."""

    __slots__ = ("resp", "silent", "waiting_since")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.waiting_since = _NOT_WAITING
        self.silent = False


_NOT_WAITING = float("inf")
