"""Prometheus collectors on the app's own registry (never the global one: tests build many apps).

Under ``serve --workers N`` every worker process has ``PROMETHEUS_MULTIPROC_DIR`` set: prometheus_client then keeps
each value in a file of that directory, and any worker's ``/metrics`` reads them all (prometheus_client's
multiprocess mode), so one scrape sees the sum over the workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from evalproxy.adapter.flow.request import request_kind

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
_TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

CONTENT_TYPE = CONTENT_TYPE_LATEST


REQUEST_CHILDREN_KEPT = 1024
"""(path, status, cache result) triples whose requests-counter child a :class:`Prometheus` keeps at hand."""


class Prometheus:
    """All collectors of one proxy app. Label sets are small and fixed (no per-request label values)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "evalproxy_requests", "Requests answered, by path, status and cache result",
            ["path", "status", "cache"], registry=r,
        )
        self.request_seconds = Histogram(
            "evalproxy_request_seconds", "Total time to answer a request (to the last byte)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.upstream_seconds = Histogram(
            "evalproxy_upstream_seconds", "Time waiting for the upstream (to the last byte)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.overhead_seconds = Histogram(
            "evalproxy_overhead_seconds", "Proxy overhead: total time minus upstream time",
            buckets=_OVERHEAD_BUCKETS, registry=r,
        )
        self.ttft_seconds = Histogram(
            "evalproxy_time_to_first_token_seconds", "Time to the first streamed event reaching the client",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter("evalproxy_tokens", "Tokens reported by the upstream, by kind", ["kind"], registry=r)
        self.completion_tokens = Histogram(
            "evalproxy_completion_tokens_per_request", "Completion tokens per answer", buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("evalproxy_requests_in_flight", "Requests being answered now", registry=r,
                               multiprocess_mode="livesum")
        self.retries = Counter("evalproxy_upstream_retries", "Upstream retries, by reason", ["reason"], registry=r)
        self.errors = Counter("evalproxy_errors", "Errors, by type", ["type"], registry=r)
        self.cache = Counter("evalproxy_cache", "Cache lookups and writes, by result", ["result"], registry=r)
        self.store_up = Gauge(
            "evalproxy_store_up", "1 while the cache's store answers, 0 after a store call failed (the proxy then "
            "passes requests through)", registry=r, multiprocess_mode="livemin",
        )
        self.answers_not_stored = Counter(
            "evalproxy_answers_not_stored", "Answers that went to the client without being stored, because the "
            "store was down or failed", registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._request_children: dict[tuple[str, int, str], Any] = {}

    def count_in_flight(self, read: Callable[[], float]) -> bool:
        """Report the requests in flight as ``read()`` at each scrape, so that counting them costs nothing per
        request; False under ``serve --workers`` (prometheus_client's multiprocess mode keeps each value in a file,
        which a function cannot fill): the caller then moves the gauge itself (``in_flight.inc()`` and ``dec()``)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return False
        self.in_flight.set_function(read)
        return True

    def count_request(self, path: str, status: int, cache: str) -> None:
        """One more request answered on ``path`` with ``status`` and cache result ``cache``; the counter's child
        looked up once per such triple (up to :data:`REQUEST_CHILDREN_KEPT` of them: a client may name ever new
        paths), not per request."""
        key = (path, status, cache)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self.child(self.requests, request_kind(path), str(status), cache)
            if len(self._request_children) < REQUEST_CHILDREN_KEPT:
                self._request_children[key] = counter
        counter.inc()

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: label lookups take a lock and build tuples each time."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # one of several workers: every worker's values, summed
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # prometheus_client leaves it untyped
            return generate_latest(merged)
        return generate_latest(self.registry)
