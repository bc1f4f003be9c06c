"""Many run records into NeMo Evaluator's ``processed_results.json`` (or a long-format CSV).

Shape: ``{export_timestamp, benchmarks: {name: {models: {model_id: [entry, ...]}}}}`` with each entry
``{invocation_id, job_id, harness, container, scores: {flat_name: value}, timestamp, executor}``. A run's
benchmark is its ``config.type`` when it has one (a nemo-evaluator record); otherwise each task or group of the run is
one benchmark, holding the scores whose flat name (``{task}_{metric}_{score}``) belongs to it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from evalproxy.adapter.core.errors import ConfigError
from evalproxy.records.results import RunRecord, read_results, write_atomic

PROCESSED_FILE = "processed_results.json"
CSV_FILE = "processed_results.csv"
EXECUTOR = "local"
CSV_COLUMNS = ("benchmark", "model", "invocation_id", "job_id", "harness", "container", "timestamp", "executor",
               "score_name", "value")


def _invocation_id(record: RunRecord, results_path: Path) -> str:
    if record.evalproxy.run_id:
        return record.evalproxy.run_id
    return hashlib.sha256(str(results_path.resolve()).encode()).hexdigest()[:16]


def _timestamp(record: RunRecord, results_path: Path) -> str:
    if record.evalproxy.finished_at:
        return record.evalproxy.finished_at
    return datetime.fromtimestamp(results_path.stat().st_mtime).isoformat()


def find_results_file(run_dir: str | os.PathLike[str]) -> Path:
    """The ``results.yaml`` (or NeMo's ``results.yml``) of a run directory, also one or two levels down."""
    p = Path(run_dir)
    if p.is_file():
        return p
    for pattern in ("results.yaml", "results.yml", "*/results.yaml", "*/results.yml", "*/*/results.yml",
                    "*/*/results.yaml"):
        found = sorted(p.glob(pattern))
        if found:
            return found[0]
    raise ConfigError("no results.yaml in this run directory", file=str(p))


def benchmark_scores(record: RunRecord) -> dict[str, dict[str, float]]:
    """Benchmark name -> flat scores of one run record."""
    flat = record.results.flat()
    kind = record.config.model_extra.get("type") if record.config.model_extra else None
    if isinstance(kind, str) and kind:
        return {kind: flat}
    out: dict[str, dict[str, float]] = {}
    for section in (record.results.tasks, record.results.groups):
        for task, tr in section.items():
            bucket = out.setdefault(task, {})
            for metric, m in tr.metrics.items():
                for score, s in m.scores.items():
                    bucket[f"{task}_{metric}_{score}"] = s.value
    return {k: v for k, v in out.items() if v}


def build_processed_results(run_dirs: Sequence[str | os.PathLike[str]], *,
                            now: datetime | None = None) -> dict[str, Any]:
    """The ``processed_results.json`` document for the given run directories (in the order given)."""
    benchmarks: dict[str, Any] = {}
    for run_dir in run_dirs:
        path = find_results_file(run_dir)
        record = read_results(path)
        invocation = _invocation_id(record, path)
        model = record.target.api_endpoint.model_id or "unknown"
        stamp = _timestamp(record, path)
        for i, (bench, scores) in enumerate(benchmark_scores(record).items()):
            entry = {
                "invocation_id": invocation,
                "job_id": f"{invocation}.{i}",
                "harness": record.harness.name,
                "container": (record.model_extra or {}).get("container"),
                "scores": dict(sorted(scores.items())),
                "timestamp": stamp,
                "executor": EXECUTOR,
            }
            benchmarks.setdefault(bench, {"models": {}})["models"].setdefault(model, []).append(entry)
    stamp_now = (now or datetime.now(UTC).replace(tzinfo=None)).isoformat()
    return {"export_timestamp": stamp_now, "benchmarks": benchmarks}


def to_csv(doc: dict[str, Any]) -> str:
    """One row per score: benchmark, model, the entry's fields, score name and value."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for bench, b in doc["benchmarks"].items():
        for model, entries in b["models"].items():
            for e in entries:
                for name, value in e["scores"].items():
                    w.writerow([bench, model, e["invocation_id"], e["job_id"], e["harness"] or "",
                                e["container"] or "", e["timestamp"], e["executor"], name, value])
    return buf.getvalue()


def export_runs(run_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                fmt: Literal["json", "csv"] = "json", now: datetime | None = None) -> Path:
    """Write ``processed_results.json`` (or ``.csv``) for ``run_dirs`` into ``out_dir``, atomically; returns it."""
    doc = build_processed_results(run_dirs, now=now)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        target = out / CSV_FILE
        write_atomic(target, to_csv(doc))
    else:
        target = out / PROCESSED_FILE
        write_atomic(target, orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return target
