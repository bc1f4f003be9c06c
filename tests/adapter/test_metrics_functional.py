"""GET /metrics: Prometheus text from the app's own registry, with values matching the requests sent."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from evalproxy.simulator import Fault, SimulatedModel

ENDPOINT_ONLY = {"interceptors": ["endpoint"], "generate_html_report": False}
MSGS = [{"role": "user", "content": "hi"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class TestMetrics:
    async def test_scrape_matches_requests_sent(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Counts by path/status/cache, latency histograms, retries and errors match what was sent."""
        sim.script(Fault(status=500))
        proxy = await make_proxy(ENDPOINT_ONLY, retry_backoff=0.01)
        for _ in range(3):
            assert (await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})).status == 200
        await proxy.post("/v1/embeddings", json={"model": "m", "input": "x"})
        assert (await proxy.post("/v1/chat/completions", data=b"{oops",
                                 headers={"Content-Type": "application/json"})).status == 400
        resp = await proxy.get("/metrics")
        assert resp.headers["Content-Type"].startswith("text/plain")
        got = samples(await resp.text())
        chat_ok = ("evalproxy_requests_total", (("cache", "miss"), ("path", "chat"), ("status", "200")))
        assert got[chat_ok] == 3
        assert got[("evalproxy_requests_total", (("cache", "miss"), ("path", "embeddings"), ("status", "200")))] == 1
        assert got[("evalproxy_requests_total", (("cache", "none"), ("path", "chat"), ("status", "400")))] == 1
        assert got[("evalproxy_request_seconds_count", ())] == 4
        assert got[("evalproxy_upstream_seconds_count", ())] == 4
        assert got[("evalproxy_overhead_seconds_count", ())] == 4
        assert got[("evalproxy_upstream_retries_total", (("reason", "500"),))] == 1
        assert got[("evalproxy_errors_total", (("type", "invalid_request"),))] == 1
        assert got[("evalproxy_requests_in_flight", ())] == 0

    async def test_requests_in_flight_are_seen_while_they_last(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """The in-flight gauge counts a request while it waits for its answer, and drops when it is answered."""
        sim.script(Fault(delay=0.5))
        proxy = await make_proxy(ENDPOINT_ONLY)
        slow = asyncio.ensure_future(proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS}))
        await asyncio.sleep(0.2)
        during = samples(await (await proxy.get("/metrics")).text())
        assert (await slow).status == 200
        after = samples(await (await proxy.get("/metrics")).text())
        key = ("evalproxy_requests_in_flight", ())
        assert (during[key], after[key]) == (1, 0)

    async def test_two_apps_have_separate_registries(self, make_proxy: Any) -> None:
        """Each app counts only its own requests (no global registry)."""
        a = await make_proxy(ENDPOINT_ONLY)
        b = await make_proxy(ENDPOINT_ONLY)
        await a.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        got_b = samples(await (await b.get("/metrics")).text())
        assert got_b[("evalproxy_request_seconds_count", ())] == 0

    async def test_streams_record_time_to_first_token(self, make_proxy: Any) -> None:
        """A streamed answer adds one time-to-first-token observation."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
        await resp.read()
        got = samples(await (await proxy.get("/metrics")).text())
        assert got[("evalproxy_time_to_first_token_seconds_count", ())] == 1
