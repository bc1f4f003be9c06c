"""endpoint: where the upstream call sits in the chain; the transport itself, registered like any built-in.

Its place in ``interceptors`` splits the chain: layers before it see requests on their way in, layers after it are
response-side layers nested inside them (see :mod:`evalproxy.adapter.chain.interceptor`). Its params override the
server's upstream settings for this chain.
"""

from __future__ import annotations

from typing import ClassVar

from evalproxy.adapter.registry.registry import register_for_adapter
from evalproxy.adapter.server.upstream import UpstreamTransport


@register_for_adapter(name="endpoint", description="Sends requests to the model endpoint (the chain's terminal).")
class EndpointInterceptor(UpstreamTransport):
    """The upstream transport as the chain's terminal."""

    is_terminal: ClassVar[bool] = True
