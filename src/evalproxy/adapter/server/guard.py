"""Same-site only: what every HTTP surface of evalproxy checks before it reads a request (docs/security.md).

A server on 127.0.0.1 is reachable from every web page the user's browser opens. Two attacks follow, and one check
each stops them, in this order, before a handler runs:

1. **DNS rebinding**: a page on ``evil.example`` makes its name resolve to 127.0.0.1 and then calls the server as a
   same-origin page, reading answers. The request still says ``Host: evil.example``: a Host that is not this server's
   (its bound address, a loopback address, ``localhost``, the machine's own name when bound beyond loopback, or a name
   the user allowed) gets 421.
2. **Cross-site requests (CSRF)**: a page posts a form or a ``text/plain`` fetch to the server. Browsers say where it
   came from (``Origin``, and ``Sec-Fetch-Site`` even where they send no Origin): a request from another origin that
   the user did not allow gets 403. An allowed origin gets CORS answers (preflight included); nothing else does.
3. **Bodies that are not JSON**: what a page can send without a preflight is a form, ``text/plain`` or
   ``multipart/form-data``; a body whose Content-Type is not JSON gets 415 (a service may name opaque types it
   forwards unread, as the proxy does for audio uploads). A request without a Content-Type is read as JSON: no browser
   sends a body without one unless it also sends an Origin.

Non-browser clients (SDKs, harnesses, curl) send no Origin and the Host they were pointed at, so none of this
touches them.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from aiohttp import web
from aiohttp.typedefs import Middleware

from evalproxy.adapter.core.net import is_loopback

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Deny = Callable[[int, str, str], web.StreamResponse]
"""Builds a refusal in the service's own error shape from (status, code, message)."""

_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CROSS_SITE = frozenset({"cross-site", "same-site"})
CORS_MAX_AGE = "600"


def _host_name(host_header: str) -> str:
    """The name (or address) of a Host header, without port, brackets or a trailing dot, lowercased."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h[1:]
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _origin_key(origin: str) -> str:
    """An origin as compared: lowercased, without a trailing slash or the scheme's default port."""
    o = origin.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if o.startswith(scheme) and o.endswith(port):
            return o[: -len(port)]
    return o


@dataclass(frozen=True)
class SitePolicy:
    """Who may call one server: its bound address, the Host names and browser origins the user allowed."""

    bind: str = "127.0.0.1"
    allowed_hosts: Iterable[str] = ()
    allowed_origins: Iterable[str] = ()
    opaque_types: tuple[str, ...] = ()
    """Content-Type prefixes whose bodies the service takes unread (the proxy forwards audio and image uploads)."""
    cors_methods: str = "GET, POST"
    own_names: frozenset[str] = field(default_factory=frozenset)
    """Extra names that are this server's own (tests; the machine's names are added when bound beyond loopback)."""

    @cached_property
    def _hosts(self) -> tuple[frozenset[str], tuple[str, ...], bool]:
        exact, suffixes, anything = set(self.own_names), [], False
        for h in self.allowed_hosts:
            h = h.strip().lower().rstrip(".")
            if h == "*":
                anything = True
            elif h.startswith("."):
                suffixes.append(h)
            elif h:
                exact.add(_host_name(h))
        bind = _host_name(self.bind) if self.bind else ""
        if bind not in _WILDCARD_BINDS:
            exact.add(bind)
        if not is_loopback(bind or "0.0.0.0"):
            name = socket.gethostname().lower()
            exact.update({name, name.split(".", 1)[0], socket.getfqdn(name).lower()})
        return frozenset(exact), tuple(suffixes), anything

    @cached_property
    def _origins(self) -> tuple[frozenset[str], bool]:
        keys = {_origin_key(o) for o in self.allowed_origins if o.strip()}
        return frozenset(keys - {"*"}), "*" in keys

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's Host names this server. No Host at all (HTTP/1.0) is no browser's request."""
        if host_header is None:
            return True
        name = _host_name(host_header)
        exact, suffixes, anything = self._hosts
        if anything or name in exact or name == "localhost" or name.endswith(".localhost"):
            return True
        if name.endswith(suffixes) or any(name == s[1:] for s in suffixes):
            return True
        ip = _ip(name)
        if ip is not None:
            # An address cannot be rebound: loopback always, any address when the server listens on all of them.
            return ip.is_loopback or _host_name(self.bind) in _WILDCARD_BINDS
        return False

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """Whether a browser page of ``origin`` may call: allowed by the user, or this server's own origin."""
        key = _origin_key(origin)
        allowed, anything = self._origins
        if anything or key in allowed:
            return True
        if host_header is None or "://" not in key:
            return False
        own = key.split("://", 1)[1]
        return own == host_header.strip().lower() and self.host_allowed(host_header)

    def explicitly_allowed(self, origin: str) -> bool:
        allowed, anything = self._origins
        return anything or _origin_key(origin) in allowed

    @cached_property
    def _memo(self) -> dict[tuple[str, str | None], bool]:
        return {}

    def _remembered(self, kind: str, value: str | None, decide: Callable[[str | None], bool]) -> bool:
        """``decide(value)``, remembered: every request of a run names the same Host and Content-Type (bounded, so a
        client sending ever new values costs only the deciding)."""
        memo = self._memo
        found = memo.get((kind, value))
        if found is None:
            found = decide(value)
            if len(memo) < 256:
                memo[(kind, value)] = found
        return found

    def host_ok(self, host_header: str | None) -> bool:
        return self._remembered("host", host_header, self.host_allowed)

    def body_ok(self, content_type: str | None) -> bool:
        return self._remembered("type", content_type, lambda c: self.is_json(c) or self.is_opaque(c))

    def is_json(self, content_type: str | None) -> bool:
        if content_type is None:
            return True
        media = content_type.split(";", 1)[0].strip().lower()
        return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))

    def is_opaque(self, content_type: str | None) -> bool:
        return content_type is not None and content_type.strip().lower().startswith(self.opaque_types)


def refusal(policy: SitePolicy, request: web.BaseRequest, deny: Deny) -> web.StreamResponse | None:
    """The answer to a request ``policy`` refuses (or to a CORS preflight it allows), None to serve it. A few dict
    look-ups for what every client sends; called first by every route (see the module's doc)."""
    headers = request.headers
    host = headers.get("Host")
    if not policy.host_ok(host):
        return deny(421, "host_not_allowed",
                    f"Host {host!r} is not this server's: a page that rebinds a name to this machine cannot use it. "
                    "If you reach this server by that name, allow it (--allowed-host / server.allowed_hosts).")
    origin = headers.get("Origin")
    if origin is not None:
        if not policy.origin_allowed(origin, host):
            return deny(403, "origin_not_allowed",
                        f"requests from the web page origin {origin!r} are refused; allow it with "
                        "--allowed-origin / server.allowed_origins if that page is yours")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in headers:
            if not policy.explicitly_allowed(origin):
                return deny(403, "origin_not_allowed", f"no CORS for the origin {origin!r}")
            return web.Response(status=204, headers=_cors_headers(origin, policy, request))
    elif "Sec-Fetch-Site" in headers and headers["Sec-Fetch-Site"].lower() in _CROSS_SITE:
        return deny(403, "origin_not_allowed", "requests from another site's web page are refused")
    if request.method in _BODY_METHODS and request.body_exists:
        ctype = headers.get("Content-Type")
        if not policy.body_ok(ctype):
            return deny(415, "unsupported_media_type",
                        f"the body must be JSON (Content-Type: application/json), not {ctype!r}")
    return None


def guarded(handler: Handler, policy: SitePolicy, deny: Deny) -> Handler:
    """``handler`` behind ``policy``: a route's own check, cheaper on the hot path than an aiohttp middleware."""

    async def route(request: web.Request) -> web.StreamResponse:
        refused = refusal(policy, request, deny)
        return refused if refused is not None else await handler(request)

    return route


def site_guard(policy: SitePolicy, deny: Deny) -> Middleware:
    """``policy`` as an aiohttp middleware, for services where a middleware's cost does not matter."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(policy, request, deny)
        return refused if refused is not None else await handler(request)

    return guard


def add_cors(app: web.Application, policy: SitePolicy) -> None:
    """CORS headers on answers to origins ``policy`` allows (streams included: added as their headers go out);
    nothing is added, and nothing runs per answer, when it allows none."""
    if not any(o.strip() for o in policy.allowed_origins):
        return

    async def cors(request: web.BaseRequest, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and policy.explicitly_allowed(origin):
            response.headers.update(_cors_headers(origin, policy, None))

    app.on_response_prepare.append(cors)


def install_guard(app: web.Application, policy: SitePolicy, deny: Deny) -> None:
    """Put ``policy`` in front of every route of ``app`` as a middleware, with its CORS answers."""
    app.middlewares.insert(0, site_guard(policy, deny))
    add_cors(app, policy)


def _cors_headers(origin: str, policy: SitePolicy, preflight: web.BaseRequest | None) -> dict[str, str]:
    out = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight is not None:
        out["Access-Control-Allow-Methods"] = policy.cors_methods
        asked = preflight.headers.get("Access-Control-Request-Headers")
        if asked:
            out["Access-Control-Allow-Headers"] = asked
        out["Access-Control-Max-Age"] = CORS_MAX_AGE
    return out


def matches_any(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path`` matches one of the glob ``patterns`` (``*`` stays within one path segment)."""
    return any(fnmatch.fnmatchcase(path, p) and (p.count("/") == path.count("/") or p.endswith("**"))
               for p in patterns)
