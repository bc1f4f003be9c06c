"""http_pairs_dump: the first request/response pairs, and every failed one, in one JSON file (NeMo 0.3+'s).

``dump_path`` gets ``{"metrics": {"<status>": count, ...}, "pairs": [...]}``: each pair holds ``request_id``,
``request`` (headers and body as sent upstream from this point of the chain, secrets redacted), ``response``
(status, headers, body, a stream coalesced into one object, and ``latency_ms``). A pair is kept when it is among the
first ``first_n`` answers or its status is not 200. The file is rewritten atomically after each kept pair, by one
writer at a time (writes that pile up are coalesced into the next), and once more when the run ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.files import atomic_write_bytes, dump_json
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.core.redact import redact_headers, redact_obj
from evalproxy.adapter.flow.answers import AnswerHandler, handle
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.shape import assemble_stream
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.http_pairs_dump")


class HttpPairsDumpParams(Params):
    dump_path: str = Field(description="The JSON file to write (relative: from where the proxy started)")
    first_n: int = Field(default=50, ge=0, description="Keep the first N pairs; failures are always kept")


@register_for_adapter(name="http_pairs_dump", description="Dumps the first and the failed request/response pairs.")
class HttpPairsDumpInterceptor(BaseInterceptor[HttpPairsDumpParams]):
    best_effort = True

    Params = HttpPairsDumpParams

    def __init__(self, params: HttpPairsDumpParams, run: RunContext) -> None:
        super().__init__(params, run)
        self.path: Path = run.resolve(params.dump_path)
        self.metrics: Counter[str] = Counter()
        self.pairs: list[dict[str, Any]] = []
        self.seen = 0
        self._writer: asyncio.Task[None] | None = None
        self._dirty = False
        self.secrets = run.server.secrets()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        # The body is redacted in add(), for the pairs that are kept (most answers are only counted): ctx.json is
        # frozen, so holding it until then is safe.
        request = {"headers": redact_headers(ctx.headers.items()), "body": ctx.json}
        t0 = time.perf_counter()
        resp = await call_next(ctx)
        if self.seen >= self.params.first_n and resp.status == 200:  # not kept: counted, not looked at
            self.seen += 1
            self.metrics["200"] += 1
            return resp
        return await handle(resp, _Pair(self, ctx.request_id, request, resp, t0))

    def add(self, request_id: int, request: dict[str, Any], response: dict[str, Any]) -> None:
        self.seen += 1
        self.metrics[str(response["status"])] += 1
        if self.seen <= self.params.first_n or response["status"] != 200:
            # Secret-named body fields (api_key, ...) as secret headers are: redacted, and the run's key wherever it is.
            request = {**request, "body": redact_obj(request["body"], self.secrets)}
            self.pairs.append({"request_id": request_id, "request": request, "response": response})
            # Written when a pair is added (the counts go with it, and all of them at the end), not per answer.
            self._dirty = True
            if self._writer is None or self._writer.done():
                self._writer = asyncio.get_running_loop().create_task(self._write_while_dirty())

    def snapshot(self) -> bytes:
        return dump_json({"metrics": dict(sorted(self.metrics.items())), "pairs": list(self.pairs)})

    async def _write_while_dirty(self) -> None:
        while self._dirty:
            self._dirty = False
            data = self.snapshot()
            try:
                await asyncio.to_thread(atomic_write_bytes, self.path, data)
            except OSError as exc:
                log.warning("http_pairs_dump: cannot write %s: %s", self.path, exc)
                return

    async def aclose(self) -> None:
        if self._writer is not None:
            await self._writer
        if self.seen:
            try:
                await asyncio.to_thread(atomic_write_bytes, self.path, self.snapshot())
            except OSError as exc:
                log.warning("http_pairs_dump: cannot write %s: %s", self.path, exc)


class _Pair(AnswerHandler):
    keep_events = True

    def __init__(self, ic: HttpPairsDumpInterceptor, request_id: int, request: dict[str, Any],
                 resp: ProxyResponse, t0: float) -> None:
        self.ic, self.request_id, self.request, self.resp, self.t0 = ic, request_id, request, resp, t0
        self.headers = redact_headers(resp.headers.items())

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        if events is not None:
            body: Any = assemble_stream(events)
        else:
            body = self.resp.json if self.resp.json is not None else (self.resp.body or b"").decode("utf-8",
                                                                                                     "replace")
        self.ic.add(self.request_id, self.request, {
            "status": self.resp.status, "headers": self.headers, "body": body,
            "latency_ms": round((time.perf_counter() - self.t0) * 1000, 2)})
        return []
