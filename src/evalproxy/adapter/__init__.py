"""The proxy's own machinery, in layers; each imports only the layers listed before it (a test checks it):

    core/      errors, the Params base, redaction, atomic files, exact summaries
    config/    the schema (NeMo Evaluator's adapter_config, server settings) and reading files; legacy keys
    flow/      request and answer types, events, typed state, the run, and the one way to handle answers
    chain/     the interceptor and hook protocols, their bases, build_chain
    registry/  discovery and resolving names to classes
    server/    the app, the proxy, the upstream transport, Prometheus, status line, output files, RunningProxy

The adapter knows no particular interceptor or hook: those live in :mod:`evalproxy.interceptors` and
:mod:`evalproxy.hooks`, and the store in :mod:`evalproxy.storage`. See ``docs/architecture.md``.
"""
