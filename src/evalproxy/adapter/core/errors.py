"""The one exception tree of evalproxy.

    EvalProxyError
    ├── ConfigError                   bad config: names the file and the field path
    ├── JobsError                     the jobs service's API: JSON {"detail", "field"} with a status
    │   ├── JobsBadRequestError       400: body or query string that is not what the API reads
    │   ├── JobsUnauthorizedError     401: the bearer token is missing or wrong
    │   ├── JobsNotFoundError         404: no such target, config or job at this path
    │   ├── JobsConflictError         409: the namespace/name is taken; the job is in the wrong state for this
    │   └── JobsInvalidFieldError     422: a field of the body is invalid (unknown target, a key in a URL, ...)
    ├── StoreError                    the cache's store failed (never answered to a client: caching passes through)
    │   ├── StoreUnavailableError     cannot be opened, or a server down or too slow; also a ConnectionError
    │   ├── StoreReadOnlyError        refuses writes: a read-only disk or directory, a read-only replica
    │   ├── StoreFullError            no room: a full disk, a Redis server at its maxmemory
    │   └── StoreClosedError          a call after the store's aclose(); also a RuntimeError
    └── ProxyError                    answered to the client as OpenAI-shaped JSON
        ├── BadRequestError           400: body is not JSON, not an object, ...
        │   └── ChatTemplateToggleError  400: completions_guard: a chat-template on/off toggle sent to
        │                                     /v1/completions, where no chat template is applied
        ├── PayloadTooLargeError      413: body over max_request_bytes
        ├── UnauthorizedError         401: admin path without the admin token
        ├── RequestTimeoutError       408: the client did not send its body in time
        ├── NotForwardedError         404/405: a path or method the proxy does not forward upstream
        ├── UnsupportedMediaTypeError 415: a body that is not JSON
        ├── SiteError                 a request from where the proxy does not serve (docs/security.md)
        │   ├── HostNotAllowedError   421: a Host header that is not this server's (DNS rebinding)
        │   └── OriginNotAllowedError 403: a browser page of another origin (CSRF)
        ├── InterceptorError          500: an interceptor failed; names it
        ├── UpstreamClientError       500: raise_client_errors: an upstream status that must stop the run
        └── UpstreamError             the model endpoint could not give an answer
            ├── UpstreamUnreachableError  502: connection refused, DNS, reset
            ├── UpstreamTimeoutError      504: no answer within request_timeout
            ├── UpstreamProtocolError     502: the stream broke off mid-answer
            └── AnswerTooLargeError       502: the answer passed max_answer_bytes (or a stream line
                                               max_sse_line_bytes); nothing is stored

Each store backend translates its own failures (sqlite3, diskcache, OSError, redis-py) into the ``StoreError``
subtree at its boundary, so that nothing above :mod:`evalproxy.storage` knows which backend failed or how.

An upstream that *answers* with 4xx/5xx is not an error here: its answer is passed through with its own status
(unless ``raise_client_errors`` is configured to stop the run on it).
"""

from __future__ import annotations

from typing import Any

import orjson


class EvalProxyError(Exception):
    """Base of every error evalproxy raises on purpose."""


class ConfigError(EvalProxyError):
    """A configuration that cannot be used; the message names the file and the field path."""

    def __init__(self, message: str, *, field: str | None = None, file: str | None = None) -> None:
        self.field = field
        self.file = file
        where = []
        if file:
            where.append(str(file))
        if field:
            where.append(f"field '{field}'")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.reason = message


class UsageError(EvalProxyError):
    """A command-line argument that cannot be used (``compare --vary`` naming no setting, a gate policy that does not
    hold): the message says what is wrong and what would do. ``compare`` and ``gate`` exit 3 on it."""


class StoreError(EvalProxyError):
    """A store (a cache directory or a Redis server) failed; the message names it. Readers (CLI, reports) print it;
    the caching interceptor counts it and answers without the store."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store cannot be reached: a directory or database that cannot be opened, a server that refuses or does not
    answer within its timeout (raised at once while it is known to be down)."""


class StoreReadOnlyError(StoreError):
    """The store refuses writes: a read-only file system or directory, a read-only Redis replica."""


class StoreFullError(StoreError):
    """The store has no room: the disk is full, or the Redis server reached its ``maxmemory``."""


class StoreClosedError(StoreError, RuntimeError):
    """A call to a store after its ``aclose()``."""


class ProxyError(EvalProxyError):
    """An error answered to the client as ``{"error": {"message", "type", "code"}}``."""

    status: int = 500
    type: str = "proxy_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class BadRequestError(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ChatTemplateToggleError(BadRequestError):
    """A boolean inside ``chat_template_kwargs`` sent to a text completions endpoint (NeMo 0.4's completions guard):
    the toggle can have no effect there, so the run would score in the wrong mode."""

    code = "chat_template_on_completions"


class PayloadTooLargeError(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnauthorizedError(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_admin_token"


class RequestTimeoutError(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class NotForwardedError(ProxyError):
    """A path (404) or method (405) outside what the proxy forwards: the OpenAI-compatible paths, GET and POST, and
    what ``server.forward_paths`` / ``forward_methods`` add."""

    status = 404
    type = "invalid_request_error"
    code = "path_not_forwarded"

    def __init__(self, message: str, *, method: bool = False) -> None:
        super().__init__(message, code="method_not_forwarded" if method else None)
        if method:
            self.status = 405


class UnsupportedMediaTypeError(ProxyError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class SiteError(ProxyError):
    """A request refused for where it came from, before anything else is read (docs/security.md)."""

    status = 403
    type = "permission_error"


class HostNotAllowedError(SiteError):
    status = 421
    code = "host_not_allowed"


class OriginNotAllowedError(SiteError):
    status = 403
    code = "origin_not_allowed"


class InterceptorError(ProxyError):
    status = 500
    type = "interceptor_error"
    code = "interceptor_failed"

    def __init__(self, interceptor: str, cause: BaseException) -> None:
        self.interceptor = interceptor
        super().__init__(f"interceptor '{interceptor}' failed: {type(cause).__name__}: {cause}")


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnreachableError(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    status = 502
    code = "upstream_protocol_error"


class AnswerTooLargeError(UpstreamError):
    status = 502
    code = "answer_too_large"


class UpstreamClientError(ProxyError):
    """The upstream answered with a status the config (``raise_client_errors``) says must stop the evaluation."""

    status = 500
    type = "upstream_client_error"
    code = "fatal_upstream_status"


class JobsError(EvalProxyError):
    """An error of the jobs service's API, answered as ``{"detail": ..., "field": ...}`` with its status."""

    status = 500

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "field": self.field}


class JobsBadRequestError(JobsError):
    status = 400


class JobsUnauthorizedError(JobsError):
    status = 401


class JobsNotFoundError(JobsError):
    status = 404


class JobsConflictError(JobsError):
    status = 409


class JobsInvalidFieldError(JobsError):
    status = 422
