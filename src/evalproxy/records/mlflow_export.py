"""Export run records to MLflow: one MLflow run per evaluation run (needs ``evalproxy[mlflow]``).

Params: the config snapshot (observed generation params, endpoint, every interceptor param), flattened to dotted
names. Metrics: the flat scores (``{task}_{metric}_{score}``) and the proxy's statistics from
``eval_factory_metrics.json`` (``proxy.response_stats.avg_latency_ms``, ...). Artifacts: ``results.yaml``,
``report.html``, ``report.json``, ``eval_factory_metrics.json`` and ``adapter_config.yaml`` where present.
Exporting a run twice does not make a second MLflow run: the evaluation run id is a tag, and a run that has it is
reused.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from evalproxy.records.export import find_results_file
from evalproxy.records.results import RunRecord, read_results

ARTIFACTS = ("results.yaml", "results.yml", "report.html", "report.json", "evalproxy_report.json",
             "eval_factory_metrics.json", "adapter_config.yaml")
RUN_ID_TAG = "evalproxy.run_id"
_BAD_NAME = re.compile(r"[^\w./\- :]")
_MAX_PARAM = 6000  # MLflow's limit on a param value


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


def mlflow_params(record: RunRecord) -> dict[str, str]:
    """The config snapshot as flat MLflow params (values as text, cut at MLflow's limit)."""
    ep = record.target.api_endpoint
    snapshot = {
        "config.params": record.config.params,
        "target.model_id": ep.model_id,
        "target.type": ep.type,
        "target.url": ep.url,
        "adapter_config": ep.adapter_config,
        "harness.name": record.harness.name,
        "harness.version": record.harness.version,
        "evalproxy.version": record.evalproxy.version,
        "git_hash": record.git_hash,
    }
    out: dict[str, str] = {}
    for key, value in _flatten(snapshot, ""):
        if value is None or value == {} or value == []:
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        out[_name(key)] = text[:_MAX_PARAM]
    return out


def mlflow_metrics(record: RunRecord, run_dir: Path) -> dict[str, float]:
    """Flat scores plus the proxy's numeric statistics (``proxy.`` prefix)."""
    out = {_name(k): v for k, v in record.results.flat().items()}
    stats_file = run_dir / "eval_factory_metrics.json"
    if stats_file.exists():
        try:
            stats = orjson.loads(stats_file.read_bytes())
        except orjson.JSONDecodeError:
            stats = {}
        for key, value in _flatten(stats, "proxy"):
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[_name(key)] = float(value)
    return out


def export_to_mlflow(run_dirs: Sequence[str | os.PathLike[str]], *, tracking_uri: str,
                     experiment_name: str = "evalproxy") -> list[str]:
    """One MLflow run per run directory in ``experiment_name`` at ``tracking_uri``; returns the MLflow run ids."""
    from mlflow.entities import Metric, Param  # optional extra: imported only when exporting
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    ids: list[str] = []
    for run_dir in run_dirs:
        results_path = find_results_file(run_dir)
        base = results_path.parent
        record = read_results(results_path)
        eval_id = record.evalproxy.run_id or str(base.resolve())
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{eval_id}'",
                                   max_results=1)
        if found:
            ids.append(found[0].info.run_id)
            continue
        tags = {RUN_ID_TAG: eval_id, "evalproxy.run_dir": str(base.resolve()),
                "mlflow.runName": f"{record.target.api_endpoint.model_id or 'run'} {eval_id[:16]}"}
        if record.harness.name:
            tags["harness"] = record.harness.name
        run = client.create_run(experiment_id, tags=tags)
        rid = run.info.run_id
        params = [Param(k, v) for k, v in mlflow_params(record).items()]
        now_ms = int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, 0) for k, v in mlflow_metrics(record, base).items()]
        for i in range(0, max(len(params), len(metrics)), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(rid, metrics=metrics[i:i + 100], params=params[i:i + 100])
        for name in ARTIFACTS:
            if (base / name).is_file():
                client.log_artifact(rid, str(base / name))
        client.set_terminated(rid, "FINISHED" if record.harness.status in (None, "success") else "FAILED")
        ids.append(rid)
    return ids
