"""The proxy's own endpoints: liveness, Prometheus text, and NeMo Evaluator's run-post-hook."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from evalproxy.adapter.core.errors import UnauthorizedError
from evalproxy.adapter.core.redact import redact_url
from evalproxy.adapter.server.guard import Handler
from evalproxy.adapter.server.prometheus import CONTENT_TYPE
from evalproxy.adapter.server.proxy import Proxy


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def add_admin_routes(app: web.Application, proxy: Proxy,
                     wrap: Callable[[Handler], Handler] = lambda handler: handler) -> None:
    """``GET /health``, ``GET /metrics`` and ``POST /adapterserver/run-post-hook`` for ``proxy``, each handler passed
    through ``wrap`` (the app's site guard)."""

    async def health(request: web.Request) -> web.Response:
        return json_response({
            "status": "ok",
            "run_id": proxy.run.run_id,
            "upstream": redact_url(proxy.run.server.upstream_url),
            "requests": proxy.answered,
            "errors": proxy.errors,
            "in_flight": proxy.in_flight,
            "uptime_seconds": round(time.time() - proxy.run.started_at, 3),
        })

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(proxy.prometheus.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def run_post_hook(request: web.Request) -> web.Response:
        if proxy.admin_token is not None:
            given = request.headers.get("X-Admin-Token") or request.headers.get("Authorization") or ""
            token = given.removeprefix("Bearer ").strip()
            if not hmac.compare_digest(token.encode(), proxy.admin_token.encode()):
                exc = UnauthorizedError("this admin path needs the admin token (X-Admin-Token header)")
                return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json")
        results = await proxy.run_hooks()
        # NeMo Evaluator's answer (a hook's failure is logged, not an error of the call), with each hook's result.
        return json_response({"status": "success", "message": "Post-eval hooks executed successfully",
                              "hooks": results})

    app.router.add_get("/health", wrap(health))
    app.router.add_get("/metrics", wrap(metrics))
    app.router.add_post("/adapterserver/run-post-hook", wrap(run_post_hook))
