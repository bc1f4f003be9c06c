"""One client request on its way through the chain."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from multidict import CIMultiDict

from evalproxy.adapter.flow.frozen import FrozenDict, freeze
from evalproxy.adapter.flow.state import State

if TYPE_CHECKING:
    from evalproxy.adapter.flow.run import RunContext


OFF_LOOP_BYTES = 256 * 1024
"""A request body larger than this is parsed, keyed and serialised in a thread: a 60 MiB request must not stall
every other one."""


def _never() -> bool:
    return False


ENDPOINT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embedding": "/v1/embeddings",
                  "embeddings": "/v1/embeddings"}
"""The path a request of each endpoint type goes to (the proxy's root path; a key's, as ``explain`` rebuilds it)."""
SESSION_HEADER = "X-Session-Id"
"""The header naming a request's session (an agent's conversation, a harness's problem), as NeMo Evaluator reads it."""


class RequestContext:
    """One client request on its way through the chain.

    :attr:`json` is the parsed body, immutable (see :mod:`evalproxy.adapter.flow.frozen`). An interceptor that changes
    the request passes a new body to :meth:`set_json`; an untouched request goes upstream byte for byte as the client
    sent it, and a changed one is serialised from the same object the cache key is computed from.
    """

    __slots__ = (
        "_body",
        "_json",
        "client_gone",
        "headers",
        "method",
        "path",
        "query",
        "raw",
        "received_at",
        "request_id",
        "run",
        "started",
        "state",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        headers: CIMultiDict[str] | None = None,
        raw: bytes = b"",
        json: Mapping[str, Any] | None = None,
        query: str = "",
        run: RunContext | None = None,
        request_id: int = 0,
        client_gone: Callable[[], bool] = _never,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.raw = raw
        self._json: FrozenDict | None = freeze(json) if json is not None else None
        self._body: bytes | None = raw if json is None or raw else None
        self.run = run
        self.request_id = request_id
        self.client_gone = client_gone
        """Whether the client has disconnected. An interceptor that waits for something other than the answer it
        pays for (another request's lease) stops waiting once it says True; the server sets it."""
        self.state = State()
        self.started = time.perf_counter()
        self.received_at = time.time()

    @property
    def json(self) -> FrozenDict | None:
        """The request body as an immutable JSON object, or None for a request without one (GET)."""
        return self._json

    def set_json(self, body: Mapping[str, Any]) -> None:
        """Replace the request body; it is serialised again before it goes upstream."""
        self._json = freeze(body)
        self._body = None

    def body_bytes(self) -> bytes:
        """The body to send upstream: the client's own bytes unless an interceptor replaced the body."""
        if self._body is None:
            self._body = orjson.dumps(self._json) if self._json is not None else b""
        return self._body

    @property
    def kind(self) -> str:
        """What the request asks for, from its path: chat, completions, embeddings, models, responses or other."""
        return request_kind(self.path)

    @property
    def is_large(self) -> bool:
        """Whether the client's body is large enough that work on it is done off the event loop."""
        return len(self.raw) > OFF_LOOP_BYTES

    @property
    def is_stream_request(self) -> bool:
        return bool(self._json and self._json.get("stream"))


def request_kind(path: str) -> str:
    p = path.rstrip("/")
    if p.endswith("/chat/completions"):
        return "chat"
    if p.endswith("/completions"):
        return "completions"
    if p.endswith("/embeddings"):
        return "embeddings"
    if p.endswith("/models"):
        return "models"
    if p.endswith("/responses"):
        return "responses"
    return "other"
