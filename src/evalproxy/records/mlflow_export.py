"""Export run records to MLflow: one MLflow run per evaluation run (needs ``evalproxy[mlflow]``).

Params: the run's ids, model, endpoint, harness and versions, its generation params (``config.params.*``), the
adapter config (``adapter_config.<interceptor>.<param>``) and ``extra_metadata``. Metrics: the scores under NeMo's
flat names (``{task}_{metric}_{score}``) and a curated set of proxy statistics under the same names on every run
(``proxy.latency_ms_avg``, ``proxy.cache_hit_ratio``, ...: nothing keyed by a run id, no timestamps). Tags: the
evaluation run's id (also as NeMo's ``job_id``), ``task``, ``harness``, ``model`` and the user's. Artifacts: the run's
record, statistics, config, report, samples and ledger, and the harness's own output (``harness/``), less NeMo's
excluded patterns and ``exclude_patterns``. Per-sample traces (prompt, answer, scores, latency, tokens, cache hit)
with NeMo's limits (``emit_traces``, off by default here, ``emit_traces_max_samples``, ``emit_traces_content_max``).

Exporting a run twice does not make a second MLflow run: the run found by its ``evalproxy.run_id`` tag is updated
(metrics, tags, artifacts; params are immutable in MLflow and traces are written once), or skipped with
``skip_existing``.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from evalproxy.records.export_data import RunView, SampleRow, read_run, sample_rows

log = logging.getLogger("evalproxy")

RUN_ID_TAG = "evalproxy.run_id"
EXCLUDED_PATTERNS = ("*cache*", "*.db", "*.lock", "synthetic", "debug.json")
"""NeMo Evaluator's artifact exclusions (matched on the file name, case-insensitive); ``exclude_patterns`` adds."""
_BAD_NAME = re.compile(r"[^\w./\- :]")
_MAX_PARAM = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow takes at most 100 params per batch


class MlflowSettings(BaseModel):
    """NeMo's ``export.mlflow`` keys that mean something for a run directory."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = None
    """Default: ``MLFLOW_TRACKING_URI``, else a local store in the current directory (:func:`default_tracking_uri`)."""
    experiment_name: str = "evalproxy"
    run_name: str | None = None
    description: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    extra_metadata: dict[str, Any] = Field(default_factory=dict)
    log_config_params: bool = True
    skip_existing: bool = False
    copy_artifacts: bool = True
    exclude_patterns: list[str] = Field(default_factory=list)
    emit_traces: bool = False
    emit_traces_max_samples: int | None = Field(default=None, ge=0)
    emit_traces_content_max: int = Field(default=4000, ge=1)


def default_tracking_uri(cwd: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here when MLflow's SQL store can be used (full
    ``mlflow``), else a ``file:`` store ``./mlruns`` (``mlflow-skinny``; :func:`_file_store_allowed` opts in)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    here = (cwd or Path.cwd()).resolve()
    if importlib.util.find_spec("sqlalchemy") is not None:
        return f"sqlite:///{here / 'mlflow.db'}"
    return (here / "mlruns").as_uri()


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE`` is set: asked for one, we set it."""
    if not (uri.startswith("file:") or "://" not in uri) or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


def _flatten(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list) and obj and all(isinstance(i, Mapping) and "name" in i for i in obj):
        for item in obj:
            yield from _flatten(item.get("config") or {}, f"{prefix}.{item['name']}")
    else:
        yield prefix, obj


def _name(s: str) -> str:
    return _BAD_NAME.sub("_", s)


def mlflow_params(view: RunView, settings: MlflowSettings | None = None) -> dict[str, str]:
    """The run's facts and config as flat MLflow params (values as text, cut at MLflow's limit)."""
    settings = settings or MlflowSettings()
    record = view.record
    ep = record.target.api_endpoint
    snapshot: dict[str, Any] = {
        "invocation_id": view.invocation,
        "target.model_id": ep.model_id,
        "target.type": ep.type,
        "target.url": ep.url,
        "harness.name": record.harness.name,
        "harness.version": record.harness.version,
        "evalproxy.version": record.evalproxy.version,
        "git_hash": record.git_hash,
        "results_dir": str(view.base.resolve()),
        "config.params": record.config.params,
    }
    if settings.log_config_params:
        snapshot["adapter_config"] = ep.adapter_config
    snapshot.update(settings.extra_metadata)
    out: dict[str, str] = {}
    for key, value in _flatten(snapshot, ""):
        if value is None or value == {} or value == [] or value == "":
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        out[_name(key)] = text[:_MAX_PARAM]
    return out


def mlflow_metrics(view: RunView) -> dict[str, float]:
    """Scores under NeMo's flat names, then the curated proxy statistics (``proxy.`` prefix)."""
    out = {_name(k): v for k, v in view.record.results.flat().items()}
    out.update({f"proxy.{k}": v for k, v in view.stats.items()})
    return out


def mlflow_tags(view: RunView, settings: MlflowSettings) -> dict[str, str]:
    tags = {RUN_ID_TAG: view.invocation, "job_id": view.invocation, "evalproxy.run_dir": str(view.base.resolve()),
            "task": ",".join(view.tasks), "harness": view.harness, "model": view.model,
            "mlflow.runName": settings.run_name or f"eval-{view.invocation}"}
    if settings.description:
        tags["mlflow.note.content"] = settings.description
    tags.update(settings.tags)
    return {k: v for k, v in tags.items() if v}


def excluded(name: str, extra: Sequence[str] = ()) -> bool:
    """True when a file name matches NeMo's excluded patterns or ``extra`` (case-insensitive, on the name)."""
    n = name.lower()
    return any(fnmatch.fnmatchcase(n, p.lower()) for p in (*EXCLUDED_PATTERNS, *extra))


def _log_artifacts(client: Any, rid: str, view: RunView, settings: MlflowSettings) -> None:
    own = {view.base / n for n in os.listdir(view.base)}
    for f in view.files():
        if not excluded(f.name, settings.exclude_patterns):
            client.log_artifact(rid, str(f), None if f in own else "harness")


def _trim(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…[truncated]"
    if isinstance(value, list):
        return [_trim(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: _trim(v, limit) for k, v in value.items()}
    return value


def _emit_traces(mlflow: Any, rows: list[SampleRow], view: RunView, settings: MlflowSettings) -> int:
    """One trace per sample (an LLM span: prompt in, answer out, the rest as attributes); how many were emitted."""
    from mlflow.entities import SpanType

    cap, limit = settings.emit_traces_max_samples, settings.emit_traces_content_max
    emitted = 0
    for row in rows:
        if cap is not None and emitted >= cap:
            break
        x = row.exchange
        prompt = x.prompt if x is not None and x.prompt is not None else row.prompt_text
        attrs: dict[str, Any] = {"evalproxy.task": row.task, "evalproxy.sample_id": row.sample_id,
                                 "evalproxy.model": view.model, "evalproxy.harness": view.harness}
        attrs.update({f"evalproxy.score.{m}": v for m, v in row.scores.items()})
        if row.target is not None:
            attrs["evalproxy.target"] = _trim(row.target, limit)
        if x is not None:
            for key in ("latency_ms", "prompt_tokens", "completion_tokens", "cache_hit"):
                if getattr(x, key) is not None:
                    attrs[f"evalproxy.{key}"] = getattr(x, key)
        with mlflow.start_span(name=f"{row.task}/{row.sample_id}", span_type=SpanType.LLM) as span:
            span.set_inputs({"prompt": _trim(prompt, limit)})
            span.set_attributes(attrs)
            span.set_outputs({"answer": _trim(row.answer_text, limit), "scores": row.scores})
        emitted += 1
    mlflow.flush_trace_async_logging(terminate=False)
    return emitted


def _traces(client: Any, rid: str, experiment_id: str, view: RunView, settings: MlflowSettings, uri: str) -> None:
    import mlflow

    rows = sample_rows(view.base)
    if not rows:
        log.warning("MLflow traces: %s has no per-sample scores (samples.jsonl): none emitted", view.base)
        return
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    # Written as they end, not by MLflow's background queue (whose flush at exit waits seconds): the export is done
    # when this returns.
    sync = "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING" not in os.environ
    if sync:
        os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    try:
        mlflow.set_experiment(experiment_id=experiment_id)
        with mlflow.start_run(run_id=rid):
            n = _emit_traces(mlflow, rows, view, settings)
        log.info("MLflow traces: %d of %d samples emitted for %s", n, len(rows), view.invocation)
    finally:
        mlflow.set_tracking_uri(previous)
        if sync:
            os.environ.pop("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", None)


def _export_one(client: Any, experiment_id: str, view: RunView, settings: MlflowSettings, uri: str) -> str:
    """The MLflow run id of ``view``: created, or the existing one updated (or left as it is: ``skip_existing``)."""
    from mlflow.entities import Metric, Param

    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{view.invocation}'",
                               max_results=1)
    if found and settings.skip_existing:
        log.info("MLflow: run %s already exported (%s): skipped", view.invocation, found[0].info.run_id)
        return str(found[0].info.run_id)
    tags = mlflow_tags(view, settings)
    rid = found[0].info.run_id if found else client.create_run(experiment_id, tags=tags).info.run_id
    for k, v in tags.items():
        client.set_tag(rid, k, v)
    params = [] if found else [Param(k, v) for k, v in mlflow_params(view, settings).items()]
    now_ms = int(time.time() * 1000)
    metrics = [Metric(k, v, now_ms, 0) for k, v in mlflow_metrics(view).items()]
    for i in range(0, max(len(params), len(metrics)), _BATCH):
        client.log_batch(rid, metrics=metrics[i:i + _BATCH], params=params[i:i + _BATCH])
    if settings.copy_artifacts:
        _log_artifacts(client, rid, view, settings)
    if settings.emit_traces and not found:
        _traces(client, rid, experiment_id, view, settings, uri)
    client.set_terminated(rid, "FINISHED" if view.record.harness.status in (None, "success") else "FAILED")
    return str(rid)


def export_to_mlflow(run_dirs: Sequence[str | os.PathLike[str]], settings: MlflowSettings | None = None
                     ) -> list[str]:
    """One MLflow run per run directory in the settings' experiment; returns the MLflow run ids."""
    from mlflow.tracking import MlflowClient  # optional extra: imported only when exporting

    settings = settings or MlflowSettings()
    uri = settings.tracking_uri or default_tracking_uri()
    with _file_store_allowed(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(settings.experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            settings.experiment_name)
        return [_export_one(client, experiment_id, read_run(d), settings, uri) for d in run_dirs]
