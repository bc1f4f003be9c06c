"""MLflow export against a real local tracking store."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from evalproxy.records import build_record, write_results
from evalproxy.records.harnesses.base import add_score
from evalproxy.records.results import HarnessInfo, Results, ScoreStats

mlflow = pytest.importorskip("mlflow", reason="MLflow export needs the evalproxy[mlflow] extra")

from evalproxy.records.mlflow_export import export_to_mlflow  # noqa: E402  (after the skip check)


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    results = Results()
    add_score(results.tasks, "mbpp", "pass@1", "pass@1", 0.25, ScoreStats(stderr=0.05))
    write_results(run, build_record(
        command="bigcode", output_dir=run, params={"temperature": 0.2, "max_tokens": 512}, results=results,
        model_id="org/m", endpoint_type="chat", run_id="inv-1",
        adapter_config={"interceptors": [{"name": "system_message", "config": {"system_message": "Code only."}}]},
        harness=HarnessInfo(name="bigcode-evaluation-harness", status="success")))
    (run / "eval_factory_metrics.json").write_bytes(orjson.dumps(
        {"response_stats": {"count": 40, "avg_latency_ms": 123.5, "status_codes": {"200": 40}}}))
    (run / "report.html").write_text("<html></html>")
    return run


class TestMlflowExport:
    def test_one_mlflow_run_per_evaluation_run(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Params, scores, proxy statistics and artifacts land in one MLflow run; a second export reuses it."""
        # A file store: real MLflow storage, and much faster to open than a fresh sqlite store (no migrations).
        # MLflow 3 refuses file stores unless this opt-in is set.
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
        run = _run_dir(tmp_path)
        ids = export_to_mlflow([run], tracking_uri=uri, experiment_name="evals")
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        got = client.get_run(ids[0])
        assert got.data.params["config.params.temperature"] == "0.2"
        assert got.data.params["adapter_config.interceptors.system_message.system_message"] == "Code only."
        assert got.data.params["target.model_id"] == "org/m"
        assert got.data.metrics["mbpp_pass_1_pass_1"] == 0.25
        assert got.data.metrics["proxy.response_stats.avg_latency_ms"] == 123.5
        assert got.data.metrics["proxy.response_stats.status_codes.200"] == 40
        assert got.data.tags["evalproxy.run_id"] == "inv-1" and got.info.status == "FINISHED"
        artifacts = {a.path for a in client.list_artifacts(ids[0])}
        assert {"results.yaml", "report.html", "eval_factory_metrics.json"} <= artifacts
        assert export_to_mlflow([run], tracking_uri=uri, experiment_name="evals") == ids
