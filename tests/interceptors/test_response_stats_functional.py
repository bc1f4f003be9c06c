"""response_stats through the proxy: hand counts over mixed traffic, cache replays, the statistics file, restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from evalproxy.simulator import Fault, SimulatedModel

PROMPT = "one two three"
MSGS = [{"role": "user", "content": PROMPT}]
TOOL_ANSWER = {
    "id": "chatcmpl-tool", "object": "chat.completion", "model": "sim-model",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

REUSE = {"name": "caching", "config": {"reuse_cached_responses": True}}


def metrics(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())
    return data


def token_counters(text: str) -> dict[str, float]:
    return {s.labels["kind"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "evalproxy_tokens_total"}


class TestMixedTraffic:
    @pytest.mark.parametrize("stream_usage", [True, False], ids=["endpoint-asks-usage", "usage-unknown"])
    async def test_counts_match_a_hand_count(
        self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path, stream_usage: bool
    ) -> None:
        """An upstream 500, chat, completions, a tool call and two streams are counted exactly as sent."""
        proxy = await make_proxy(
            {"interceptors": [{"name": "endpoint", "config": {"stream_usage": stream_usage}}, "response_stats"],
             "generate_html_report": False},
            max_retries=0,
        )
        sim.script(Fault(status=500))
        assert (await proxy.post("/v1/chat/completions", json={"messages": MSGS})).status == 500
        for _ in range(2):
            assert (await proxy.post("/v1/chat/completions", json={"messages": MSGS, "temperature": 0})).status == 200
        assert (await proxy.post("/v1/completions", json={"prompt": PROMPT, "temperature": 0})).status == 200
        sim.script(Fault(body=orjson.dumps(TOOL_ANSWER)))
        assert (await proxy.post("/v1/chat/completions", json={"messages": MSGS, "tools": []})).status == 200
        for opts in ({"include_usage": True}, None):
            body: dict[str, Any] = {"messages": MSGS, "stream": True, "temperature": 0}
            if opts:
                body["stream_options"] = opts
            resp = await proxy.post("/v1/chat/completions", json=body)
            # The client gets usage only if it asked, whatever the endpoint asked upstream.
            assert (b'"usage"' in await resp.read()) is bool(opts)
        prom = token_counters(await (await proxy.get("/metrics")).text())
        await proxy.close()

        words = len(sim.make_content({"temperature": 0}, PROMPT)[0].split())
        # Usage known: 2 chat, completions, the stream that asked; the other stream only if the endpoint asked for it.
        answers_with_usage = 5 if stream_usage else 4
        stats = metrics(tmp_path)["response_stats"]
        assert (stats["count"], stats["successful_count"], stats["streamed_count"]) == (7, 6, 2)
        assert stats["status_codes"] == {"200": 6, "500": 1}
        assert stats["finish_reason"] == {"length": 1, "stop": 4, "tool_calls": 1}
        assert stats["tool_calls_count"] == 1
        assert stats["streams_without_usage"] == (0 if stream_usage else 1)
        assert stats["total_prompt_tokens"] == 3 * answers_with_usage + 5
        assert stats["total_completion_tokens"] == words * answers_with_usage + 7
        assert stats["total_total_tokens"] == (3 + words) * answers_with_usage + 12
        assert (stats["min_prompt_tokens"], stats["max_prompt_tokens"]) == (3, 5)
        assert stats["errors"] == {}  # the 500 is the upstream's answer, counted by status
        assert stats["scores"]["latency_ms"]["stats"]["count"] == 7  # every round trip, the 500's included
        assert stats["p50_time_to_first_token_ms"] > 0 and "avg_time_to_first_token_ms" in stats
        assert prom == {"prompt": stats["total_prompt_tokens"], "completion": stats["total_completion_tokens"]}


class TestCacheReplays:
    async def test_cache_hits_are_not_counted(self, make_proxy: Any, tmp_path: Path) -> None:
        """Inside caching, replays never reach response_stats: it counts real upstream calls only."""
        proxy = await make_proxy({"interceptors": [REUSE, "endpoint", "response_stats"],
                                  "generate_html_report": False})
        for _ in range(3):
            body = {"messages": MSGS, "temperature": 0}
            assert (await proxy.post("/v1/chat/completions", json=body)).status == 200
        for _ in range(2):  # a stream, and its replay
            body = {"messages": MSGS, "temperature": 0, "stream": True}
            await (await proxy.post("/v1/chat/completions", json=body)).read()
        await proxy.close()
        out = metrics(tmp_path)
        assert (out["response_stats"]["count"], out["response_stats"]["streamed_count"]) == (2, 1)
        assert out["caching"]["hits"] == 3


class TestPersistence:
    async def test_section_is_written_at_shutdown(self, make_proxy: Any, tmp_path: Path) -> None:
        """After the app closes, eval_factory_metrics.json has the section and the run's own file exists."""
        proxy = await make_proxy({"interceptors": ["endpoint", "response_stats"], "generate_html_report": False})
        await proxy.post("/v1/chat/completions", json={"messages": MSGS})
        await proxy.close()
        stats = metrics(tmp_path)["response_stats"]
        assert stats["count"] == 1 and stats["description"] == "Response statistics saved during processing"
        assert list(stats["runs"]) == [stats["evalproxy_run_id"]]
        saved = orjson.loads((tmp_path / "out" / "response_stats_cache"
                              / f"run-{stats['evalproxy_run_id']}.json").read_bytes())
        assert saved["count"] == 1

    async def test_runs_add_up_across_restarts(self, make_proxy: Any, tmp_path: Path) -> None:
        """A second app on the same output dir (a new run id) reports the totals of both runs, and each run apart."""
        cfg = {"interceptors": ["endpoint", "response_stats"], "generate_html_report": False}
        run_ids = []
        for n in (2, 3):
            proxy = await make_proxy(cfg)
            for i in range(n):
                await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a " * i}],
                                                               "temperature": 0})
            await proxy.close()
            run_ids.append(metrics(tmp_path)["response_stats"]["evalproxy_run_id"])
        stats = metrics(tmp_path)["response_stats"]
        assert run_ids[0] != run_ids[1] and set(stats["runs"]) == set(run_ids)
        assert stats["count"] == 5 and stats["status_codes"] == {"200": 5}
        assert [stats["runs"][r]["count"] for r in run_ids] == [2, 3]
        assert stats["total_prompt_tokens"] == sum(r["total_prompt_tokens"] for r in stats["runs"].values())
        assert stats["total_prompt_tokens"] == 0 + 1 + 0 + 1 + 2  # "a " * i has i words
        # NeMo Evaluator's shape: an integer run_id counting starts, inference_run_times keyed "0", "1".
        assert stats["run_id"] == 1 and list(stats["inference_run_times"]) == ["0", "1"]
        times = stats["inference_run_times"]["1"]
        assert set(times) == {"run_start", "first_request_time", "last_request_time", "inference_time",
                              "time_to_first_request_seconds"}
        assert "T" in times["run_start"] and times["time_to_first_request_seconds"] >= 0
        assert stats["scores"]["latency_ms"]["stats"]["count"] == 5
