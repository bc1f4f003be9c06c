"""response_stats: counts, tokens, latency percentiles, streams, persistence across runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.adapter.context import STREAM_USAGE, ProxyResponse, RequestContext, RunContext
from evalproxy.adapter.sse import DONE_EVENT, make_event
from evalproxy.interceptors.response_stats import ResponseStatsInterceptor
from evalproxy.simulator import Fault, SimulatedModel


def answer(finish: str = "stop", prompt: int = 3, completion: int = 5, tools: bool = False) -> ProxyResponse:
    msg: dict[str, Any] = {"role": "assistant", "content": "x"}
    if tools:
        msg["tool_calls"] = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    return ProxyResponse.from_json({"choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                              "total_tokens": prompt + completion}})


def ctx() -> RequestContext:
    return RequestContext(method="POST", path="/v1/chat/completions", json={}, raw=b"{}")


class TestCounting:
    async def test_hand_count(self, run: RunContext) -> None:
        """Counts, finish reasons, tokens and tool calls equal a hand count over fixed answers."""
        ic = ResponseStatsInterceptor(ResponseStatsInterceptor.Params(), run)
        answers = [answer("stop", 3, 5), answer("length", 4, 16), answer("tool_calls", 2, 1, tools=True),
                   ProxyResponse.from_json({"error": {"message": "no"}}, status=429)]
        for a in answers:
            async def call_next(c: RequestContext, a: ProxyResponse = a) -> ProxyResponse:
                return a
            await ic(ctx(), call_next)
        out = ic.section()
        assert (out["count"], out["successful_count"], out["tool_calls_count"]) == (4, 3, 1)
        assert out["status_codes"] == {"200": 3, "429": 1}
        assert out["finish_reason"] == {"length": 1, "stop": 1, "tool_calls": 1}
        assert (out["total_prompt_tokens"], out["total_completion_tokens"], out["total_total_tokens"]) == (9, 22, 31)
        assert out["max_completion_tokens"] == 16
        assert out["scores"]["completion_tokens"]["stats"]["sum"] == 22

    async def test_latency_percentiles_from_samples(self, run: RunContext) -> None:
        """Latency percentiles are computed from the recorded samples by linear interpolation."""
        ic = ResponseStatsInterceptor(ResponseStatsInterceptor.Params(), run)
        for us in range(1000, 101_000, 1000):  # 1 ms .. 100 ms
            ic._record(200, answer().json, us / 1_000_000, None, False)
        out = ic.section()
        assert out["p50_latency_ms"] == 50.5 and out["p90_latency_ms"] == 90.1 and out["p99_latency_ms"] == 99.01
        assert out["max_latency_ms"] == 100.0 and out["min_latency_ms"] == 1.0

    async def test_stream_usage_from_final_chunk_or_state(self, run: RunContext) -> None:
        """A stream's tokens come from its usage chunk, or from the usage the endpoint kept aside."""
        ic = ResponseStatsInterceptor(ResponseStatsInterceptor.Params(), run)
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}

        async def events(with_usage: bool) -> Any:
            yield make_event(chunk)
            yield make_event(end)
            if with_usage:
                yield make_event({"choices": [], "usage": usage})
            yield DONE_EVENT

        for with_usage in (True, False):
            c = ctx()
            if not with_usage:
                c.state[STREAM_USAGE] = usage

            async def call_next(_: RequestContext, w: bool = with_usage) -> ProxyResponse:
                return ProxyResponse(200, stream=events(w))

            resp = await ic(c, call_next)
            assert resp.stream is not None
            got = [e async for e in resp.stream]
            assert got[-1] == DONE_EVENT
        out = ic.section()
        assert out["streamed_count"] == 2 and out["total_prompt_tokens"] == 14 and out["finish_reason"] == {"stop": 2}
        assert out["streams_without_usage"] == 0 and "p50_time_to_first_token_ms" in out


class TestThroughTheProxy:
    async def test_mixed_run_matches_a_hand_count(self, make_proxy: Any, sim: SimulatedModel,
                                                  tmp_path: Path) -> None:
        """Through the proxy: answers, streams with and without usage, an upstream 500, counted as sent."""
        sim.script(Fault(status=500))
        proxy = await make_proxy({"interceptors": ["endpoint", "response_stats"], "generate_html_report": False},
                                 max_retries=0)
        msgs = [{"role": "user", "content": "one two three"}]
        assert (await proxy.post("/v1/chat/completions", json={"messages": msgs})).status == 500
        for _ in range(2):
            assert (await proxy.post("/v1/chat/completions", json={"messages": msgs, "temperature": 0})).status == 200
        for opts in ({"include_usage": True}, None):
            body: dict[str, Any] = {"messages": msgs, "stream": True, "temperature": 0}
            if opts:
                body["stream_options"] = opts
            await (await proxy.post("/v1/chat/completions", json=body)).read()
        await proxy.close()
        stats = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())["response_stats"]
        expected_completion = len(sim.make_content({"temperature": 0}, "one two three")[0].split())
        assert stats["count"] == 5 and stats["successful_count"] == 4 and stats["streamed_count"] == 2
        assert stats["status_codes"] == {"200": 4, "500": 1}
        assert stats["finish_reason"] == {"stop": 4}
        assert stats["total_prompt_tokens"] == 4 * 3
        assert stats["total_completion_tokens"] == 4 * expected_completion
        assert stats["streams_without_usage"] == 0

    async def test_cache_hits_are_not_counted(self, make_proxy: Any, tmp_path: Path) -> None:
        """Inside caching, replays never reach response_stats: it counts real upstream calls."""
        proxy = await make_proxy({"interceptors": ["caching", "endpoint", "response_stats"],
                                  "generate_html_report": False})
        for _ in range(3):
            await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                           "temperature": 0})
        await proxy.close()
        metrics = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())
        assert metrics["response_stats"]["count"] == 1
        assert metrics["caching"]["hits"] == 2

    async def test_runs_add_up_across_restarts(self, make_proxy: Any, tmp_path: Path) -> None:
        """A second run on the same output dir reports the totals of both runs, and each run apart."""
        cfg = {"interceptors": ["endpoint", "response_stats"], "generate_html_report": False}
        for n in (2, 3):
            proxy = await make_proxy(cfg)
            for i in range(n):
                await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": str(i)}]})
            await proxy.close()
        stats = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())["response_stats"]
        assert stats["count"] == 5
        assert sorted(r["count"] for r in stats["runs"].values()) == [2, 3]


class TestLongRuns:
    def test_percentiles_use_every_sample_of_the_run(self, run: RunContext) -> None:
        """Percentiles of a run longer than the persisted sample share still come from all of its answers."""
        ic = ResponseStatsInterceptor(ResponseStatsInterceptor.Params(), run)
        body = answer().json
        for i in range(20_000):  # the first 10,000 fast, the rest slow
            ic._record(200, body, 0.001 if i < 10_000 else 0.1, None, False)
        out = ic.section()
        assert out["p90_latency_ms"] == 100.0 and out["p50_latency_ms"] == pytest.approx(50.5, abs=0.1)


@pytest.mark.parametrize(("event", "parse"), [
    (b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":null}]}\n\n', False),
    (b'data: {"choices": [{"delta": {"content": "x"}, "finish_reason": null}]}\n\n', False),
    (b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n', True),
    (b'data: {"choices":[{"finish_reason":null},{"finish_reason":"length"}]}\n\n', True),
    (b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n', True),
    (b'data: {"choices":[{"delta":{"tool_calls":[]},"finish_reason":null}]}\n\n', True),
])
def test_only_events_that_can_matter_are_parsed(event: bytes, parse: bool) -> None:
    """Chunks with nothing but content are skipped; finish reasons, usage and tool calls are never missed."""
    from evalproxy.interceptors.response_stats import _worth_parsing

    assert _worth_parsing(event) is parse
