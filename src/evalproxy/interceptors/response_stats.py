"""response_stats: what the model really answered, counted honestly.

Listed after ``endpoint`` it sits inside ``caching``, so it counts real upstream calls only; cache replays never reach
it (caching counts its hits). Per answer: status code, finish reasons, prompt/completion/total (and reasoning)
tokens, latency, time to first event for streams, tool calls. Sums are exact integers (times in microseconds);
percentiles come from bounded samples.

The section has NeMo Evaluator's keys (an integer ``run_id`` counting the starts on this cache dir, and
``inference_run_times`` per run); evalproxy's own run id is ``evalproxy_run_id``, and ``runs`` is keyed by it.

Each run keeps its own numbers in ``<cache_dir>/run-<run_id>.json``; on start the earlier runs' files in the same
directory are read, so a resumed evaluation reports the totals of all its runs, and each run's own numbers under
``runs``. Nothing here touches a file after start: the server's statistics writer takes a :meth:`snapshot` on the event
loop every few seconds and at shutdown (a copy of the counters and samples) and writes the run's file, the
``save_individuals`` lines and the section, in a thread (see :class:`~evalproxy.adapter.flow.run.PersistedStats`).

Streams: finish reasons and tool calls come from the events as they pass (into a :class:`Seen`, as a whole body's);
usage from the stream's final usage chunk. A client that did not ask ``stream_options.include_usage`` gets no such
chunk, and this interceptor, listed after ``endpoint``, may not change the request. The endpoint asks for usage on the
client's behalf (its ``stream_usage`` setting, on by default): the server adds it to the request before the chain,
the usage chunk passes here like any event, and the server takes it out only of what the client reads. With that
setting off such a stream's tokens are unknown: it is counted under ``streams_without_usage`` and adds no tokens.

Latency is the upstream round trip as seen around ``call_next`` (for a stream, to its last event); percentiles use an
exact list of samples up to ``MAX_SAMPLES`` per run, then a uniform reservoir (see
:mod:`evalproxy.adapter.core.summary`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.errors import ProxyError
from evalproxy.adapter.core.files import load_run_files, run_files_dir
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.core.summary import MAX_SAMPLES, Summary, copy_fields, dump_fields, load_fields, merge_fields
from evalproxy.adapter.flow.answers import AnswerHandler, handle
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse, reasoning_tokens
from evalproxy.adapter.flow.run import PersistedStats, RunContext, RunFile
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.response_stats")

_TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "total_tokens", "reasoning_tokens")


def _earliest(a: float | None, b: float | None) -> float | None:
    return min(a, b) if a is not None and b is not None else (a if b is None else b)


def _latest(a: float | None, b: float | None) -> float | None:
    return max(a, b) if a is not None and b is not None else (a if b is None else b)


def _token_summaries() -> dict[str, Summary]:
    # Samples only where a distribution is shown (the completion tokens histogram); the rest are sums.
    return {k: Summary(keep=MAX_SAMPLES if k == "completion_tokens" else 0) for k in _TOKEN_KINDS}


@dataclass
class RunStats:
    """The numbers of one run. Persisted, loaded and merged field by field (:func:`dump_fields` and its kin): a
    counter added here is persisted and merged with no other change."""

    run_id: str = field(default="all", metadata={"merge": lambda a, b: "all"})
    count: int = 0
    successful: int = 0
    streamed: int = 0
    streams_without_usage: int = 0
    tool_calls: int = 0
    function_calls: int = 0
    status_codes: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    stop_reasons: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, Summary] = field(default_factory=_token_summaries)
    latency_us: Summary = field(default_factory=Summary)
    ttft_us: Summary = field(default_factory=Summary)
    first_at: float | None = field(default=None, metadata={"merge": _earliest})
    last_at: float | None = field(default=None, metadata={"merge": _latest})
    run_start: float | None = field(default=None, metadata={"merge": lambda a, b: None})
    merged_span: float | None = field(default=None, metadata={"persist": False, "merge": lambda a, b: None})
    """For totals over runs: the sum of each run's span (the gaps between runs are not inference time)."""

    @property
    def inference_time(self) -> float:
        """Wall-clock seconds from the first answer to the last (summed per run for totals)."""
        if self.merged_span is not None:
            return self.merged_span
        return (self.last_at or 0.0) - (self.first_at or 0.0)

    def dump(self, keep_samples: int = 10_000) -> dict[str, Any]:
        """The numbers as JSON; at most ``keep_samples`` samples per summary (persisted files stay small)."""
        return dump_fields(self, keep_samples)

    @classmethod
    def load(cls, data: dict[str, Any]) -> RunStats:
        """What :meth:`dump` wrote (a file written before a counter existed reads it as zero)."""
        return load_fields(cls(data["run_id"]), data)

    def copy(self) -> RunStats:
        """The same numbers, to read while this one goes on counting."""
        return copy_fields(self)

    def run_times(self) -> dict[str, Any]:
        """This run's entry of NeMo Evaluator's ``inference_run_times``: local ISO times (no zone), seconds."""

        def iso(t: float | None) -> str | None:
            return None if t is None else datetime.fromtimestamp(t).isoformat()

        first, last = self.first_at, self.last_at
        return {
            "run_start": iso(self.run_start),
            "first_request_time": iso(first),
            "last_request_time": iso(last),
            "inference_time": round(last - first, 4) if first is not None and last is not None else 0.0,
            "time_to_first_request_seconds": (round(first - self.run_start, 3)
                                              if first is not None and self.run_start is not None else None),
        }

    def merge(self, other: RunStats) -> RunStats:
        out = merge_fields(self, other, RunStats())
        out.merged_span = self.inference_time + other.inference_time
        return out

    def section(self, *, brief: bool = False) -> dict[str, Any]:
        """The section written to eval_factory_metrics.json, with NeMo Evaluator's names where it has them; ``brief``:
        this run's own numbers for the ``runs`` map (no samples, scores or histograms: those are in the totals)."""
        if brief:
            return self._brief()
        ms = 0.001
        lat = self.latency_us
        out: dict[str, Any] = {
            "description": "Response statistics saved during processing",
            "count": self.count,
            "successful_count": self.successful,
            "streamed_count": self.streamed,
            "streams_without_usage": self.streams_without_usage,
            "tool_calls_count": self.tool_calls,
            "function_calls_count": self.function_calls,
            "status_codes": dict(sorted(self.status_codes.items())),
            "finish_reason": dict(sorted(self.finish_reasons.items())),
            "stop_reason": dict(sorted(self.stop_reasons.items())),
            "errors": dict(sorted(self.errors.items())),
            "avg_latency_ms": round(lat.mean * ms, 3),
            "max_latency_ms": round((lat.max or 0) * ms, 3),
            "min_latency_ms": round((lat.min or 0) * ms, 3),
            **{f"{k}_latency_ms": v for k, v in lat.percentiles(scale=ms).items()},
        }
        if self.ttft_us.count:
            out["avg_time_to_first_token_ms"] = round(self.ttft_us.mean * ms, 3)
            out["min_time_to_first_token_ms"] = round((self.ttft_us.min or 0) * ms, 3)
            out["max_time_to_first_token_ms"] = round((self.ttft_us.max or 0) * ms, 3)
            out.update({f"{k}_time_to_first_token_ms": v for k, v in self.ttft_us.percentiles(scale=ms).items()})
        for kind, s in self.tokens.items():
            out[f"total_{kind}"] = s.total
            out[f"avg_{kind}"] = round(s.mean, 3)
            out[f"max_{kind}"] = s.max or 0
            out[f"min_{kind}"] = s.min or 0
        if self.first_at is not None and self.last_at is not None:
            span = self.inference_time
            out["inference_time"] = round(span, 3)
            out["requests_per_second"] = round(self.count / span, 3) if span > 0 else None
            out["first_request_time"] = self.first_at
            out["last_request_time"] = self.last_at
        scores = {"latency_ms": lat.seed_stats(ms)}
        if self.ttft_us.count:
            scores["time_to_first_token_ms"] = self.ttft_us.seed_stats(ms)
        for kind, s in self.tokens.items():
            if s.count:
                scores[kind] = s.seed_stats()
        out["scores"] = scores
        out["histograms"] = {"latency_ms": lat.histogram(scale=ms),
                             "completion_tokens": self.tokens["completion_tokens"].histogram()}
        return out

    def _brief(self) -> dict[str, Any]:
        ms = 0.001
        return {
            "count": self.count, "successful_count": self.successful, "streamed_count": self.streamed,
            "streams_without_usage": self.streams_without_usage, "tool_calls_count": self.tool_calls,
            "status_codes": dict(sorted(self.status_codes.items())),
            "finish_reason": dict(sorted(self.finish_reasons.items())),
            "errors": dict(sorted(self.errors.items())),
            **{f"total_{kind}": s.total for kind, s in self.tokens.items()},
            "avg_latency_ms": round(self.latency_us.mean * ms, 3),
            "first_request_time": self.first_at, "last_request_time": self.last_at,
            "inference_time": round(self.inference_time, 3),
        }


class ResponseStatsParams(BaseParams):
    """NeMo Evaluator's names; ``cache_dir`` defaults to where NeMo's legacy config puts it."""
    nemo_fields = frozenset({"every"})  # NeMo Evaluator fields with no effect here

    cache_dir: str | None = Field(default=None, description="Default: <output_dir>/response_stats_cache")
    logging_aggregated_stats_interval: int = Field(default=100, ge=0, description="Log totals every N answers")
    collect_token_stats: bool = True
    collect_finish_reasons: bool = True
    collect_tool_calls: bool = True
    save_individuals: bool = Field(
        default=False,
        description="Also append one line per answer to <cache_dir>/run-<run_id>.individuals.jsonl, in batches "
        "with the statistics file (NeMo keeps these in its cache; off here unless asked for)",
    )
    stats_file_saving_interval: int | None = Field(
        default=None, ge=1,
        description="Also write the statistics file every N answers (it is written every few seconds anyway)",
    )


@dataclass(slots=True)
class Seen:
    """What response_stats counts of one answer: a whole body's choices and usage, or what a stream's events showed as
    they passed. No copy is made: the choices are the answer's own objects."""

    choices: list[Any] = field(default_factory=list)
    """A whole answer's choices; of a stream, each choice event that carried a finish_reason."""
    tool_calls: bool = False
    """A stream's deltas carried tool calls (a whole answer's are seen in its messages)."""
    usage: Any = None
    json: bool = True
    """False: a whole answer whose body is not a JSON object."""

    @classmethod
    def of_body(cls, body: Any) -> Seen:
        if not isinstance(body, dict):
            return cls([], False, None, False)
        choices = body.get("choices")
        return cls(choices if isinstance(choices, list) else [], False, body.get("usage"))

    def on_chunk(self, obj: dict[str, Any]) -> None:
        """One event of a stream: finished choices, tool calls in deltas, and the usage chunk."""
        for ch in obj.get("choices") or ():
            if isinstance(ch, dict):
                if ch.get("finish_reason"):
                    self.choices.append(ch)
                delta = ch.get("delta")
                if isinstance(delta, dict) and delta.get("tool_calls"):
                    self.tool_calls = True
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]


class _Snapshot:
    """This run's numbers as taken on the event loop, with the earlier runs' (read at start, never changed)."""

    def __init__(self, where: Path, earlier: list[RunStats], mine: RunStats, rows: list[bytes]) -> None:
        self.where, self.earlier, self.mine, self.rows = where, earlier, mine, rows

    def files(self) -> list[RunFile]:
        name = f"run-{self.mine.run_id}"
        out = [RunFile(self.where / f"{name}.json", orjson.dumps(self.mine.dump()))]
        if self.rows:
            out.append(RunFile(self.where / f"{name}.individuals.jsonl", b"".join(self.rows), append=True))
        return out

    def section(self) -> dict[str, Any]:
        """Totals over this and earlier runs; this run's percentiles use every sample it has (its file keeps a
        bounded share)."""
        return _over_runs([*self.earlier, self.mine])


@register_for_adapter(name="response_stats", description="Counts statuses, finish reasons, tokens and latency.")
class ResponseStatsInterceptor(BaseInterceptor[ResponseStatsParams], PersistedStats):
    best_effort = True
    stats_section = "response_stats"

    Params = ResponseStatsParams

    def __init__(
        self, params: ResponseStatsParams, run: RunContext,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``clock`` measures latency (seconds, monotonic); tests pass one they advance by hand."""
        super().__init__(params, run)
        self.dir = run.resolve(params.cache_dir or run.output_dir / "response_stats_cache")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stats = RunStats(run.run_id)
        self.stats.run_start = run.started_at
        self.earlier = self._load_earlier()
        self._clock = clock
        self._individuals: list[bytes] = []  # lines not yet appended (save_individuals), flushed with the file
        prom = run.prometheus
        self._prompt_tokens = prom.child(prom.tokens, "prompt")
        self._completion_tokens = prom.child(prom.tokens, "completion")
        run.statistics.persist(self)

    def _load_earlier(self) -> list[RunStats]:
        return load_run_files([self.dir], RunStats.load, skip=self.run.run_id)

    @classmethod
    def merged_section(cls, params: ResponseStatsParams, output_dirs: list[Path]) -> dict[str, Any] | None:
        """The section of several proxies' statistics (workers, or proxies on other machines), merged exactly from
        the per-run files each wrote in its output dir: counts and sums add up, percentiles come from the samples."""
        by_run: dict[str, RunStats] = {}
        dirs = [run_files_dir(params.cache_dir, where, "response_stats_cache") for where in output_dirs]
        for stats in load_run_files(dirs, RunStats.load):
            same = by_run.get(stats.run_id)
            if same is None:
                by_run[stats.run_id] = stats
            else:  # one run served by several proxies: one run's numbers
                merged = same.merge(stats)
                merged.run_id, merged.merged_span = stats.run_id, None
                by_run[stats.run_id] = merged
        if not by_run:
            return None
        out = _over_runs(sorted(by_run.values(), key=lambda r: r.run_id))
        out["proxies_merged"] = len(output_dirs)
        return out

    def snapshot(self) -> _Snapshot:
        """This run's numbers now, and the answers' lines not yet saved (on the loop: counters and samples copied)."""
        rows, self._individuals = self._individuals, []
        return _Snapshot(self.dir, self.earlier, self.stats.copy(), rows)

    def section(self) -> dict[str, Any]:
        """The section as it is now: totals over this and earlier runs (computed here; writes nothing)."""
        return _over_runs([*self.earlier, self.stats.copy()])

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        t0 = self._clock()
        try:
            resp = await call_next(ctx)
        except ProxyError as exc:
            self._record_error(exc.status, exc.code or exc.type, ctx.request_id)
            raise
        return await handle(resp, _Observe(self, ctx, resp, t0))

    def _record_error(self, status: int, kind: str, request_id: int = 0) -> None:
        s = self.stats
        s.count += 1
        s.status_codes[str(status)] += 1
        s.errors[kind] += 1
        s.last_at = time.time()
        s.first_at = s.first_at or s.last_at
        if self.params.save_individuals:
            self._individuals.append(self._individual(request_id, s.last_at, status, Seen(), None, None))
        self.run.statistics.touch()

    def _record(
        self, status: int, seen: Seen, latency: float, ttft: float | None, streamed: bool, request_id: int = 0
    ) -> None:
        now = time.time()
        ok = 200 <= status < 300
        s = self.stats
        s.count += 1
        s.status_codes[str(status)] += 1
        s.first_at = s.first_at or now
        s.last_at = now
        s.latency_us.add(round(latency * 1_000_000))
        if streamed:
            s.streamed += 1
            if ttft is not None:
                s.ttft_us.add(round(ttft * 1_000_000))
            if ok and not seen.usage:
                s.streams_without_usage += 1
        if ok:
            s.successful += 1
            self._count(s, seen)
        if self.params.save_individuals:
            self._individuals.append(self._individual(request_id, now, status, seen, latency, ttft))
        if self.params.collect_token_stats and isinstance(seen.usage, dict):
            prompt, completion = seen.usage.get("prompt_tokens"), seen.usage.get("completion_tokens")
            if isinstance(prompt, int):
                self._prompt_tokens.inc(prompt)
            if isinstance(completion, int):
                self._completion_tokens.inc(completion)
                self.run.prometheus.completion_tokens.observe(completion)
        self.run.statistics.touch()
        interval = self.params.logging_aggregated_stats_interval
        if interval and s.count % interval == 0:
            self._log_totals()
        every = self.params.stats_file_saving_interval
        if every and s.count % every == 0:
            self.run.statistics.write_soon()

    def _individual(
        self, request_id: int, now: float, status: int, seen: Seen, latency: float | None, ttft: float | None,
    ) -> bytes:
        """One answer's line in NeMo Evaluator's per-request shape, plus latency."""
        u = seen.usage if isinstance(seen.usage, dict) else {}
        first = seen.choices[0] if seen.choices else None
        return orjson.dumps({
            "request_id": request_id, "timestamp": now, "status_code": status, "count": 1,
            "run_id": self.run.run_id, "prompt_tokens": u.get("prompt_tokens"),
            "completion_tokens": u.get("completion_tokens"), "total_tokens": u.get("total_tokens"),
            "finish_reason": first.get("finish_reason") if isinstance(first, dict) else None,
            "latency_ms": None if latency is None else round(latency * 1000, 3),
            "time_to_first_token_ms": None if ttft is None else round(ttft * 1000, 3),
        }) + b"\n"

    def _count(self, s: RunStats, seen: Seen) -> None:
        if not seen.json:
            s.errors["not_json"] += 1
            return
        p = self.params
        called_tools, called_function = seen.tool_calls, False
        for ch in seen.choices:
            if not isinstance(ch, dict):
                continue
            reason = ch.get("finish_reason")
            if reason and p.collect_finish_reasons:
                s.finish_reasons[str(reason)] += 1
            if ch.get("stop_reason") is not None and p.collect_finish_reasons:
                s.stop_reasons[str(ch["stop_reason"])] += 1  # vLLM: the stop string or token id that ended it
            msg = ch.get("message")
            if reason == "tool_calls" or (isinstance(msg, dict) and msg.get("tool_calls")):
                called_tools = True
            if reason == "function_call" or (isinstance(msg, dict) and msg.get("function_call")):
                called_function = True  # the legacy single-function form, counted apart as NeMo does
        if p.collect_tool_calls:
            s.tool_calls += called_tools
            s.function_calls += called_function
        usage = seen.usage
        if p.collect_token_stats and isinstance(usage, dict):
            for kind in ("prompt_tokens", "completion_tokens", "total_tokens"):
                v = usage.get(kind)
                if isinstance(v, int) and not isinstance(v, bool):
                    s.tokens[kind].add(v)
            rt = reasoning_tokens(usage)
            if rt is not None:
                s.tokens["reasoning_tokens"].add(rt)

    def _log_totals(self) -> None:
        s = self.stats
        log.info("response_stats: %d answers (%d ok), latency avg %.1f ms, tokens prompt %d completion %d, "
                 "finish %s", s.count, s.successful, s.latency_us.mean / 1000, s.tokens["prompt_tokens"].total,
                 s.tokens["completion_tokens"].total, dict(s.finish_reasons))

    async def aclose(self) -> None:
        self._log_totals()


def _over_runs(runs: list[RunStats]) -> dict[str, Any]:
    """The section over ``runs`` (in start order, the current one last). As NeMo Evaluator: ``run_id`` counts the
    starts on the statistics dir (0, 1, ...) and ``inference_run_times`` holds each run's times under that number as
    a string; evalproxy's own run ids key ``runs``."""
    total = runs[0]
    for r in runs[1:]:
        total = total.merge(r)
    out = total.section()
    out["run_id"] = len(runs) - 1
    out["evalproxy_run_id"] = runs[-1].run_id
    out["inference_run_times"] = {str(i): r.run_times() for i, r in enumerate(runs)}
    out["runs"] = {r.run_id: r.section(brief=True) for r in runs}
    return out

class _Observe(AnswerHandler):
    """Counts one answer, whole or streamed: finish reasons, tool calls and usage as they pass, the rest at the end."""

    def __init__(self, ic: ResponseStatsInterceptor, ctx: RequestContext, resp: ProxyResponse, t0: float) -> None:
        self.ic, self.ctx, self.resp, self.t0 = ic, ctx, resp, t0
        self.streamed = resp.stream is not None
        self.first: float | None = None
        self.body: Any = None
        self.seen = Seen() if self.streamed else None

    def on_object(self, obj: dict[str, Any], whole: bool) -> bool:
        if whole:
            self.body = obj
            return False
        if self.first is None:
            self.first = self.ic._clock() - self.t0
        if self.seen is not None:
            self.seen.on_chunk(obj)
        return False

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        latency = self.ic._clock() - self.t0
        seen = self.seen
        if seen is None:
            self.ic._record(self.resp.status, Seen.of_body(self.body if self.resp.ok else None), latency, None, False,
                            self.ctx.request_id)
            return []
        # No usage chunk: the endpoint may have asked for usage itself and kept it aside (see the module docstring).
        self.ic._record(self.resp.status, seen, latency, self.first, True, self.ctx.request_id)
        return []

    async def on_error(self, exc: BaseException) -> None:
        if isinstance(exc, ProxyError):
            self.ic._record_error(exc.status, "stream_" + (exc.code or exc.type), self.ctx.request_id)
