"""The aiohttp app: routes around one :class:`~evalproxy.adapter.server.proxy.Proxy`.

    GET  /health                      liveness and a few counters
    GET  /metrics                     Prometheus text
    POST /adapterserver/run-post-hook run the post-eval hooks now (NeMo Evaluator compatible)
    *    /{anything}                  proxied through the chain: the OpenAI-compatible paths, GET and POST, and
                                      what server.forward_paths / forward_methods add

Every route is behind the site guard (:mod:`evalproxy.adapter.server.guard`, each route's own first check rather
than an aiohttp middleware, which costs more per request): Host, Origin and Content-Type are checked before
anything else is read.
"""

from __future__ import annotations

from aiohttp import web

from evalproxy.adapter.config.schema import LoadedConfig
from evalproxy.adapter.core.errors import (
    HostNotAllowedError,
    OriginNotAllowedError,
    ProxyError,
    UnsupportedMediaTypeError,
)
from evalproxy.adapter.flow.request import ENDPOINT_PATHS
from evalproxy.adapter.registry.registry import Resolved
from evalproxy.adapter.server.admin import add_admin_routes
from evalproxy.adapter.server.forwarding import OPAQUE_TYPES
from evalproxy.adapter.server.guard import SitePolicy, add_cors, guarded
from evalproxy.adapter.server.proxy import Proxy

PROXY: web.AppKey[Proxy] = web.AppKey("evalproxy", Proxy)


def create_app(loaded: LoadedConfig, *, resolved: Resolved | None = None, run_id: str | None = None) -> web.Application:
    """The proxy as an aiohttp Application. Its resources open on start-up and close on cleanup, one context each.

    Serve it with ``handler_cancellation=False`` (aiohttp's default for ``AppRunner``; :class:`RunningProxy` does):
    a client that leaves must not cancel the answer it asked for, which is being paid for and is stored once whole.
    """
    proxy = Proxy(loaded, resolved, run_id)
    app = web.Application(client_max_size=loaded.server.max_request_bytes, handler_args={"max_field_size": 65536})
    app[PROXY] = proxy
    s = loaded.server
    policy = SitePolicy(bind=s.host, allowed_hosts=s.allowed_hosts, allowed_origins=s.allowed_origins,
                        opaque_types=OPAQUE_TYPES, cors_methods=", ".join(s.forward_methods))
    add_cors(app, policy)
    app.cleanup_ctx.extend(proxy.cleanup_contexts())
    add_admin_routes(app, proxy, lambda handler: guarded(handler, policy, refusal))
    proxied = guarded(proxy.handle, policy, refusal)
    for path in _OPENAI_PATHS:  # found by the router's first look-up; the catch-all costs a walk and a regex
        app.router.add_route("*", path, proxied)
    app.router.add_route("*", "/{tail:.*}", proxied)
    return app


_OPENAI_PATHS = (*dict.fromkeys(ENDPOINT_PATHS.values()), "/v1/models")
"""The paths nearly every request names, routed to the proxy by name (the same handler as every other path)."""

_SITE_ERRORS: dict[int, type[ProxyError]] = {
    421: HostNotAllowedError, 403: OriginNotAllowedError, 415: UnsupportedMediaTypeError}


def refusal(status: int, code: str, message: str) -> web.Response:
    """The guard's refusal as the OpenAI-shaped error the proxy answers everything with."""
    exc = _SITE_ERRORS.get(status, ProxyError)(message, code=code)
    return web.Response(status=status, body=exc.to_json(), content_type="application/json")
