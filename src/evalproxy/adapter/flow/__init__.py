"""Layer 2: what flows through the chain, as types.

A request enters as a :class:`~evalproxy.adapter.flow.request.RequestContext` whose JSON body is immutable (so the
bytes sent upstream and the cache key can never drift apart); the chain answers with a
:class:`~evalproxy.adapter.flow.response.ProxyResponse`: a whole body or a stream of
:class:`~evalproxy.adapter.flow.sse.Event` s. :mod:`~evalproxy.adapter.flow.answers` is the one way a response-side
interceptor reads or changes answers, written once for both. :class:`~evalproxy.adapter.flow.run.RunContext` is the
run every component shares; :class:`~evalproxy.adapter.flow.state.State` carries typed per-request data.

Imports only :mod:`evalproxy.adapter.core` and :mod:`evalproxy.adapter.config`.
"""
