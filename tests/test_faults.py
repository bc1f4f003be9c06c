"""Faults injected between the proxy and the model: broken streams, bad bodies, clients that leave."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from evalproxy.simulator import Fault, SimulatedModel
from tests.waiting import wait_until

ENDPOINT_ONLY = {"interceptors": ["endpoint"], "generate_html_report": False}
MSGS = [{"role": "user", "content": "tell me a story"}]


def data_events(raw: bytes) -> list[bytes]:
    return [e[6:] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


class TestUpstreamFaults:
    async def test_stream_cut_mid_way_ends_with_an_error_event(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Upstream drops the connection mid-stream: the client gets the events so far, then an error event."""
        sim.script(Fault(drop_after_events=3))
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
        events = data_events(await resp.read())
        assert len(events) == 4
        error = orjson.loads(events[-1])["error"]
        assert error["code"] == "upstream_protocol_error" and "broke off" in error["message"]
        assert b"[DONE]" not in events

    async def test_non_json_200_is_passed_through(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A 200 whose body is not JSON reaches the client as it came."""
        sim.script(Fault(body=b"<html>gateway says hi</html>"))
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert resp.status == 200
        assert await resp.read() == b"<html>gateway says hi</html>"

    async def test_slow_stream_times_out_between_events(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A stream that goes silent for longer than request_timeout ends with a timeout error event."""
        sim.chunk_delay = 1.0
        proxy = await make_proxy(ENDPOINT_ONLY, request_timeout=0.3)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
        events = data_events(await resp.read())
        assert orjson.loads(events[-1])["error"]["code"] == "upstream_timeout"

    @pytest.mark.slow

    async def test_a_stream_longer_than_request_timeout_but_never_silent_completes(
        self, make_proxy: Any, sim: SimulatedModel
    ) -> None:
        """request_timeout bounds the silence between events, not a stream's length: events 0.1 s apart over more
        than twice the timeout all arrive, with no error."""
        sim.chunk_delay, sim.chunk_chars = 0.1, 2
        proxy = await make_proxy(ENDPOINT_ONLY, request_timeout=0.4)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
        events = data_events(await resp.read())
        assert len(events) > 9 and events[-1] == b"[DONE]" and not any(b'"error"' in e for e in events)


class TestClientFaults:
    async def test_client_leaving_mid_stream_lets_the_upstream_answer_finish(
        self, make_proxy: Any, sim: SimulatedModel
    ) -> None:
        """A client that disconnects mid-stream does not cut the upstream answer short: it is read to the end."""
        sim.chunk_delay = 0.02
        proxy = await make_proxy(ENDPOINT_ONLY)
        async with aiohttp.ClientSession() as session:
            resp = await session.post(proxy.make_url("/v1/chat/completions"),
                                      json={"model": "m", "messages": MSGS, "stream": True})
            await resp.content.readline()
            resp.close()  # the client walks away
        await wait_until(lambda: bool(sim.streams_finished), what="the upstream stream to be read to its end")
        assert len(sim.streams_finished) == 1
        health = await (await proxy.get("/health")).json()
        assert health["in_flight"] == 0


async def test_non_json_200_is_counted_as_an_error_type(make_proxy: Any, sim: SimulatedModel, tmp_path: Any) -> None:
    """A 200 that is not JSON is counted under errors in response_stats and in the cache's not-stored count."""
    sim.script(Fault(body=b"<html>not json</html>"))
    proxy = await make_proxy({"interceptors": ["caching", "endpoint", "response_stats"],
                              "generate_html_report": False})
    resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
    assert resp.status == 200 and await resp.read() == b"<html>not json</html>"
    await proxy.close()
    metrics = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())
    assert metrics["response_stats"]["errors"] == {"not_json": 1}
    assert metrics["caching"]["not_stored"] == 1
