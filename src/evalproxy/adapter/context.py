"""What flows through the chain: the request context, the response, and typed state.

A request enters as a :class:`RequestContext`; interceptors may change it on the way in, and the chain answers with a
:class:`ProxyResponse`, which is either a whole body or a stream of server-sent events. Data shared between
interceptors travels in :class:`State` under typed :class:`StateKey` s, never in a bag of strings.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

import orjson
from multidict import CIMultiDict

if TYPE_CHECKING:
    from evalproxy.adapter.config import AdapterConfig, ServerConfig
    from evalproxy.adapter.metrics import ProxyMetrics
    from evalproxy.adapter.output import MetricsFile

T = TypeVar("T")
_MISSING: Any = object()


class StateKey(Generic[T]):
    """A typed key into :class:`State`, in the manner of aiohttp's ``AppKey``."""

    __slots__ = ("name", "type")

    def __init__(self, name: str, t: type[T] | Any = object) -> None:
        self.name = name
        self.type = t

    def __repr__(self) -> str:
        return f"<StateKey {self.name}>"


class State:
    """A small typed store: ``state[KEY]`` has the type ``KEY`` was declared with."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StateKey[Any], Any] = {}

    def __getitem__(self, key: StateKey[T]) -> T:
        return cast(T, self._data[key])

    def __setitem__(self, key: StateKey[T], value: T) -> None:
        self._data[key] = value

    def __contains__(self, key: StateKey[Any]) -> bool:
        return key in self._data

    @overload
    def get(self, key: StateKey[T]) -> T | None: ...
    @overload
    def get(self, key: StateKey[T], default: T) -> T: ...
    def get(self, key: StateKey[T], default: Any = None) -> Any:
        return self._data.get(key, default)

    def setdefault(self, key: StateKey[T], factory: Callable[[], T]) -> T:
        try:
            return cast(T, self._data[key])
        except KeyError:
            value = self._data[key] = factory()
            return value


# Keys the adapter itself sets; interceptors declare their own beside themselves.
CACHE_HIT = StateKey[bool]("cache_hit", bool)
"""Set by caching when the answer was replayed from disk (no upstream call)."""
CACHE_KEY = StateKey[str]("cache_key", str)
"""The cache key of the request, set by caching."""
UPSTREAM_SECONDS = StateKey[float]("upstream_seconds", float)
"""Wall time spent waiting for the upstream's response headers (or whole body), set by the endpoint."""
UPSTREAM_ATTEMPTS = StateKey[int]("upstream_attempts", int)
"""How many times the endpoint sent this request upstream (1 + retries)."""
STREAM_USAGE = StateKey[dict[str, Any]]("stream_usage", dict)
"""Token usage of a streamed answer whose client did not ask for it: the endpoint asked upstream for it, took it out
of the stream before the client saw it, and left it here for statistics."""


@dataclass
class RunContext:
    """One run of the proxy: where outputs go and what every component may share.

    Built once by the server at start-up and handed to every interceptor and hook constructor.
    """

    output_dir: Path
    run_id: str
    config: AdapterConfig
    server: ServerConfig
    metrics: ProxyMetrics
    metrics_file: MetricsFile
    state: State = field(default_factory=State)
    started_at: float = field(default_factory=time.time)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def next_request_id(self) -> int:
        """Arrival order of requests in this run, starting at 0."""
        return next(self._seq)


class RequestContext:
    """One client request on its way through the chain.

    The parsed JSON body is available as :attr:`json`. An interceptor that changes the body calls
    :meth:`set_json` (or mutates :attr:`json` and calls :meth:`mark_modified`), so an untouched request goes upstream
    byte for byte as the client sent it.
    """

    __slots__ = (
        "_json",
        "_modified",
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
        json: dict[str, Any] | None = None,
        query: str = "",
        run: RunContext | None = None,
        request_id: int = 0,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.raw = raw
        self._json = json
        self._modified = False
        self.run = run
        self.request_id = request_id
        self.state = State()
        self.started = time.perf_counter()
        self.received_at = time.time()

    @property
    def json(self) -> dict[str, Any] | None:
        """The request body as a JSON object, or None for a request without one (GET)."""
        return self._json

    def set_json(self, body: dict[str, Any]) -> None:
        """Replace the request body; it will be serialised again before it goes upstream."""
        self._json = body
        self._modified = True

    def mark_modified(self) -> None:
        """Say that :attr:`json` was changed in place."""
        self._modified = True

    @property
    def modified(self) -> bool:
        return self._modified

    def body_bytes(self) -> bytes:
        """The body to send upstream: the client's own bytes unless an interceptor changed it."""
        if self._modified and self._json is not None:
            return orjson.dumps(self._json)
        return self.raw

    @property
    def kind(self) -> str:
        """What the request asks for, from its path: chat, completions, embeddings, models, responses or other."""
        return request_kind(self.path)

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


class ProxyResponse:
    """An answer: status, headers and either a whole ``body`` or a ``stream`` of SSE events.

    Each item of ``stream`` is one complete server-sent event as bytes, blank-line terminator included, so a layer can
    look at, change, drop or add events one at a time. The stream is consumed exactly once, by the server.
    """

    __slots__ = ("_json", "body", "headers", "status", "stream")

    def __init__(
        self,
        status: int = 200,
        headers: CIMultiDict[str] | None = None,
        body: bytes | None = None,
        stream: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.body = body
        self.stream = stream
        self._json: Any = _MISSING

    @classmethod
    def from_json(cls, obj: Any, status: int = 200, headers: CIMultiDict[str] | None = None) -> ProxyResponse:
        h = headers if headers is not None else CIMultiDict()
        h["Content-Type"] = "application/json"
        resp = cls(status=status, headers=h, body=orjson.dumps(obj))
        resp._json = obj
        return resp

    @property
    def is_stream(self) -> bool:
        return self.stream is not None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def json(self) -> Any:
        """The body parsed as JSON (cached), or None if there is no body or it is not JSON."""
        if self._json is _MISSING:
            parsed: Any = None
            if self.body:
                try:
                    parsed = orjson.loads(self.body)
                except orjson.JSONDecodeError:
                    parsed = None
            self._json = parsed
        return self._json

    def set_json(self, obj: Any) -> None:
        """Replace the body with ``obj`` serialised as JSON."""
        self._json = obj
        self.body = orjson.dumps(obj)
