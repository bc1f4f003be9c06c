"""post_eval_report: ``report.html`` and ``report.json`` when a run ends (or again with ``evalproxy report DIR``).

``report.json`` is the file NeMo Evaluator writes, for tools that read it: a list of the first ``html_report_size``
saved pairs, each ``{request_data, display_request, response, endpoint, cache_key}`` (in arrival order, where NeMo
sorts by cache key). Everything else this report knows (summary, statistics, failures, the pairs for reading) goes to
``evalproxy_report.json`` beside it. As in NeMo, the default ``report_types`` is ``[html]``, and a run that saved no
pairs gets neither report.html nor report.json (``evalproxy_report.json`` still says why, when json is asked for).

The report reads only what the run left on disk: the effective config (``adapter_config.yaml``), the statistics
(``eval_factory_metrics.json``) and the saved pairs in whatever cache the ``caching`` interceptor was configured with.
It shows the run summary, statistics with small server-side SVG charts, the first ``html_report_size`` saved pairs
in the order their requests arrived (reasoning shown apart, raw JSON on demand, a curl command that reproduces each
request with ``$API_KEY`` in place of any secret) and, apart, failed requests. The HTML is one self-contained file:
no scripts, no external assets; everything from a request or a model is escaped.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import orjson
from pydantic import Field, ValidationError

from evalproxy.adapter.chain.hook import BaseHook
from evalproxy.adapter.config import AdapterConfig, ServerConfig, validation_error
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.files import atomic_write_bytes, dump_json
from evalproxy.adapter.core.intervals import score_interval
from evalproxy.adapter.core.loads import MAX_DEPTH, load_json, read_bounded, read_yaml, too_deep
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.core.redact import redact_obj, redact_text, redact_url
from evalproxy.adapter.flow.shape import content_text, message_of, split_reasoning, tool_call_text, usage_of
from evalproxy.adapter.registry import register_for_adapter
from evalproxy.adapter.server.output import CONFIG_FILE, RESULTS_FILES, STATISTICS_FILE
from evalproxy.adapter.server.upstream import upstream_url_for
from evalproxy.hooks.post_eval_report import formats
from evalproxy.hooks.post_eval_report.charts import report_charts
from evalproxy.storage import Failure, SavedPair, is_url, open_store

log = logging.getLogger("evalproxy.report")
DETAILS_FILE = "evalproxy_report.json"
MAX_FAILURES_SHOWN = 50
# Generation parameters are gathered from at most this many saved requests (saving can be unbounded).
MAX_REQUESTS_SCANNED = 10_000
GENERATION_PARAMS = ("temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "n", "stop",
                     "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "stream",
                     "reasoning_effort", "response_format")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("evalproxy.hooks", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class PostEvalReportParams(BaseParams):
    report_types: list[Literal["html", "json", "markdown", "csv", "latex"]] = Field(
        default=["html"], min_length=1, description="json: report.json and evalproxy_report.json; markdown, csv, "
        "latex: report.md, report.csv, report.tex (formats.py)")
    html_report_size: int | None = Field(default=None, ge=0, description="Pairs shown; null: every saved pair, as "
                                         "NeMo Evaluator (up to MAX_REQUESTS_SCANNED)")


def report_size(configured: int | None) -> int:
    """The pairs a report shows for the hook's ``html_report_size``: as set, or every saved pair when it is null, as
    NeMo Evaluator 0.2.8's hook does (the saved pairs are bounded by caching's ``max_saved_*``; the report reads at
    most ``MAX_REQUESTS_SCANNED``). The default hook and a legacy config set it (to ``html_report_size``, 5)."""
    return MAX_REQUESTS_SCANNED if configured is None else configured


@register_for_adapter(name="post_eval_report", description="Writes report.html and report.json.")
class PostEvalReportHook(BaseHook[PostEvalReportParams]):
    Params = PostEvalReportParams

    async def __call__(self) -> None:
        size = report_size(self.params.html_report_size)
        await render_reports(self.run.output_dir, adapter=self.run.config, server=self.run.server, size=size,
                             report_types=tuple(self.params.report_types))


async def report_again(adapter: AdapterConfig, server: ServerConfig, output_dir: Path) -> list[Path]:
    """The report as the run's ``post_eval_report`` hook wrote it, written again (``evalproxy run`` does, once the
    run record holds the scores); nothing when the hook is not in the run's config."""
    hook = next((h.config for _, h in adapter.enabled_hooks() if h.name == "post_eval_report"), None)
    if hook is None:
        return []
    params = PostEvalReportParams.model_validate(hook)
    return await render_reports(output_dir, adapter=adapter, server=server, size=report_size(params.html_report_size),
                                report_types=tuple(params.report_types))


def cache_dir_of(adapter: AdapterConfig, output_dir: Path) -> Path:
    """Where the run's caching interceptor kept its store directory (as configured: no hard-coded path)."""
    cfg = adapter.interceptor_config("caching") or {}
    return adapter.cache_dir(output_dir, cfg.get("cache_dir"))


def store_of(adapter: AdapterConfig, output_dir: Path) -> str | Path:
    """The run's store: its caching interceptor's ``cache_url`` (a shared server), else its cache directory."""
    cfg = adapter.interceptor_config("caching") or {}
    url = cfg.get("cache_url")
    return str(url) if isinstance(url, str) and url else cache_dir_of(adapter, output_dir)


@dataclass
class StoreContents:
    """What the report shows from the run's store, read through the store interface (a directory or a server)."""

    location: str
    pairs: list[SavedPair] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any] | None] = field(default_factory=list)
    saved_pairs: int = 0
    failure_count: int = 0
    note: str | None = None


async def read_store(adapter: AdapterConfig, output_dir: Path, size: int) -> StoreContents:
    """The first ``size`` saved pairs, the failures and the saved requests' parameters; a store that cannot be read
    gives a note, never an error (the report is still written)."""
    location = store_of(adapter, output_dir)
    out = StoreContents(str(location))
    if not is_url(location) and not (Path(location) / "requests").is_dir():
        out.note = f"no request/response pairs were saved (no cache at {location})"
        return out
    store = await asyncio.to_thread(open_store, location)
    try:
        limit, got = size, -1
        while True:  # pairs skipped as unreadable leave room for the next ones
            read = await store.saved_pairs(limit)
            out.pairs = [p for p in read if _readable(p, p.request, p.response)][:size]
            if len(out.pairs) >= size or len(read) <= got or limit >= MAX_REQUESTS_SCANNED:
                break
            got = len(read)
            limit = min(limit * 2, MAX_REQUESTS_SCANNED)
        out.failures = [f for f in await store.failures(MAX_FAILURES_SHOWN) if _readable(f, f.request)]
        out.requests = [p.request for p in await store.saved_pairs(MAX_REQUESTS_SCANNED, with_responses=False)
                        if not p.damaged and not too_deep(p.request)]
        stats = await store.stats()
        out.saved_pairs, out.failure_count = int(stats["saved_requests"]), int(stats["failures"])
    except Exception as exc:  # a server that is down, or a password the effective config shows redacted
        out.note = f"the store at {redact_url(str(location))} could not be read: {type(exc).__name__}: {exc}"
        log.warning("%s", out.note)
    finally:
        await store.aclose()
    return out


def _readable(record: SavedPair | Failure, *values: Any) -> bool:
    """Whether a stored pair or failure can be shown: not damaged, and nothing in it nested past ``MAX_DEPTH``
    (the JSON writers refuse such depth); one that cannot is skipped with a warning."""
    if record.damaged:
        return False  # the store's reader said why
    if any(too_deep(v) for v in values):
        log.warning("stored request %s/%s nests deeper than %d levels: left out of the report", record.run_id,
                    record.request_id, MAX_DEPTH)
        return False
    return True


def _load_effective_config(output_dir: Path) -> tuple[AdapterConfig, ServerConfig]:
    """The config the run wrote to its directory; defaults when it wrote none, a ConfigError when it is unusable."""
    if not output_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {output_dir}")
    path = output_dir / CONFIG_FILE
    try:
        doc = read_yaml(path) or {}
    except FileNotFoundError:
        return AdapterConfig(), ServerConfig(output_dir=str(output_dir))
    if not isinstance(doc, dict):
        raise ConfigError("expected a mapping with 'server' and 'adapter_config'", file=str(path))
    try:
        return (AdapterConfig.model_validate(doc.get("adapter_config") or {}),
                ServerConfig.model_validate(doc.get("server") or {}))
    except ValidationError as exc:
        raise validation_error(exc, file=str(path)) from None


async def render_reports(
    output_dir: Path,
    *,
    adapter: AdapterConfig | None = None,
    server: ServerConfig | None = None,
    size: int | None = None,
    report_types: tuple[str, ...] = ("html", "json"),
) -> list[Path]:
    """Build the report from a run directory and write the requested files; returns their paths."""
    output_dir = Path(output_dir)
    if adapter is None or server is None:
        loaded_adapter, loaded_server = await asyncio.to_thread(_load_effective_config, output_dir)
        adapter, server = adapter or loaded_adapter, server or loaded_server
    if size is None:  # as the run's hook showed them; a run without the hook: the adapter's html_report_size
        hook = next((h.config for _, h in adapter.enabled_hooks() if h.name == "post_eval_report"), None)
        if hook is not None:
            size = report_size(PostEvalReportParams.model_validate(hook).html_report_size)
        else:
            size = 5 if adapter.html_report_size is None else adapter.html_report_size
    contents = await read_store(adapter, output_dir, size)
    return await asyncio.to_thread(_render, output_dir, adapter, server, size, report_types, contents)


def _render(output_dir: Path, adapter: AdapterConfig, server: ServerConfig, size: int,
            report_types: tuple[str, ...], contents: StoreContents) -> list[Path]:
    report = build_report(output_dir, adapter, server, size, contents)
    nemo = [nemo_entry(p) for p in report["pairs"]]
    for p in report["pairs"]:
        del p["request_data"]  # the whole request is in report.json; the details keep the clipped one
    written = []
    if "json" in report_types:
        path = output_dir / DETAILS_FILE
        atomic_write_bytes(path, dump_json(report))
        written.append(path)
    for kind in (k for k in report_types if k in formats.FILES):  # written with or without pairs: run summaries
        atomic_write_bytes(path := output_dir / formats.FILES[kind], formats.RENDERERS[kind](report).encode())
        written.append(path)
    if not report["pairs"]:
        return written  # as NeMo Evaluator: no saved pairs, no report
    if "json" in report_types:
        path = output_dir / "report.json"
        atomic_write_bytes(path, dump_json(nemo))
        written.append(path)
    if "html" in report_types:
        path = output_dir / "report.html"
        try:
            charts = report_charts(report["statistics"].get("response_stats") or {})
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning("%s: response_stats are not as written, no charts: %s: %s", output_dir / STATISTICS_FILE,
                        type(exc).__name__, exc)
            charts = report_charts({})
        html = _env.get_template("report.html.j2").render(r=report, charts=charts)
        atomic_write_bytes(path, html.encode("utf-8"))
        written.append(path)
    return written


def nemo_entry(pair: dict[str, Any]) -> dict[str, Any]:
    """One entry of NeMo Evaluator's report.json, from a pair of the (already redacted) report."""
    return {"request_data": pair["request_data"], "display_request": pair["request_data"],
            "response": pair["response"], "endpoint": pair["endpoint"], "cache_key": pair["cache_key"]}


def build_report(output_dir: Path, adapter: AdapterConfig, server: ServerConfig, size: int,
                 contents: StoreContents) -> dict[str, Any]:
    """The report's content as plain data (what evalproxy_report.json holds)."""
    metrics: dict[str, Any] = {}
    path = output_dir / STATISTICS_FILE
    try:
        loaded = load_json(read_bounded(path), source=str(path))
        metrics = loaded if isinstance(loaded, dict) else {}
    except OSError:
        pass
    except ValueError as exc:
        log.warning("%s; the report shows no statistics", exc)
    pairs, failures, all_params = contents.pairs, contents.failures, contents.requests
    counts = {"saved_pairs": contents.saved_pairs, "failures": contents.failure_count}
    store_note = contents.note
    reasoning_cfg = adapter.interceptor_config("reasoning")
    chain = [ic.name for _, ic in adapter.enabled_interceptors()]
    upstream = redact_url(server.upstream_url)
    report = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "output_dir": str(output_dir),
        "scores": run_scores(output_dir),
        "summary": {
            "model": server.model_id or _first_model(pairs),
            "endpoint": upstream,
            "interceptors": chain,
            "post_eval_hooks": [h.name for _, h in adapter.enabled_hooks()],
            "cache_dir": redact_url(contents.location),
            "generation_params": _generation_params(all_params),
            "generation_params_from": len(all_params),
            "html_report_size": size,
            "saved_pairs_total": counts["saved_pairs"],
            "failures_total": counts["failures"],
        },
        "statistics": {k: metrics[k] for k in ("response_stats", "caching", "reasoning") if k in metrics},
        "pairs": [shown for p in pairs if (shown := _shown(_pair, p, upstream, reasoning_cfg)) is not None],
        "pairs_note": store_note or (None if counts["saved_pairs"] else "no request/response pairs were saved"),
        "failures": [shown for f in failures if (shown := _shown(_failure, f)) is not None],
    }
    return redact_report(report, server.secrets())


def run_scores(output_dir: Path) -> dict[str, Any]:
    """How the model did, from the run record (``results.yaml``) beside the report: one row per task or group and
    score, with its stderr, a 95 % interval and the sample count where the harness gave them; the task type, the
    params and the endpoint type. Read as plain YAML (no code runs); no record gives rows ``[]`` and a note."""
    doc: Any = None
    for name in RESULTS_FILES:
        try:
            doc = read_yaml(output_dir / name)
            break
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            return {"rows": [], "note": f"{name} could not be read: {exc}"}
    if not isinstance(doc, dict):
        return {"rows": [], "note": "no run record (results.yaml) here: the scores are written by evalproxy run"}
    results, config, harness, target = (doc[k] if isinstance(doc.get(k), dict) else {}
                                        for k in ("results", "config", "harness", "target"))
    rows = [row for section in ("groups", "tasks") for row in _score_rows(section, results.get(section))]
    endpoint = target.get("api_endpoint")
    note = None if rows else f"no scores in the run record ({harness.get('status') or 'no harness'}: " \
                             f"{harness.get('reason') or 'the harness reported none'})"
    return {"rows": rows, "note": note, "type": config.get("type"), "params": config.get("params") or {},
            "endpoint_type": endpoint.get("type") if isinstance(endpoint, dict) else None,
            "harness": harness.get("name"), "harness_version": harness.get("version")}


def _score_rows(section: str, tasks: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for task, tr in (tasks or {}).items() if isinstance(tasks, dict) else ():
        metrics: Any = tr.get("metrics") if isinstance(tr, dict) else None
        if not isinstance(metrics, dict) or not metrics:  # none, or not the shape a record has: no scores to show
            rows.append({"kind": section[:-1], "task": str(task), "metric": None, "score": None, "value": None,
                         "stderr": None, "ci95": None, "count": None})
            continue
        for metric, m in metrics.items():
            scores = m.get("scores") if isinstance(m, dict) else None
            for score, sc in scores.items() if isinstance(scores, dict) else ():
                if not isinstance(sc, dict) or not isinstance(sc.get("value"), int | float):
                    continue
                stats: dict[str, Any] = sc["stats"] if isinstance(sc.get("stats"), dict) else {}
                value, stderr = float(sc["value"]), stats.get("stderr")
                count = stats.get("count")
                ci = score_interval(value, float(stderr) if isinstance(stderr, int | float) else None,
                                    count if isinstance(count, int) else None)
                rows.append({"kind": section[:-1], "task": str(task), "metric": str(metric), "score": str(score),
                             "value": value, "stderr": stderr, "ci95": list(ci) if ci else None, "count": count})
    return rows


def _shown(show: Callable[..., dict[str, Any]], record: Any, *args: Any) -> dict[str, Any] | None:
    """``show(record, *args)``, or ``None`` (and a warning) when the stored data is not what it should be."""
    try:
        return show(record, *args)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        log.warning("stored request %s/%s left out of the report, its data is not as written: %s: %s",
                    getattr(record, "run_id", "?"), getattr(record, "request_id", "?"), type(exc).__name__, exc)
        return None


# What the model answered is redacted by value only: its field names are the model's (logprobs entries have a
# "token" field that a by-name redaction would blank).
_MODEL_SIDE = ("response", "answers")


def redact_report(report: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """The report with secrets removed wherever a key could appear.

    Saved requests were redacted by field name when stored; a key can still sit in a message, an error text, an
    answer or the config, so everything goes through the redactor once more, now knowing the run's key.
    """
    rest: dict[str, Any] = redact_obj({k: v for k, v in report.items() if k != "pairs"}, secrets)
    pairs = [{k: _redact_values(v, secrets) if k in _MODEL_SIDE else redact_obj(v, secrets) for k, v in pair.items()}
             for pair in report["pairs"]]
    return {k: pairs if k == "pairs" else rest[k] for k in report}


def _redact_values(obj: Any, secrets: list[str]) -> Any:
    """``obj`` with the given secrets and bearer tokens removed from every string, field names left alone."""
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    if isinstance(obj, dict):
        return {k: _redact_values(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact_values(v, secrets) for v in obj]
    return obj


def _first_model(pairs: list[SavedPair]) -> str | None:
    for p in pairs:
        if p.request and isinstance(p.request.get("model"), str):
            return str(p.request["model"])
    return None


def _generation_params(requests: list[dict[str, Any] | None]) -> dict[str, list[Any]]:
    """Each generation parameter seen in the saved requests, with its distinct values."""
    seen: dict[str, list[Any]] = {}
    for req in requests:
        if not req:
            continue
        for name in GENERATION_PARAMS:
            if name in req:
                values = seen.setdefault(name, [])
                if req[name] not in values and len(values) < 10:
                    values.append(req[name])
    return seen


def _text(content: Any) -> str:
    """A content for reading: its text, other parts (images, audio) as ``[their type]``."""
    return content_text(content, "\n", other_parts=True)


def curl_command(url: str, body: Any) -> str:
    """A shell command that sends ``body`` again, with ``$API_KEY`` where a key goes."""
    data = orjson.dumps(redact_obj(body)).decode()
    stream = " -N" if isinstance(body, dict) and body.get("stream") is True else ""  # print events as they come
    return (f"curl -sS{stream} {shlex.quote(url)} \\\n  -H 'Content-Type: application/json' \\\n"
            f"  -H \"Authorization: Bearer $API_KEY\" \\\n  -d {shlex.quote(data)}")


def _pair(p: SavedPair, upstream: str | None, reasoning_cfg: dict[str, Any] | None) -> dict[str, Any]:
    request = p.request or {}
    messages = [_message(m) for m in request.get("messages") or [] if isinstance(m, dict)]
    if not messages and "prompt" in request:
        messages = [{"role": "prompt", "content": _text(request["prompt"]) if not isinstance(request["prompt"], list)
                     else "\n---\n".join(map(str, request["prompt"]))}]
    answers = []
    response = p.response if isinstance(p.response, dict) else {}
    for ch in response.get("choices") or []:
        if not isinstance(ch, dict):
            continue
        msg = message_of(ch) or {}
        content = _text(msg.get("content")) if msg else _text(ch.get("text"))
        reasoning = msg.get("reasoning_content") if msg else None
        answer = content
        if reasoning_cfg is not None:
            # A stored answer is the model's raw one: the text up to the end token is its reasoning.
            split = split_reasoning(content, reasoning_cfg.get("start_reasoning_token", "<think>"),
                                    reasoning_cfg.get("end_reasoning_token", "</think>"))
            if split.finished:
                reasoning, answer = split.reasoning, split.answer
        answers.append({"index": ch.get("index", 0), "content": answer,
                        "reasoning": None if reasoning is None else _text(reasoning),
                        "finish_reason": ch.get("finish_reason"),
                        "tool_calls": msg.get("tool_calls") if msg else None})
    url = upstream_url_for(upstream, p.path) if upstream else p.path
    return {
        "run_id": p.run_id, "request_id": p.request_id, "cache_key": p.key, "occurrence": p.occurrence,
        "path": p.path, "status": p.status, "stream": p.stream,
        "received_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.received_at)),
        "messages": messages, "answers": answers,
        "usage": usage_of(response),
        # The curl command carries the whole body (it must reproduce the request); the raw view clips media.
        "request": clip_media(request), "response": p.response, "curl": curl_command(url, request),
        "request_data": request, "endpoint": url,
    }


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """A request message for reading: role (with the tool's name or call id), text, and any tool calls it made."""
    role = str(m.get("role", "?"))
    who = m.get("name") or m.get("tool_call_id")
    out: dict[str, Any] = {"role": role, "content": _text(m.get("content"))}
    if isinstance(who, str) and who:
        out["name"] = who
    if m.get("tool_calls"):
        out["tool_calls"] = m["tool_calls"]
    return out


MAX_MEDIA_CHARS = 256


def clip_media(obj: Any) -> Any:
    """``obj`` with inline media (``data:`` URLs: images, audio) cut short; a report shows requests, not pixels."""
    if isinstance(obj, str):
        if obj.startswith("data:") and len(obj) > MAX_MEDIA_CHARS:
            head = obj[: obj.find(",") + 1] if 0 < obj.find(",") < MAX_MEDIA_CHARS else obj[:64]
            return f"{head}... ({len(obj)} chars, clipped in the report)"
        return obj
    if isinstance(obj, dict):
        return {k: clip_media(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clip_media(v) for v in obj]
    return obj


def _failure(f: Any) -> dict[str, Any]:
    request = f.request if isinstance(f.request, dict) else {}
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    prompt = _text(messages[-1].get("content")) if messages else _text(request.get("prompt"))
    return {"run_id": f.run_id, "request_id": f.request_id, "path": f.path, "status": f.status,
            "error": f.error, "request": clip_media(f.request), "last_message": prompt[:300],
            "received_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.received_at))}


def pretty_json(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode()


def tool_calls_text(calls: Any) -> str:
    """Tool calls as one readable line each: ``name(arguments)  [id]``; anything unexpected as JSON."""
    if not isinstance(calls, list):
        return pretty_json(calls)
    lines = []
    for c in calls:
        if not (isinstance(c, dict) and isinstance(c.get("function"), dict)):
            lines.append(orjson.dumps(c).decode())
            continue
        lines.append(tool_call_text(c) + (f"  [{c['id']}]" if c.get("id") else ""))
    return "\n".join(lines)


def or_dash(value: Any) -> Any:
    """A statistic for display: ``-`` where there is none."""
    return "-" if value is None else value


_env.filters["pretty"] = pretty_json
_env.filters["calls"] = tool_calls_text
_env.filters["n"] = or_dash
