"""What every export destination (W&B, MLflow, inspect) reads of a run directory.

:func:`read_run` gives a :class:`RunView`: the run record, a stable invocation id, the scores of each task (and
group), a curated set of proxy statistics whose names are the same on every run, and the run's files. Per-sample
rows come from :func:`sample_rows`: the harness's own per-sample scores (``samples.jsonl``) joined, where the run
kept them, with the request the proxy saw for the sample (its ledger line, its stored answer and, when
``save_requests`` was on, its body). Reading never runs a run directory's code: YAML and JSON only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from evalproxy.adapter.flow.shape import answer_text, content_text
from evalproxy.adapter.server.output import CONFIG_FILE, RESULTS_FILES, STATISTICS_FILE, read_json_file
from evalproxy.records.export import find_results_file
from evalproxy.records.harnesses import PARSERS
from evalproxy.records.harnesses.base import SampleScore, read_samples
from evalproxy.records.observed import LEDGER_FILE, LedgerEntry, read_ledger
from evalproxy.records.results import RunRecord, read_results
from evalproxy.storage import is_url, open_store, run_store

log = logging.getLogger("evalproxy")

RUN_FILES = (*RESULTS_FILES, STATISTICS_FILE, CONFIG_FILE, "report.html", "report.json",
             "evalproxy_report.json", "samples.jsonl", LEDGER_FILE)
"""The files of a run directory an export carries, where present (the harness's own files are added to them)."""

CURATED_STATS: tuple[tuple[str, str, str], ...] = (
    ("requests", "response_stats", "count"),
    ("successful_requests", "response_stats", "successful_count"),
    ("streamed_requests", "response_stats", "streamed_count"),
    ("tool_call_requests", "response_stats", "tool_calls_count"),
    ("latency_ms_avg", "response_stats", "avg_latency_ms"),
    ("latency_ms_p50", "response_stats", "p50_latency_ms"),
    ("latency_ms_p90", "response_stats", "p90_latency_ms"),
    ("latency_ms_p99", "response_stats", "p99_latency_ms"),
    ("latency_ms_max", "response_stats", "max_latency_ms"),
    ("prompt_tokens_total", "response_stats", "total_prompt_tokens"),
    ("prompt_tokens_avg", "response_stats", "avg_prompt_tokens"),
    ("completion_tokens_total", "response_stats", "total_completion_tokens"),
    ("completion_tokens_avg", "response_stats", "avg_completion_tokens"),
    ("reasoning_tokens_total", "response_stats", "total_reasoning_tokens"),
    ("requests_per_second", "response_stats", "requests_per_second"),
    ("cache_hits", "caching", "hits"),
    ("cache_misses", "caching", "misses"),
    ("cache_hit_ratio", "caching", "hit_ratio"),
    ("responses_with_reasoning", "reasoning", "responses_with_reasoning"),
    ("reasoning_finished_ratio", "reasoning", "reasoning_finished_ratio"),
)
"""``(name, section, key)``: the proxy statistics exports carry, under these names on every run. Nothing keyed by a
run id, no timestamps: a statistic a run does not have is left out, never renamed."""

_READ_BATCH = 500  # answers asked of a store at once
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class RunView:
    """One run directory as the exports see it."""

    base: Path
    record: RunRecord
    invocation: str
    tasks: dict[str, dict[str, float]]
    """Task or group -> ``{metric}/{score}`` -> value."""
    stats: dict[str, float]
    """Curated proxy statistics by their stable names (:data:`CURATED_STATS`)."""

    @property
    def model(self) -> str:
        return self.record.target.api_endpoint.model_id or "unknown"

    @property
    def harness(self) -> str:
        return self.record.harness.name or "unknown"

    def files(self) -> list[Path]:
        """The run's own files present in its directory, then the harness's output files that still exist and that
        a harness parser recognises as its output: a run record that names any other file (``/etc/passwd``, a
        link out of the run) never makes an export upload it."""
        out = [self.base / n for n in RUN_FILES if (self.base / n).is_file() and not (self.base / n).is_symlink()]
        for f in self.record.harness.files:
            p = Path(f) if os.path.isabs(f) else self.base / f
            if p.is_file() and not p.is_symlink() and p not in out and any(h.is_output(p) for h in PARSERS):
                out.append(p)
        return out

    def job_id(self, task: str) -> str:
        """NeMo's job id of a task: the invocation id and the task's index in the run."""
        return f"{self.invocation}.{list(self.tasks).index(task)}"


def stable_id(*parts: str, limit: int = 64) -> str:
    """An id made of ``parts`` fit for W&B run ids and artifact names; too long ones end in a digest."""
    text = _UNSAFE_ID.sub("_", "-".join(parts)).strip("_")
    if len(text) <= limit:
        return text
    digest = hashlib.sha256("-".join(parts).encode()).hexdigest()[:12]
    return f"{text[:limit - 13]}-{digest}"


def invocation_id(record: RunRecord, results_path: Path) -> str:
    """The run's id (``evalproxy.run_id``), else a digest of where its record is: the same run gives the same id."""
    if record.evalproxy.run_id:
        return record.evalproxy.run_id
    return hashlib.sha256(str(results_path.resolve()).encode()).hexdigest()[:16]


def task_scores(record: RunRecord) -> dict[str, dict[str, float]]:
    """Task (then group) -> ``{metric}/{score}`` -> value; a task without scores is left out."""
    out: dict[str, dict[str, float]] = {}
    for section in (record.results.tasks, record.results.groups):
        for task, tr in section.items():
            scores = {f"{metric}/{score}": s.value for metric, m in tr.metrics.items()
                      for score, s in m.scores.items()}
            if scores and task not in out:
                out[task] = scores
    return out


def curated_stats(run_dir: Path) -> dict[str, float]:
    """The curated proxy statistics of a run from its ``eval_factory_metrics.json`` (none when it has none)."""
    data = read_json_file(run_dir / STATISTICS_FILE)
    out: dict[str, float] = {}
    for name, section, key in CURATED_STATS:
        part = data.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def read_run(run_dir: str | os.PathLike[str]) -> RunView:
    """A run directory (or its ``results.yaml``) as the exports see it; a ``ConfigError`` when it has no record."""
    path = find_results_file(run_dir)
    record = read_results(path)
    return RunView(base=path.parent, record=record, invocation=invocation_id(record, path),
                   tasks=task_scores(record), stats=curated_stats(path.parent))


def finished_at(view: RunView) -> datetime:
    """When the run ended: its record's ``finished_at``, else when its record was written."""
    stamp = view.record.evalproxy.finished_at
    try:
        return datetime.fromisoformat(stamp) if stamp else _record_time(view)
    except ValueError:
        return _record_time(view)


def _record_time(view: RunView) -> datetime:
    for name in RESULTS_FILES:
        if (view.base / name).exists():
            return datetime.fromtimestamp((view.base / name).stat().st_mtime)
    return datetime.now()


@dataclass
class Exchange:
    """One request the proxy saw, as the run kept it."""

    prompt: Any = None
    """The request's messages (chat) or prompt (completions) when its body was saved; else None."""
    answer: str | None = None
    """The answer's text as the store holds it (the model's raw answer, before response-side changes)."""
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_hit: bool | None = None

    def user_text(self) -> str:
        """The request's last user message (or its prompt), as text; ``""`` when its body was not saved."""
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt, list):
            for msg in reversed(self.prompt):
                if isinstance(msg, Mapping) and msg.get("role") == "user":
                    return content_text(msg.get("content"), "\n")
        return ""


@dataclass
class SampleRow:
    """One sample of one task: its scores by metric, what the harness recorded, and its request where known."""

    task: str
    sample_id: str
    scores: dict[str, float] = field(default_factory=dict)
    answer: str | None = None
    input: str | None = None
    target: str | None = None
    exchange: Exchange | None = None

    @property
    def prompt_text(self) -> str:
        if self.input:
            return self.input
        return self.exchange.user_text() if self.exchange is not None else ""

    @property
    def answer_text(self) -> str:
        if self.answer is not None:
            return self.answer
        return (self.exchange.answer or "") if self.exchange is not None else ""


def _rows(samples: list[SampleScore]) -> list[SampleRow]:
    rows: dict[tuple[str, str], SampleRow] = {}
    for s in samples:
        row = rows.setdefault((s.task, s.sample_id), SampleRow(s.task, s.sample_id))
        row.scores[s.metric] = s.value
        row.answer = row.answer if row.answer is not None else s.answer
        for name in ("input", "target"):  # fields a newer samples.jsonl carries
            value = getattr(s, name, None)
            if isinstance(value, str) and getattr(row, name) is None:
                setattr(row, name, value)
    return list(rows.values())


def _ledger(run_dir: Path) -> tuple[list[LedgerEntry], str | Path | None]:
    """The first ledger entry of each distinct request, and the run's store (None: it has none). Blocking."""
    entries: dict[str, LedgerEntry] = {}
    for e in read_ledger(run_dir):
        entries.setdefault(e.prompt_key, e)
    try:
        location = run_store(run_dir)
    except Exception as exc:  # a store the run dir cannot name (a redacted URL): the ledger alone then
        log.warning("export: the store of %s cannot be read (%s): answers and prompts left out", run_dir, exc)
        return list(entries.values()), None
    if is_url(location) or (location != run_dir and Path(location).is_dir()):
        return list(entries.values()), location
    return list(entries.values()), None


async def _exchanges(run_dir: Path) -> list[Exchange]:
    """Each distinct request of the run's ledger, with its stored answer and saved body where the store has them."""
    entries, location = await asyncio.to_thread(_ledger, run_dir)
    keyed = [e for e in entries if e.cache_key is not None]
    bodies: dict[str, Any] = {}
    answers: dict[str, str | None] = {}
    if location is not None:
        store = await asyncio.to_thread(open_store, location)
        try:
            for i in range(0, len(keyed), _READ_BATCH):
                part = keyed[i:i + _READ_BATCH]
                got = await store.get_answers([(e.cache_key or "", e.slot or 0) for e in part])
                answers.update((e.prompt_key, answer_text(a.json()) if a is not None else None)
                               for e, a in zip(part, got, strict=True))
            for p in await store.saved_pairs(with_responses=False):
                if isinstance(p.request, dict) and not p.damaged:
                    bodies.setdefault(p.key, p.request)
        finally:
            await store.aclose()
    out = []
    for e in entries:
        body = bodies.get(e.cache_key or "") or {}
        prompt = body.get("messages", body.get("prompt")) if isinstance(body, dict) else None
        out.append(Exchange(prompt=prompt, answer=answers.get(e.prompt_key), latency_ms=e.latency_ms,
                            prompt_tokens=e.prompt_tokens, completion_tokens=e.completion_tokens,
                            cache_hit=e.cache_hit))
    return out


def _join(rows: list[SampleRow], exchanges: list[Exchange]) -> None:
    """Give each row its request: the one whose user text holds the sample's input, else the one request whose
    answer is the sample's answer (an answer two requests share matches neither)."""
    by_answer: dict[str, list[Exchange]] = {}
    for x in exchanges:
        if x.answer is not None:
            by_answer.setdefault(x.answer.strip(), []).append(x)
    texts = [(x, text) for x in exchanges if (text := x.user_text())]
    words: dict[str, list[int]] = {}  # a word -> the texts it is a word of
    for i, (_, text) in enumerate(texts):
        for w in set(text.split()):
            words.setdefault(w, []).append(i)
    for row in rows:
        needle = row.input.strip() if row.input else ""
        if needle:
            found = [x for x, text in _holding(needle, texts, words) if needle in text]
            if len(found) == 1:
                row.exchange = found[0]
                continue
        if row.answer is not None:
            same = by_answer.get(row.answer.strip(), [])
            if len(same) == 1:
                row.exchange = same[0]


def _holding(needle: str, texts: list[tuple[Exchange, str]],
             words: dict[str, list[int]]) -> list[tuple[Exchange, str]]:
    """The texts that may hold ``needle``: those having its rarest inner word as a word (a word of the needle but its
    first and last, which the text may run on into, is a word of every text holding it); all of them for a needle of
    fewer than three words. Without this, joining N samples to N requests read N * N texts (minutes for a task of
    14,000 samples)."""
    inner = needle.split()[1:-1]
    if not inner:
        return texts
    rarest = min((words.get(w, []) for w in inner), key=len)
    return [texts[i] for i in rarest]


def sample_rows(run_dir: str | os.PathLike[str]) -> list[SampleRow]:
    """The run's samples (from ``samples.jsonl``) joined with the requests the proxy saw. Blocking: it runs an event
    loop of its own for the store (call it from a thread inside an event loop)."""
    base = Path(run_dir)
    rows = _rows(list(read_samples(base)))
    if not rows:
        return rows
    try:
        exchanges = asyncio.run(_exchanges(base))
    except Exception as exc:  # the samples stand without their requests
        log.warning("export: the requests of %s cannot be read (%s: %s)", base, type(exc).__name__, exc)
        exchanges = []
    _join(rows, exchanges)
    return rows
