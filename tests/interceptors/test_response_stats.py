"""response_stats, called directly: counts, tokens, exact sums, latency percentiles, streams, params, persistence."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.adapter.core.errors import UpstreamProtocolError, UpstreamTimeoutError
from evalproxy.adapter.core.summary import Summary
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import DONE, Event
from evalproxy.adapter.server.output import STATISTICS_FILE, StatisticsFile
from evalproxy.interceptors.response_stats import ResponseStatsInterceptor, RunStats, Seen

Params = ResponseStatsInterceptor.Params


def answer(finish: str = "stop", prompt: int = 3, completion: int = 5, tools: bool = False,
           status: int = 200) -> ProxyResponse:
    msg: dict[str, Any] = {"role": "assistant", "content": "x"}
    if tools:
        msg["tool_calls"] = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    return ProxyResponse.from_json({"choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                              "total_tokens": prompt + completion}}, status=status)


def ctx(request_id: int = 0) -> RequestContext:
    return RequestContext(method="POST", path="/v1/chat/completions", json={}, raw=b"{}", request_id=request_id)


class Clock:
    """A clock the fake upstream advances by exactly the latency it stands for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def upstream(resp: ProxyResponse, clock: Clock | None = None, seconds: float = 0.0) -> Any:
    async def call_next(_: RequestContext) -> ProxyResponse:
        if clock is not None:
            clock.now += seconds
        return resp
    return call_next


def stream(*, usage: dict[str, Any] | None, finish: str = "stop", tool: bool = False,
           clock: Clock | None = None, step: float = 0.0) -> AsyncIterator[Event]:
    async def events() -> AsyncIterator[Event]:
        delta: dict[str, Any] = {"tool_calls": [{"index": 0, "id": "t"}]} if tool else {"content": "hi"}
        chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]
        if usage is not None:
            chunks.append({"choices": [], "usage": usage})
        for c in chunks:
            if clock is not None:
                clock.now += step
            yield Event.of(c)
        yield DONE
    return events()


async def write_statistics(run: RunContext) -> None:
    """What the server's statistics writer does on its tick: a snapshot on the loop, the files in a thread."""
    await StatisticsFile(run.output_dir / STATISTICS_FILE, run.statistics).write()


async def drain(resp: ProxyResponse) -> list[bytes]:
    assert resp.stream is not None
    return [e.raw async for e in resp.stream]


class TestCounting:
    async def test_hand_count(self, run: RunContext) -> None:
        """Counts, finish reasons, status codes, tokens and tool calls equal a hand count over fixed answers."""
        ic = ResponseStatsInterceptor(Params(), run)
        for a in [answer("stop", 3, 5), answer("length", 4, 16), answer("tool_calls", 2, 1, tools=True),
                  ProxyResponse.from_json({"error": {"message": "slow down"}}, status=429)]:
            await ic(ctx(), upstream(a))
        out = ic.section()
        assert (out["count"], out["successful_count"], out["tool_calls_count"]) == (4, 3, 1)
        assert out["status_codes"] == {"200": 3, "429": 1}
        assert out["finish_reason"] == {"length": 1, "stop": 1, "tool_calls": 1}
        assert (out["total_prompt_tokens"], out["total_completion_tokens"], out["total_total_tokens"]) == (9, 22, 31)
        assert (out["min_completion_tokens"], out["max_completion_tokens"]) == (1, 16)
        assert out["avg_prompt_tokens"] == 3.0
        assert out["scores"]["completion_tokens"]["stats"]["sum"] == 22

    @pytest.mark.parametrize(("choice", "tool_calls", "function_calls"), [
        ({"finish_reason": "tool_calls", "message": {"role": "assistant", "content": ""}}, 1, 0),
        ({"finish_reason": "stop", "message": {"role": "assistant", "tool_calls": [{"id": "1"}]}}, 1, 0),
        ({"finish_reason": "function_call", "message": {"function_call": {"name": "f"}}}, 0, 1),
        ({"finish_reason": "stop", "message": {"role": "assistant", "content": "no tools"}}, 0, 0),
    ])
    async def test_tool_calls_by_message_or_finish_reason(
        self, run: RunContext, choice: dict[str, Any], tool_calls: int, function_calls: int
    ) -> None:
        """An answer counts as a tool call if its message has tool_calls or it finished with tool_calls."""
        ic = ResponseStatsInterceptor(Params(), run)
        await ic(ctx(), upstream(ProxyResponse.from_json({"choices": [choice]})))
        out = ic.section()
        assert (out["tool_calls_count"], out["function_calls_count"]) == (tool_calls, function_calls)

    async def test_reasoning_tokens_and_stop_reason(self, run: RunContext) -> None:
        """Reasoning tokens come from completion_tokens_details; vLLM's stop_reason is counted by value."""
        ic = ResponseStatsInterceptor(Params(), run)
        body = {"choices": [{"finish_reason": "stop", "stop_reason": "</answer>", "message": {"content": "x"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 9, "total_tokens": 10,
                          "completion_tokens_details": {"reasoning_tokens": 6}}}
        for _ in range(2):
            await ic(ctx(), upstream(ProxyResponse.from_json(body)))
        out = ic.section()
        assert (out["total_reasoning_tokens"], out["max_reasoning_tokens"]) == (12, 6)
        assert out["stop_reason"] == {"</answer>": 2}

    @pytest.mark.parametrize("usage", [
        {"reasoning_tokens": 6}, {"output_tokens_details": {"reasoning_tokens": 6}},
    ], ids=["top-level", "responses-api"])
    async def test_reasoning_tokens_wherever_the_server_reports_them(
        self, run: RunContext, usage: dict[str, Any]
    ) -> None:
        """Reasoning tokens reported at the top of usage (some servers) or in output_tokens_details (Responses
        API) are counted as those in completion_tokens_details are."""
        ic = ResponseStatsInterceptor(Params(), run)
        body = {"choices": [{"finish_reason": "stop", "message": {"content": "x"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 9, "total_tokens": 10, **usage}}
        await ic(ctx(), upstream(ProxyResponse.from_json(body)))
        assert ic.section()["total_reasoning_tokens"] == 6

    async def test_transport_errors_by_kind(self, run: RunContext) -> None:
        """Errors raised below are counted by kind and status, and still raised."""
        ic = ResponseStatsInterceptor(Params(), run)
        for exc in (UpstreamTimeoutError("late"), UpstreamTimeoutError("late again")):
            async def failing(_: RequestContext, e: Exception = exc) -> ProxyResponse:
                raise e
            with pytest.raises(UpstreamTimeoutError):
                await ic(ctx(), failing)
        out = ic.section()
        assert out["errors"] == {"upstream_timeout": 2} and out["status_codes"] == {"504": 2}
        assert (out["count"], out["successful_count"]) == (2, 0)

    async def test_not_json_success_is_an_error_kind(self, run: RunContext) -> None:
        """A 200 whose body is not JSON is successful by status but counted under errors as not_json."""
        ic = ResponseStatsInterceptor(Params(), run)
        await ic(ctx(), upstream(ProxyResponse(200, body=b"<html>")))
        out = ic.section()
        assert out["errors"] == {"not_json": 1} and out["successful_count"] == 1

    @pytest.mark.parametrize("flag", ["collect_token_stats", "collect_finish_reasons", "collect_tool_calls"])
    async def test_collect_flags_switch_their_numbers_off(self, run: RunContext, flag: str) -> None:
        """NeMo's collect_* params turn off exactly their own numbers; counts stay."""
        ic = ResponseStatsInterceptor(Params(**{flag: False}), run)
        await ic(ctx(), upstream(answer("tool_calls", 3, 5, tools=True)))
        out = ic.section()
        assert out["count"] == 1
        assert (out["total_prompt_tokens"] == 0) is (flag == "collect_token_stats")
        assert (out["finish_reason"] == {}) is (flag == "collect_finish_reasons")
        assert (out["tool_calls_count"] == 0) is (flag == "collect_tool_calls")


class TestLatency:
    async def test_percentiles_from_known_samples(self, run: RunContext) -> None:
        """Latency from a clock the fake upstream advances: p50/p90/p99 match a hand calculation."""
        clock = Clock()
        ic = ResponseStatsInterceptor(Params(), run, clock=clock)
        # 10 answers taking 10, 20, ..., 100 ms. Linear interpolation between closest ranks over 10 sorted samples:
        # p50 at rank 4.5 -> 55; p90 at rank 8.1 -> 90 + 0.1*10 = 91; p99 at rank 8.91 -> 90 + 0.91*10 = 99.1.
        for ms in (30, 10, 100, 50, 20, 90, 40, 80, 70, 60):
            await ic(ctx(), upstream(answer(), clock, ms / 1000))
        out = ic.section()
        assert (out["p50_latency_ms"], out["p90_latency_ms"], out["p99_latency_ms"]) == (55.0, 91.0, 99.1)
        assert (out["min_latency_ms"], out["max_latency_ms"], out["avg_latency_ms"]) == (10.0, 100.0, 55.0)

    async def test_sums_do_not_drift(self, run: RunContext) -> None:
        """Ten answers of 0.1 s sum to exactly 1000 ms (integer microseconds: no 0.1 + 0.1 + ... drift)."""
        clock = Clock()
        ic = ResponseStatsInterceptor(Params(), run, clock=clock)
        for _ in range(10):
            await ic(ctx(), upstream(answer(), clock, 0.1))
        assert sum([0.1] * 10) != 1.0  # what float accumulation would have given
        stats = ic.section()["scores"]["latency_ms"]["stats"]
        assert Fraction(stats["sum"]) == 1000 and Fraction(stats["mean"]) == 100 and stats["stddev"] == 0

    async def test_stream_latency_to_last_event_and_ttft(self, run: RunContext) -> None:
        """A stream's latency runs to its last event; time to first token to its first event."""
        clock = Clock()
        ic = ResponseStatsInterceptor(Params(), run, clock=clock)
        for step_ms in (10, 30):
            resp = await ic(ctx(), upstream(ProxyResponse(200, stream=stream(usage=None, clock=clock,
                                                                              step=step_ms / 1000))))
            await drain(resp)
        out = ic.section()
        # Each stream: 2 events, each after `step`: first event at 1 step, last at 2 steps.
        assert (out["min_time_to_first_token_ms"], out["max_time_to_first_token_ms"]) == (10.0, 30.0)
        assert out["p50_time_to_first_token_ms"] == 20.0 and out["avg_time_to_first_token_ms"] == 20.0
        assert (out["min_latency_ms"], out["max_latency_ms"]) == (20.0, 60.0)

    def test_percentiles_use_every_sample_of_the_run(self, run: RunContext) -> None:
        """Percentiles of a run longer than the persisted sample share still come from all of its answers."""
        ic = ResponseStatsInterceptor(Params(), run)
        seen = Seen.of_body(answer().json)
        for i in range(20_000):  # the first 10,000 fast, the rest slow
            ic._record(200, seen, 0.001 if i < 10_000 else 0.1, None, False)
        out = ic.section()
        assert out["p90_latency_ms"] == 100.0 and out["p50_latency_ms"] == pytest.approx(50.5, abs=0.1)


class TestStreams:
    @pytest.mark.parametrize(("in_stream", "tokens", "without_usage"), [
        (True, 9, 0),
        (False, 0, 1),
    ], ids=["usage-chunk", "usage-unknown"])
    async def test_usage_sources(self, run: RunContext, in_stream: bool, tokens: int, without_usage: int) -> None:
        """Tokens come from the stream's usage chunk (the server asks for it on the client's behalf); without one,
        usage is unknown."""
        ic = ResponseStatsInterceptor(Params(), run)
        usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
        c = ctx()
        resp = await ic(c, upstream(ProxyResponse(200, stream=stream(usage=usage if in_stream else None))))
        events = await drain(resp)
        assert events[-1] == DONE.raw and len(events) == 3 + in_stream  # passed through untouched
        out = ic.section()
        assert (out["streamed_count"], out["total_total_tokens"], out["streams_without_usage"]) == (
            1, tokens, without_usage)
        assert out["finish_reason"] == {"stop": 1}

    async def test_streamed_tool_calls(self, run: RunContext) -> None:
        """A stream whose deltas carry tool_calls counts once as a tool call."""
        ic = ResponseStatsInterceptor(Params(), run)
        await drain(await ic(ctx(), upstream(ProxyResponse(200, stream=stream(usage=None, tool=True)))))
        assert ic.section()["tool_calls_count"] == 1

    async def test_a_broken_stream_is_an_error(self, run: RunContext) -> None:
        """A stream that breaks off is counted under stream_<code> and the error reaches the client."""
        ic = ResponseStatsInterceptor(Params(), run)

        async def broken() -> AsyncIterator[Event]:
            yield Event.of({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]})
            raise UpstreamProtocolError("cut")

        with pytest.raises(UpstreamProtocolError):
            await drain(await ic(ctx(), upstream(ProxyResponse(200, stream=broken()))))
        out = ic.section()
        assert out["errors"] == {"stream_upstream_protocol_error": 1} and out["successful_count"] == 0


class TestPersistence:
    async def test_earlier_runs_add_up_with_weighted_percentiles(self, run: RunContext) -> None:
        """A new run in the same directory adds the earlier run's counts, and percentiles weigh runs by count."""
        clock = Clock()
        first = ResponseStatsInterceptor(Params(), run, clock=clock)
        for _ in range(30):
            await first(ctx(), upstream(answer(), clock, 0.1))
        await write_statistics(run)  # persists run-test-run.json
        saved = run.output_dir / "response_stats_cache" / "run-test-run.json"
        data = orjson.loads(saved.read_bytes())
        data["first_at"], data["last_at"] = data["first_at"] - 7200, data["last_at"] - 3600  # an hour's run, ago
        saved.write_bytes(orjson.dumps(data))
        second_run = RunContext(output_dir=run.output_dir, run_id="second", config=run.config, server=run.server,
                                prometheus=run.prometheus)
        second = ResponseStatsInterceptor(Params(), second_run, clock=clock)
        for _ in range(10):
            await second(ctx(), upstream(answer(), clock, 0.001))
        out = second.section()
        assert out["count"] == 40 and out["total_prompt_tokens"] == 120
        assert {r: v["count"] for r, v in out["runs"].items()} == {"test-run": 30, "second": 10}
        assert out["p50_latency_ms"] == 100.0 and out["min_latency_ms"] == 1.0  # 3 of 4 answers took 100 ms
        # Time between the runs is not inference time: the total is the sum of each run's span.
        assert out["runs"]["test-run"]["inference_time"] == pytest.approx(3600, abs=1)
        assert out["inference_time"] == pytest.approx(sum(r["inference_time"] for r in out["runs"].values()),
                                                      abs=0.002)
        assert out["inference_time"] < 3601 and out["requests_per_second"] == pytest.approx(40 / 3600, abs=0.001)

    async def test_unreadable_earlier_file_is_skipped(self, run: RunContext) -> None:
        """A damaged file from an earlier run is ignored with a warning; this run's numbers still count."""
        d = run.output_dir / "response_stats_cache"
        d.mkdir(parents=True)
        (d / "run-old.json").write_bytes(b"{not json")
        ic = ResponseStatsInterceptor(Params(), run)
        await ic(ctx(), upstream(answer()))
        assert ic.section()["count"] == 1

    async def test_individuals_are_saved_in_batches(self, run: RunContext, tmp_path: Path) -> None:
        """save_individuals appends one line per answer when the statistics are written, not per request."""
        d = tmp_path / "stats"
        ic = ResponseStatsInterceptor(Params(save_individuals=True, cache_dir=str(d)), run)
        path = d / "run-test-run.individuals.jsonl"
        for i in (1, 2):
            await ic(ctx(i), upstream(answer(completion=i)))
        assert not path.exists()
        await write_statistics(run)
        await ic(ctx(3), upstream(answer(status=500)))
        await write_statistics(run)
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        assert [(r["request_id"], r["status_code"], r["completion_tokens"]) for r in rows] == [
            (1, 200, 1), (2, 200, 2), (3, 500, None)]  # tokens only from successes

    async def test_stats_file_saving_interval_writes_every_n(self, run: RunContext) -> None:
        """stats_file_saving_interval=2 asks the statistics writer for a write after the 2nd answer, not the 1st."""
        ic = ResponseStatsInterceptor(Params(stats_file_saving_interval=2), run)
        asked: list[int] = []
        run.statistics.wake = lambda: asked.append(ic.stats.count)
        await ic(ctx(), upstream(answer()))
        assert asked == []
        await ic(ctx(), upstream(answer()))
        assert asked == [2]
        await ic.aclose()

    async def test_the_file_gets_the_snapshot_not_later_counts(self, run: RunContext) -> None:
        """The writer writes the numbers of the snapshot taken on the loop, though more answers came before it ran."""
        ic = ResponseStatsInterceptor(Params(), run)
        for _ in range(2):
            await ic(ctx(), upstream(answer()))
        taken = run.statistics.snapshot()
        for _ in range(3):
            await ic(ctx(), upstream(answer()))
        writer = StatisticsFile(run.output_dir / STATISTICS_FILE, run.statistics)
        await asyncio.to_thread(writer.write_now, taken)
        section = orjson.loads((run.output_dir / STATISTICS_FILE).read_bytes())["response_stats"]
        persisted = orjson.loads((ic.dir / "run-test-run.json").read_bytes())
        assert (section["count"], persisted["count"], ic.stats.count) == (2, 2, 5)
        await writer.write()
        assert orjson.loads((run.output_dir / STATISTICS_FILE).read_bytes())["response_stats"]["count"] == 5


def filled(seed: int) -> RunStats:
    """A RunStats with a distinct value in every field."""
    s = RunStats(f"run-{seed}", run_start=1000.0 + seed, first_at=1001.0 + seed, last_at=1010.0 + seed)
    for i, f in enumerate(dataclasses.fields(s)):
        v = getattr(s, f.name)
        if isinstance(v, int):
            setattr(s, f.name, seed * 100 + i)
        elif isinstance(v, Counter):
            v.update({"a": seed + i, str(i): 1})
    for k, summary in [*s.tokens.items(), ("latency", s.latency_us), ("ttft", s.ttft_us)]:
        for v in (seed + len(k), seed * 7 + 3):
            summary.add(v)
    return s


class TestRunStats:
    def test_every_field_survives_a_dump_and_load(self) -> None:
        """Each field of RunStats reads back from its JSON as it was (the fields are walked, none listed by hand)."""
        s = filled(3)
        back = RunStats.load(orjson.loads(orjson.dumps(s.dump())))
        assert back.dump() == s.dump() and back == s

    def test_merge_adds_every_counter(self) -> None:
        """Merging two runs adds each integer field and counter, merges the summaries, and spans both runs."""
        a, b = filled(1), filled(2)
        m = a.merge(b)
        for f in dataclasses.fields(RunStats):
            x, y, got = getattr(a, f.name), getattr(b, f.name), getattr(m, f.name)
            if isinstance(x, (int, Counter)):
                assert got == x + y, f.name
            elif isinstance(x, Summary):
                assert (got.count, got.total) == (x.count + y.count, x.total + y.total), f.name
        assert (m.run_id, m.first_at, m.last_at, m.run_start) == ("all", a.first_at, b.last_at, None)
        assert m.inference_time == a.inference_time + b.inference_time

    def test_a_file_without_newer_counters_reads_them_as_zero(self) -> None:
        """A per-run file written before function_calls and stop_reasons existed loads with them empty."""
        data = filled(1).dump()
        del data["function_calls"], data["stop_reasons"]
        back = RunStats.load(data)
        assert (back.function_calls, back.stop_reasons, back.count) == (0, Counter(), filled(1).count)

    def test_a_copy_is_independent(self) -> None:
        """Counting on after a copy changes neither the copy's counters nor its samples."""
        s = filled(1)
        c = s.copy()
        s.count += 1
        s.status_codes["200"] += 1
        s.latency_us.add(999)
        s.tokens["completion_tokens"].add(5)
        assert c == filled(1)
