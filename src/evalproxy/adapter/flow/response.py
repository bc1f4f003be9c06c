"""An answer: status, headers and a whole body or a stream of events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from multidict import CIMultiDict

from evalproxy.adapter.flow.sse import Event

_MISSING: Any = object()


def reasoning_tokens(usage: Any) -> int | None:
    """The reasoning tokens an answer's ``usage`` reports: ``reasoning_tokens``, or the ``reasoning_tokens`` of
    ``completion_tokens_details`` (chat) or ``output_tokens_details`` (Responses); None where it reports none."""
    if not isinstance(usage, dict):
        return None
    rt = usage.get("reasoning_tokens")
    if isinstance(rt, int) and not isinstance(rt, bool):
        return rt
    for key in ("completion_tokens_details", "output_tokens_details"):
        details = usage.get(key)
        rt = details.get("reasoning_tokens") if isinstance(details, dict) else None
        if isinstance(rt, int) and not isinstance(rt, bool):
            return rt
    return None


class ProxyResponse:
    """An answer: status, headers and either a whole ``body`` or a ``stream`` of :class:`Event` s.

    Each item of ``stream`` is one complete server-sent event, parsed at most once however many layers read it, so a
    layer can look at, change, drop or add events one at a time. The stream is consumed exactly once, by the server.
    Read and change answers through :mod:`evalproxy.adapter.flow.answers`, which treats both shapes alike.
    """

    __slots__ = ("_json", "body", "headers", "status", "stream", "stream_usage", "typed_stream")

    def __init__(
        self,
        status: int = 200,
        headers: CIMultiDict[str] | None = None,
        body: bytes | None = None,
        stream: AsyncIterator[Event] | None = None,
    ) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.body = body
        self.stream = stream
        self.stream_usage: dict[str, Any] | None = None
        """The token usage a stream carried, set by the server as it writes the stream (for observers)."""
        self.typed_stream: AsyncIterator[Event] | None = None
        """The chain's mark (:mod:`evalproxy.adapter.chain.interceptor`): ``stream`` as a layer of the chain handed it
        up, its failures already typed; a layer that passes it on unchanged does not wrap it again."""
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
        """The body parsed as JSON (once), or None if there is no body or it is not JSON."""
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

    def null_content_to_empty(self) -> None:
        """``"content": null`` in a choice's message becomes ``""`` (harnesses call string methods on it)."""
        if not self.body or (b'"content":null' not in self.body and b'"content": null' not in self.body):
            return  # the common answer, decided without parsing it
        body = self.json
        changed = False
        for choice in body.get("choices") or () if isinstance(body, dict) else ():
            msg = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(msg, dict) and "content" in msg and msg["content"] is None:
                msg["content"] = ""
                changed = True
        if changed:
            self.set_json(body)
